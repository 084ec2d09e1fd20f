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
source bench/lib.sh

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
