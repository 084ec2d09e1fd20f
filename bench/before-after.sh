#!/usr/bin/env bash
# Fan-out figures of two ringcast binaries, interleaved in one run, so a
# change to the engine can be compared with the build before it on the same
# machine at the same moment.
#
# Usage: bench/before-after.sh BEFORE_BINARY [AFTER_BINARY] [--rounds N]
#
#   BEFORE_BINARY  e.g. a release build of the previous commit:
#                  git worktree add /tmp/before <commit> &&
#                  (cd /tmp/before && cargo build --release -p ringcast)
#   AFTER_BINARY   default target/release/ringcast (built first)
#
# Each round runs, for before then after and for each driver of DRIVERS
# ("uring"; e.g. DRIVERS="uring epoll"): 10,000 idle connections held 5 s
# (the server's RSS per connection), 10,000 subscribers x 50
# publications/s for 10 s, then saturation (10,000 subscribers, 256
# publications in flight) for 10 s; one shard pinned to SERVER_CPU (0), the
# load generator on LOADGEN_CPU (1). SCENARIOS picks among those ("idle
# fanout saturate"; e.g. SCENARIOS=idle for memory alone, which does not
# need a quiet CPU). Only processes this script starts are stopped.
set -euo pipefail
cd "$(dirname "$0")/.."

BEFORE="${1:?usage: bench/before-after.sh BEFORE_BINARY [AFTER_BINARY] [--rounds N]}"
shift
AFTER=target/release/ringcast
if [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then AFTER="$1"; shift; fi
ROUNDS=2
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift ;;
    *) echo "before-after.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$AFTER" != target/release/ringcast ] || cargo build --release -p ringcast -p ringcast-loadgen
[ -x target/release/ringcast-loadgen ] || cargo build --release -p ringcast-loadgen

source bench/lib.sh

for round in $(seq "$ROUNDS"); do
  for which in before after; do
    RINGCAST="$BEFORE"; [ "$which" = after ] && RINGCAST="$AFTER"
    for driver in ${DRIVERS:-uring}; do
      echo "## round $round, $which ($RINGCAST), $driver"
      for scenario in ${SCENARIOS:-idle fanout saturate}; do
        start --driver "$driver"
        case "$scenario" in
          idle) loadgen idle -a 10000 -d 5 ;;
          fanout) loadgen fanout -a 10000 --rate 50 -d 10 ;;
          saturate) loadgen saturate -a 10000 -d 10 ;;
          *) echo "before-after.sh: unknown scenario $scenario" >&2; exit 2 ;;
        esac
        stop
      done
    done
  done
done
