#!/bin/sh
# Daemonizes a helper the way crashpad does: a session leader forks it and exits, so the helper
# is an orphan whose session leader is dead. Both print what they count; the app also prints
# whether /proc agrees with its PID, and how many read-only mounts (the runtime's masks) its
# /proc/sys has. It keeps /etc/hosts open: crik lends the new container's copy at each restore.
exec 3</etc/hosts
trap 'echo "restore signal"' ALRM
setsid sh -c 'sh -c "j=0; while :; do j=\$((j+1)); echo daemon \$j; sleep 0.1; done" & exit 0'
i=0
while :; do
  i=$((i+1)); echo "count $i"
  grep -q daemonizing /proc/$$/cmdline && echo "proc agrees" || echo "proc disagrees"
  echo "proc/sys read-only: $(grep -c ' /proc/sys ro,' /proc/self/mountinfo)"
  sleep 0.1
done
