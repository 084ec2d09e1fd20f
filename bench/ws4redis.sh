#!/usr/bin/env bash
# Issue 12's figures for the ws4redis endpoint, one script, one server per
# part (bench/RESULTS.md, section "ws4redis / Rodan"). Kills only the
# servers it starts.
#
#   bench/ws4redis.sh thor      Rodan's load test (`test_load.sh -a 10000
#                               -n 10`) as ringcast-loadgen's Thor mode on
#                               /ws/rodan?subscribe-broadcast&publish-broadcast&echo
#   bench/ws4redis.sh redis     Redis-sourced publications into one channel
#                               with CLIENTS ws4redis subscribers, against
#                               the same load through the backend's emit,
#                               alternating, ROUNDS rounds
#
# The server: `ringcast serve --shards 1` on SERVER_CPU with ws4redis as
# Rodan configures it (prefix `rodan`, heartbeat `--heartbeat--`, through
# RINGCAST_PROTOCOLS_WS4REDIS_*); for `redis` also `[sources.redis]` on a
# throwaway `redis-server` (no persistence) on a free port. The loadgen on
# LOADGEN_CPU, sources 127.0.0.1-4.
#
# Environment: CLIENTS (10000), RATE (publications/s, 20), SCENARIO
# (fanout at RATE, or saturate), DURATION (s, 20), ROUNDS (2), RINGCAST /
# LOADGEN (default target/release/...).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source bench/lib.sh
CLIENTS="${CLIENTS:-10000}" RATE="${RATE:-20}" DURATION="${DURATION:-20}" ROUNDS="${ROUNDS:-2}"
# fanout: RATE publications/s; saturate: as fast as 256 in flight allow.
SCENARIO="${SCENARIO:-fanout}"
export RINGCAST_PROTOCOLS_WS4REDIS_PREFIX=rodan RINGCAST_PROTOCOLS_WS4REDIS_HEARTBEAT=--heartbeat--
OUT="${OUT:-target/ws4redis-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"
REDIS_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null; true' EXIT

# run NAME ARGS...: the loadgen with its JSON report in $OUT/NAME.json;
# prints the report's table.
run() {
  local name=$1
  shift
  echo "\$ ringcast-loadgen $* --json $OUT/$name.json"
  taskset -c "$LOADGEN_CPU" "$LOADGEN" "$@" -s "$WS" --backend "$BE" --src-ips 4 \
    --first-core "$LOADGEN_CPU" --server-pid "$SERVER_PID" --json "$OUT/$name.json" 2>&1 |
    grep -vE '^\s*$' || true
}

# per_publication NAME: server CPU per publication over the measured window.
per_publication() {
  python3 - "$OUT/$1.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r.get("server") or {}
pubs = r["publications"]
cpu = s.get("cpu_ns", 0)
print(f"{sys.argv[1]}: {pubs} publications ({r['publications_sent']} sent, {r['publish_errors']} errors), "
      f"{r['deliveries']} of {r['expected_deliveries']} deliveries, lost {r['lost']}; "
      f"server CPU {cpu/1e9:.3f} s = {cpu/max(pubs,1)/1e6:.3f} ms per publication "
      f"({cpu/max(r['deliveries'],1):.0f} ns per delivery); "
      f"latency p50 {r['latency_ns'].get('p50',0)/1e6:.1f} ms p99 {r['latency_ns'].get('p99',0)/1e6:.1f} ms")
PY
}

uptime
case "${1:-}" in
thor)
  # Rodan's test_load.sh runs `thor --amount 10000 --messages 10`: each
  # connection sends a message and waits for a frame, ten times. Here the
  # connections use Rodan's client URL; the message is the heartbeat (never
  # published), the server's heartbeat answers it; meanwhile the backend
  # publishes 10 publications into rodan:broadcast:rodan, which every
  # connection must receive (Thor mode: -n publications, here on the one
  # channel).
  start
  run thor -a "$CLIENTS" -n 10 --protocol ws4redis -d 120 --drain-timeout 30
  per_publication thor
  stop
  ;;
redis)
  REDIS_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
    --logfile "$OUT/redis.log" --daemonize no &
  REDIS_PID=$!
  for _ in $(seq 100); do
    redis-cli -p "$REDIS_PORT" ping >/dev/null 2>&1 && break
    sleep 0.05
  done
  export RINGCAST_SOURCES_REDIS_ENABLED=true RINGCAST_SOURCES_REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
  # expire 0: client publishes are not written back (there are none here),
  # and no persisted message is replayed on connect.
  export RINGCAST_PROTOCOLS_WS4REDIS_EXPIRE=0
  for round in $(seq "$ROUNDS"); do
    for via in backend redis; do
      echo "## round $round, publications through $via, $CLIENTS ws4redis subscribers, $SCENARIO (rate $RATE/s) for $DURATION s"
      start
      extra=()
      [ "$via" = redis ] && extra=(--redis "127.0.0.1:$REDIS_PORT")
      rate=(--rate "$RATE")
      [ "$SCENARIO" = saturate ] && rate=()
      run "redis-r$round-$via" "$SCENARIO" -a "$CLIENTS" --protocol ws4redis "${rate[@]}" \
        -d "$DURATION" "${extra[@]}"
      per_publication "redis-r$round-$via"
      stop
    done
  done
  ;;
*)
  sed -n '2,21p' "$0" >&2
  exit 2
  ;;
esac
uptime
