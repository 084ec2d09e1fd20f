#!/usr/bin/env bash
# Cluster mode (issue 14, docs/CLUSTER.md): a throwaway redis-server and
# three ringcast nodes on this box, each node's shard pinned (NODE_CPUS,
# one core each, round robin), against one ringcast alone with the same
# subscribers, in the same run:
#   - publications/s through the bus into one channel with 3 x SUBS
#     subscribers (ringcast-loadgen `saturate`, connections spread over the
#     three nodes with `-s a,b,c`, publishing through node 1's backend);
#   - the loadgen's latency percentiles (p50/p99), cluster and single node;
#   - Redis CPU per publication (/proc utime+stime of redis-server);
#   - server CPU per delivery, all nodes summed, versus the single node.
# Starts and stops its own Redis and servers; kills only those.
#
# Usage: bench/cluster.sh [--no-build]   (SUBS per node, default 3000;
#   COUNT publications, 2000; RATE for the fixed-rate run, 50/s; SIZE payload pad, 100; NODE_CPUS "0 0 0";
#   LOADGEN_CPU 1; RINGCAST/LOADGEN binaries, default target/release)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "${1:-}" = "--no-build" ] || cargo build --release -p ringcast -p ringcast-loadgen
SUBS="${SUBS:-3000}" COUNT="${COUNT:-2000}" SIZE="${SIZE:-100}" RATE="${RATE:-50}"
read -r -a CPUS <<<"${NODE_CPUS:-0 0 0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
RINGCAST="${RINGCAST:-target/release/ringcast}"
LOADGEN="${LOADGEN:-target/release/ringcast-loadgen}"
REDIS_PORT="${REDIS_PORT:-26379}"
PIDS=()
REDIS_PID=""
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$REDIS_PID" ] && kill "$REDIS_PID" 2>/dev/null
  [ -n "${TALLY:-}" ] && rm -f "$TALLY"
  true
}
trap cleanup EXIT

# CPU seconds (user+system) a process has used.
cpu() { awk '{ printf "%.2f\n", ($14 + $15) / 100 }' "/proc/$1/stat"; }

# node I [env...]: starts node I (ws 2800I, backend 2900I) on CPUS[I].
node() {
  local i=$1
  shift
  env "$@" taskset -c "${CPUS[$i]}" "$RINGCAST" serve --shards 1 \
    --ws-listen "127.0.0.1:2800$i" --backend-listen "127.0.0.1:2900$i" 2>/dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:2900$i/health" >/dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "node $i did not start" >&2
  exit 1
}

stop_nodes() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}

# Publications the loadgen runs of LABEL got acknowledged (both runs).
TALLY=$(mktemp)
published() { awk -v l="[$1 " 'index($0, l) == 1 && /publications/ { for (i = 1; i <= NF; i++) if ($i == "publications") { n += $(i + 1); break } } END { print n + 0 }' "$TALLY"; }

# run LABEL SERVERS CONNECTIONS: saturate (publications as fast as the
# acknowledgements allow), then RATE publications/s for 10 s (fanout:
# latency at a fixed load); prints the loadgen's summaries.
run() {
  local label=$1 servers=$2 conns=$3
  echo "\$ ringcast-loadgen saturate -a $conns --channels 1 -n $COUNT --size $SIZE -s $servers --backend 127.0.0.1:29000"
  taskset -c "$LOADGEN_CPU" "$LOADGEN" saturate -a "$conns" --channels 1 --channel-prefix clusterbench- -n "$COUNT" --size "$SIZE" \
    -s "$servers" --threads 3 --backend 127.0.0.1:29000 --first-core "$LOADGEN_CPU" --src-ips 4 2>&1 |
    grep -E "connections  |publications|deliveries|lost|latency  |errors" | sed "s/^/[$label saturate] /" | tee -a "$TALLY" || true
  echo "\$ ringcast-loadgen fanout -c $conns --channels 1 --rate $RATE -d 10 --size $SIZE -s $servers --backend 127.0.0.1:29000"
  taskset -c "$LOADGEN_CPU" "$LOADGEN" fanout -c "$conns" --channels 1 --channel-prefix clusterrate- --rate "$RATE" -d 10 --size "$SIZE" \
    -s "$servers" --threads 3 --backend 127.0.0.1:29000 --first-core "$LOADGEN_CPU" --src-ips 4 2>&1 |
    grep -E "publications|deliveries  |lost|latency  |errors" | sed "s/^/[$label $RATE\/s] /" | tee -a "$TALLY" || true
}

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no >/dev/null 2>&1 &
REDIS_PID=$!
for _ in $(seq 100); do (echo >"/dev/tcp/127.0.0.1/$REDIS_PORT") 2>/dev/null && break; sleep 0.05; done
uptime

echo "## cluster: 3 nodes on Redis, $SUBS subscribers each, one channel, $COUNT publications"
for i in 0 1 2; do node "$i" RINGCAST_CLUSTER_REDIS="redis://127.0.0.1:$REDIS_PORT/0"; done
n0=$(for p in "${PIDS[@]}"; do cpu "$p"; done | paste -sd+ | bc)
r0=$(cpu "$REDIS_PID")
run cluster "127.0.0.1:28000,127.0.0.1:28001,127.0.0.1:28002" $((3 * SUBS))
n1=$(for p in "${PIDS[@]}"; do cpu "$p"; done | paste -sd+ | bc)
r1=$(cpu "$REDIS_PID")
pubs=$(published cluster)
awk -v r="$(echo "$r1 - $r0" | bc)" -v n="$(echo "$n1 - $n0" | bc)" -v p="$pubs" -v s=$((3 * SUBS)) \
  'BEGIN { printf "[cluster] redis CPU %.2f s = %.1f us/publication; nodes CPU %.2f s = %.2f us/delivery\n", r, r / p * 1e6, n, n / (p * s) * 1e6 }'
stop_nodes

echo "## single node (no cluster), $((3 * SUBS)) subscribers, one channel, $COUNT publications"
node 0
s0=$(cpu "${PIDS[0]}")
run single "127.0.0.1:28000" $((3 * SUBS))
s1=$(cpu "${PIDS[0]}")
awk -v n="$(echo "$s1 - $s0" | bc)" -v p="$(published single)" -v s=$((3 * SUBS)) \
  'BEGIN { printf "[single] node CPU %.2f s = %.2f us/delivery\n", n, n / (p * s) * 1e6 }'
stop_nodes
uptime
