#!/usr/bin/env bash
# Fan-out of Socket.IO frames against the native protocol (issue 11): one
# channel, N receivers (default 10,000), the same publications through the
# backend port, server CPU per delivery side by side. Native and socketio
# alternate, two rounds, each against a fresh `ringcast serve --driver
# uring` with Socket.IO enabled on the public port (`/socket.io/`, its own
# listener off). Prints each run's summary; bench/RESULTS.md quotes them
# under "Socket.IO / LQDOJ". Kills only the servers it starts.
#
# Usage: bench/socketio_fanout.sh [--no-build]
#   RATE (publications/s, default 25), DURATION (s, 10), CLIENTS (10000);
#   RINGCAST / LOADGEN: the binaries (default target/release/...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "${1:-}" = "--no-build" ] || cargo build --release -p ringcast -p ringcast-loadgen
source bench/lib.sh
export RINGCAST_PROTOCOLS_SOCKETIO_ENABLED=true RINGCAST_PROTOCOLS_SOCKETIO_LISTEN= \
  RINGCAST_PROTOCOLS_SOCKETIO_MAX_CLIENTS=1000000
RATE="${RATE:-25}" DURATION="${DURATION:-10}" CLIENTS="${CLIENTS:-10000}"

uptime
for round in 1 2; do
  for proto in native socketio; do
    echo "## round $round, $proto, $CLIENTS receivers, $RATE publications/s, driver uring"
    start --driver uring
    loadgen fanout -a "$CLIENTS" --rate "$RATE" -d "$DURATION" --protocol "$proto"
    stop
  done
done
uptime
