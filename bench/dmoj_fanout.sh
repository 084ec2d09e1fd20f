#!/usr/bin/env bash
# Fan-out of DMOJ-form frames against the native protocol (issue 10): one
# channel, 10,000 receivers, the same publications through the backend
# port, server CPU per delivery side by side. Native and dmoj alternate,
# two rounds, each against a fresh `ringcast serve --driver uring` with
# DMOJ enabled on the public port (receivers at /event/, its own
# listeners off). Prints each run's summary; bench/RESULTS.md quotes them
# under "DMOJ". Kills only the servers it starts.
#
# Usage: bench/dmoj_fanout.sh [--no-build]   (RATE, default 25/s; DURATION, 10 s)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "${1:-}" = "--no-build" ] || cargo build --release -p ringcast -p ringcast-loadgen
source bench/lib.sh
export RINGCAST_PROTOCOLS_DMOJ_ENABLED=true RINGCAST_PROTOCOLS_DMOJ_RECEIVERS= \
  RINGCAST_PROTOCOLS_DMOJ_SENDERS= RINGCAST_PROTOCOLS_DMOJ_LONG_POLL=
RATE="${RATE:-25}" DURATION="${DURATION:-10}"

uptime
for round in 1 2; do
  for proto in native dmoj; do
    path=/; [ "$proto" = dmoj ] && path=/event/
    echo "## round $round, $proto, 10,000 receivers, $RATE publications/s, driver uring"
    start --driver uring
    loadgen fanout -a 10000 --rate "$RATE" -d "$DURATION" --protocol "$proto" --path "$path"
    stop
  done
done
uptime
