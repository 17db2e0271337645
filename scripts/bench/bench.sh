#!/usr/bin/env bash
# Prints crik's figures (not a test: nothing here passes or fails on a number).
#   - idle resident memory of crik supervising `sleep`, next to Debian's tini doing the same
#   - the release binary's size
# Goal: idle RSS at most 2 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
bash scripts/setup.sh >/dev/null
cargo build --release --locked --quiet
crik=$PWD/target/x86_64-unknown-linux-gnu/release/crik

# Starts `$@ sleep 60` as PID 1 of a fresh PID namespace, waits for it to settle, prints VmRSS (KiB).
idle_rss_kib() {
    unshare --pid --fork --mount-proc "$@" sleep 60 </dev/null >/dev/null 2>&1 &
    local outer=$! pid=""
    for _ in $(seq 100); do
        pid=$(cat /proc/$outer/task/$outer/children 2>/dev/null || true); pid=${pid%% *}
        [ -n "$pid" ] && break
        sleep 0.02
    done
    sleep 1
    awk '/^VmRSS:/ {print $2}' /proc/$pid/status
    kill -KILL "$pid" 2>/dev/null || true
    wait $outer 2>/dev/null || true
}

crik_rss=$(idle_rss_kib "$crik" run --)
tini_rss=$(idle_rss_kib "$(command -v tini)" --)
size=$(stat -c %s "$crik")

printf '%-38s %10s\n' "figure" "value"
printf '%-38s %7s KiB\n' "crik idle RSS (supervising sleep)" "$crik_rss"
printf '%-38s %7s KiB\n' "tini idle RSS (supervising sleep)" "$tini_rss"
printf '%-38s %10s\n' "crik / tini RSS" "$(awk -v a="$crik_rss" -v b="$tini_rss" 'BEGIN {printf "%.2fx", a/b}')"
printf '%-38s %7s KiB\n' "crik release binary size" "$(( size / 1024 ))"
printf '%-38s %10s\n' "goal: crik idle RSS <= 2048 KiB" "$([ "$crik_rss" -le 2048 ] && echo met || echo MISSED)"
python3 scripts/bench/bench.py
