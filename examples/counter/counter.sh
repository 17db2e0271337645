#!/bin/sh
# The sample app: counts forever. Its state lives only in memory (the shell's $i), so a count that
# carries on across pods proves crik moved the process, not a file.
i=0
while :; do
    i=$((i + 1))
    echo "count $i"
    sleep 1
done
