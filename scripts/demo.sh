#!/usr/bin/env bash
# crik's lifecycle on a counter, end to end, with real CRIU:
#   container 1: crik starts the counter; SIGTERM -> crik checkpoints it and exits
#   container 2: a fresh "container" (new PID namespace) restores it; the count carries on
# A "container" here is `unshare --pid --fork --mount-proc --ipc --uts` (host network kept).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "demo: building crik (release)..." >&2
cargo build --release --locked --quiet
crik=$PWD/target/x86_64-unknown-linux-gnu/release/crik

work=$(mktemp -d /tmp/crik-demo.XXXXXX)
nft_before=$(nft list tables 2>/dev/null | awk '/CRIU-/ {print $3}')
cleanup() {
    # CRIU keeps a network-lock table for a checkpoint until it is restored; the demo's last
    # checkpoint never is, and this host's network outlives the demo "container".
    for t in $(nft list tables 2>/dev/null | awk '/CRIU-/ {print $3}'); do
        grep -qx "$t" <<<"$nft_before" || nft delete table inet "$t" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
printf 'imageDir: %s/images\n' "$work" >"$work/config.yaml"
app='i=0; while :; do i=$((i+1)); echo "count $i"; sleep 0.5; done'

# Starts a container in the background, shows its output live, and SIGTERMs crik after $2 s.
container() {
    local name=$1 secs=$2
    echo
    echo "=== $name ==="
    : >"$work/$name.out"
    unshare --pid --fork --mount-proc --ipc --uts "$crik" run --config "$work/config.yaml" -- sh -c "$app" \
        >"$work/$name.out" 2>"$work/$name.err" </dev/null &
    local outer=$! pid=""
    tail -n +1 -f -s 0.1 "$work/$name.out" --pid=$outer | sed 's/^/  app says: /' &
    local tailer=$!
    for _ in $(seq 100); do
        pid=$(cat /proc/$outer/task/$outer/children 2>/dev/null || true); pid=${pid%% *}
        [ -n "$pid" ] && break
        sleep 0.05
    done
    sleep "$secs"
    sleep 0.2
    echo "  (sending SIGTERM to crik, as Kubernetes does when the node goes away)"
    kill -TERM $pid
    local rc=0
    wait $outer || rc=$?
    wait $tailer 2>/dev/null || true
    sed 's/^/  crik log: /' "$work/$name.err"
    echo "  crik exited with $rc"
    [ $rc -eq 0 ] || { echo "demo: checkpoint failed" >&2; exit 1; }
}

container "container 1 (fresh start)" 3
before=$(tail -n 1 "$work/container 1 (fresh start).out")
echo "  checkpoint on disk: $(ls "$work/images/checkpoints")"

container "container 2 (restored from the checkpoint)" 2
after=$(head -n 1 "$work/container 2 (restored from the checkpoint).out")

echo
echo "=== result ==="
echo "  last line before the checkpoint: $before"
echo "  first line after the restore:    $after"
if [ "${after#count }" -eq $(( ${before#count } + 1 )) ]; then
    echo "  the count carried on: the app's state survived the move."
else
    echo "  the count did NOT carry on" >&2
    exit 1
fi
