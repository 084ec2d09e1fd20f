#!/usr/bin/env bash
# Live heap per idle subscribed connection: the engine's own allocation
# count (`info` -> heap.live_bytes) before and while 10,000 idle
# subscribed connections are held, for each binary and driver given, and
# the live allocations per connection by size (16-byte classes). Exact to
# the byte, unlike RSS (pages), and independent of CPU load.
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

heap() {
  curl -s "http://$BE/" -d '{"jsonrpc":"2.0","id":1,"method":"info","params":{}}' |
    python3 -c 'import sys, json; print(json.dumps(json.load(sys.stdin)["result"]["heap"]))'
}

# Live bytes of the heap snapshot $1.
live_bytes() { python3 -c 'import sys, json; print(json.loads(sys.argv[1])["live_bytes"])' "$1"; }

# Live allocations per connection by size class, between snapshots $1 and $2
# (classes whose count moved by at least half an allocation per connection).
by_size() {
  python3 - "$1" "$2" "$N" <<'PY'
import json, sys
before, held, n = json.loads(sys.argv[1]), json.loads(sys.argv[2]), int(sys.argv[3])
b = {k: v for k, v in before["live_by_size"]}
h = {k: v for k, v in held["live_by_size"]}
for bound in sorted(set(b) | set(h)):
    per = (h.get(bound, 0) - b.get(bound, 0)) / n
    if abs(per) >= 0.5:
        label = f"> {2048 - 16} B" if bound > 2048 else f"{bound - 15:>4}-{bound:<4} B"
        print(f"    {label}: {per:+.2f} allocations per connection")
PY
}

for RINGCAST in "$@"; do
  for driver in ${DRIVERS:-uring epoll}; do
    start --driver "$driver"
    h0=$(heap)
    loadgen idle -a "$N" -d 8 >/dev/null &
    lg=$!
    sleep 6.5
    h1=$(heap)
    wait "$lg"
    stop
    before=$(live_bytes "$h0") held=$(live_bytes "$h1")
    echo "$RINGCAST $driver: $before -> $held live bytes, $(((held - before) / N)) B per connection"
    by_size "$h0" "$h1"
  done
done
