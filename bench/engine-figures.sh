#!/usr/bin/env bash
# The engine's own figures (issue targets), each a ringcast-loadgen run
# against a fresh `ringcast serve`, server pinned to one core and the load
# generator to the other:
#   - RSS per idle subscribed connection at 10,000 connections, io_uring and
#     epoll; 19,000 connections under the 20,000 fd limit (2 loadgen processes);
#   - fan-out to 10,000 subscribers of one channel at fixed rates and
#     saturated, io_uring and epoll side by side;
#   - the load generator's own capacity: 2,000 connections on one core.
# Prints each run's summary; bench/RESULTS.md quotes them under
# "Engine figures". Kills only the servers it starts.
#
# Usage: bench/engine-figures.sh [--no-build]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "${1:-}" = "--no-build" ] || cargo build --release -p ringcast -p ringcast-loadgen
WS=127.0.0.1:28000
BE=127.0.0.1:29999
SERVER_CPU="${SERVER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true' EXIT

start() {
  taskset -c "$SERVER_CPU" target/release/ringcast serve --shards 1 --ws-listen "$WS" --backend-listen "$BE" "$@" 2>/dev/null &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf "http://$BE/health" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "server did not start" >&2
  exit 1
}
stop() {
  kill -TERM "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}
loadgen() {
  echo "\$ ringcast-loadgen $*"
  # --first-core: the loadgen pins its client thread itself (default core
  # 0), which would otherwise override taskset.
  taskset -c "$LOADGEN_CPU" target/release/ringcast-loadgen "$@" -s "$WS" --backend "$BE" --src-ips 4 \
    --first-core "$LOADGEN_CPU" --server-pid "$SERVER_PID" 2>&1 |
    grep -E "connections  |deliveries|lost|latency  |CPU|RSS" || true
  echo
}

for driver in uring epoll; do
  echo "## idle, 10,000 connections, driver $driver"
  start --driver "$driver"; loadgen idle -a 10000 -d 5; stop
done

echo "## idle, 19,000 connections (2 loadgen processes), driver uring"
start --driver uring; loadgen idle -a 19000 -d 5 --processes 2; stop

for driver in uring epoll; do
  for rate in 10 25 40; do
    echo "## fan-out, 10,000 subscribers, $rate publications/s, driver $driver"
    start --driver "$driver"; loadgen fanout -a 10000 --rate "$rate" -d 10; stop
  done
  echo "## saturate, 10,000 subscribers, driver $driver"
  start --driver "$driver"; loadgen saturate -a 10000 -d 10; stop
done

echo "## load generator capacity: 2,000 connections, one loadgen core"
start --driver uring; loadgen saturate -a 2000 -d 10; stop
start --driver uring; loadgen fanout -a 2000 --rate 250 -d 10; stop
