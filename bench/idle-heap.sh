#!/usr/bin/env bash
# Live heap per idle subscribed connection: the engine's own allocation
# count (`info` -> heap.live_bytes) before and while 10,000 idle
# subscribed connections are held, for each binary and driver given.
# Exact to the byte, unlike RSS (pages), and independent of CPU load.
#
# Usage: bench/idle-heap.sh BINARY... (count-alloc builds:
#   cargo build --release -p ringcast --features count-alloc)
# Environment: DRIVERS ("uring epoll"), CONNECTIONS (10000); one shard on
# SERVER_CPU (0), the load generator on LOADGEN_CPU (1).
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
[ -x target/release/ringcast-loadgen ] || cargo build --release -p ringcast-loadgen
N="${CONNECTIONS:-10000}"
source bench/lib.sh

live_bytes() {
  curl -s "http://$BE/" -d '{"jsonrpc":"2.0","id":1,"method":"info","params":{}}' |
    python3 -c 'import sys, json; print(json.load(sys.stdin)["result"]["heap"]["live_bytes"])'
}

for RINGCAST in "$@"; do
  for driver in ${DRIVERS:-uring epoll}; do
    start --driver "$driver"
    before=$(live_bytes)
    loadgen idle -a "$N" -d 8 >/dev/null &
    lg=$!
    sleep 6.5
    held=$(live_bytes)
    wait "$lg"
    stop
    echo "$RINGCAST $driver: $before -> $held live bytes, $(((held - before) / N)) B per connection"
  done
done
