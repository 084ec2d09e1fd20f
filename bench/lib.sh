# Shared by the bench scripts that run one `ringcast serve` at a time
# against ringcast-loadgen: source it after setting RINGCAST (the server
# binary; default target/release/ringcast). Server on SERVER_CPU (0),
# load generator on LOADGEN_CPU (1), ports below the ephemeral range.
WS="${WS:-127.0.0.1:28000}"
BE="${BE:-127.0.0.1:29999}"
SERVER_CPU="${SERVER_CPU:-0}"
LOADGEN_CPU="${LOADGEN_CPU:-1}"
RINGCAST="${RINGCAST:-target/release/ringcast}"
LOADGEN="${LOADGEN:-target/release/ringcast-loadgen}"
SERVER_PID=""
trap '[ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; true' EXIT

# start [serve flags...]: one shard on SERVER_CPU; waits for /health.
start() {
  taskset -c "$SERVER_CPU" "$RINGCAST" serve --shards 1 --ws-listen "$WS" --backend-listen "$BE" "$@" 2>/dev/null &
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

# loadgen SCENARIO [flags...]: prints the summary lines of the report.
loadgen() {
  echo "\$ ringcast-loadgen $*"
  # --first-core: the loadgen pins its client thread itself (default core
  # 0), which would otherwise override taskset.
  taskset -c "$LOADGEN_CPU" "${LOADGEN:-target/release/ringcast-loadgen}" "$@" -s "$WS" --backend "$BE" --src-ips 4 \
    --first-core "$LOADGEN_CPU" --server-pid "$SERVER_PID" 2>&1 |
    grep -E "connections  |deliveries|lost|latency  |CPU|RSS" || true
  echo
}
