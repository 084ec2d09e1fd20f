#!/usr/bin/env bash
# Side-by-side comparison: ringcast (io_uring and epoll, 1 and 2 shards)
# against uWebSockets.js, Node ws and tokio-tungstenite, on this machine, in
# one run, with the same load generator and the same scenarios.
#
# Usage: bench/compare.sh [--quick] [--only a,b,...] [--no-build] [--check-only]
#
#   --quick       short runs with few connections (a smoke test of the suite)
#   --only LIST   servers to run, comma-separated, from:
#                 ringcast-uring-1 ringcast-epoll-1 ringcast-uring-2
#                 ringcast-epoll-2 uws ws tokio-tungstenite
#   --no-build    reuse the binaries and node_modules already there
#   --check-only  start each server, run the protocol check, stop it; no load
#
# Settings (environment): WS_ADDR (127.0.0.1:28000), BACKEND_ADDR
# (127.0.0.1:29999; both below the ephemeral port range, so no client's
# TIME_WAIT can hold them), SERVER_CPUS (0), SERVER_CPUS_WIDE (0,1; for 2-shard
# runs), LOADGEN_CPUS (1), CONNECTIONS (1000, fan-out/saturate subscribers),
# IDLE_CONNECTIONS (10000), FANOUT_RATE (1000 publications/s), DURATION (15,
# seconds per scenario), SRC_IPS (4 source addresses 127.0.0.1..N).
#
# Writes bench/results/<stamp>/ (raw reports and logs, not committed),
# bench/RESULTS.md and bench/results.png. Only processes this script starts
# are stopped, on exit and on failure.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
ARGS="$*"

QUICK=0 BUILD=1 CHECK_ONLY=0
ALL_SERVERS="ringcast-uring-1 ringcast-epoll-1 ringcast-uring-2 ringcast-epoll-2 uws ws tokio-tungstenite"
SERVERS="$ALL_SERVERS"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --only) SERVERS="${2//,/ }"; shift ;;
    --no-build) BUILD=0 ;;
    --check-only) CHECK_ONLY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

WS_ADDR="${WS_ADDR:-127.0.0.1:28000}"
BACKEND_ADDR="${BACKEND_ADDR:-127.0.0.1:29999}"
SERVER_CPUS="${SERVER_CPUS:-0}"
SERVER_CPUS_WIDE="${SERVER_CPUS_WIDE:-0,1}"
LOADGEN_CPUS="${LOADGEN_CPUS:-1}"
SRC_IPS="${SRC_IPS:-4}"
if [ "$QUICK" = 1 ]; then
  CONNECTIONS="${CONNECTIONS:-200}" IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-1000}"
  FANOUT_RATE="${FANOUT_RATE:-200}" DURATION="${DURATION:-5}"
else
  CONNECTIONS="${CONNECTIONS:-1000}" IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-10000}"
  FANOUT_RATE="${FANOUT_RATE:-1000}" DURATION="${DURATION:-15}"
fi

RINGCAST="$ROOT/target/release/ringcast"
LOADGEN="$ROOT/target/release/ringcast-loadgen"
CHART="$ROOT/target/release/chart"
TT="$BENCH/peers/tokio-tungstenite/target/release/ringcast-peer-tokio-tungstenite"
CHECK="$BENCH/peers/ws/check.js"
STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
RUN="$BENCH/results/$STAMP"
CLK_TCK="$(getconf CLK_TCK)"

log() { printf '\033[1m[compare]\033[0m %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---- process bookkeeping: only what we start ------------------------------
STARTED=()
stop_pid() {
  local pid="$1"
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
forget_pid() {
  local keep=() p
  for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  STARTED=("${keep[@]+"${keep[@]}"}")
}
cleanup() {
  local p
  for p in "${STARTED[@]+"${STARTED[@]}"}"; do stop_pid "$p"; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---- prerequisites and build ----------------------------------------------
for cmd in node npm cargo taskset getconf; do
  command -v "$cmd" >/dev/null || die "$cmd is needed"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
if [ "$(ulimit -n)" -lt $((IDLE_CONNECTIONS + 1000)) ]; then
  log "warning: open-file limit $(ulimit -n) is below IDLE_CONNECTIONS+1000"
fi

if [ "$BUILD" = 1 ]; then
  log "installing peer dependencies (npm ci)"
  (cd "$BENCH/peers/uws" && npm ci --no-audit --no-fund --loglevel=error)
  (cd "$BENCH/peers/ws" && npm ci --no-audit --no-fund --loglevel=error)
  log "building tokio-tungstenite peer"
  cargo build --release --quiet --manifest-path "$BENCH/peers/tokio-tungstenite/Cargo.toml"
  log "building ringcast, ringcast-loadgen and the chart tool"
  (cd "$ROOT" && cargo build --release --quiet -p ringcast -p ringcast-loadgen -p ringcast-bench --bin ringcast --bin ringcast-loadgen --bin chart)
fi
[ -f "$CHECK" ] && [ -d "$BENCH/peers/ws/node_modules" ] || die "run without --no-build first (peer deps missing)"
if [ "$CHECK_ONLY" = 0 ]; then
  [ -x "$LOADGEN" ] || die "$LOADGEN not built"
  if ! "$LOADGEN" fanout --help 2>/dev/null | grep -q -- '--server-pid'; then
    log "warning: '$LOADGEN fanout --help' does not list --server-pid; the loadgen flags below may need adapting"
  fi
fi

mkdir -p "$RUN"
: > "$RUN/servers.txt"

# ---- servers ----------------------------------------------------------------
port_open() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

# Sets CMD and CPUS for server $1.
server_cmd() {
  local driver shards
  case "$1" in
    ringcast-*-*)
      driver="$(echo "$1" | cut -d- -f2)" shards="$(echo "$1" | cut -d- -f3)"
      CMD=("$RINGCAST" serve --shards "$shards" --driver "$driver" --ws-listen "$WS_ADDR" --backend-listen "$BACKEND_ADDR")
      if [ "$shards" -gt 1 ]; then CPUS="$SERVER_CPUS_WIDE"; else CPUS="$SERVER_CPUS"; fi ;;
    uws) CMD=(node "$BENCH/peers/uws/server.js" --ws-listen "$WS_ADDR" --backend-listen "$BACKEND_ADDR"); CPUS="$SERVER_CPUS" ;;
    ws) CMD=(node "$BENCH/peers/ws/server.js" --ws-listen "$WS_ADDR" --backend-listen "$BACKEND_ADDR"); CPUS="$SERVER_CPUS" ;;
    tokio-tungstenite) CMD=("$TT" --ws-listen "$WS_ADDR" --backend-listen "$BACKEND_ADDR" --threads 1); CPUS="$SERVER_CPUS" ;;
    *) die "unknown server $1" ;;
  esac
}

SERVER_PID=""
start_server() {
  local name="$1" dir="$RUN/$1"
  mkdir -p "$dir"
  server_cmd "$name"
  for _ in $(seq 50); do port_open "$WS_ADDR" || port_open "$BACKEND_ADDR" || break; sleep 0.1; done
  if port_open "$WS_ADDR" || port_open "$BACKEND_ADDR"; then
    log "$name: $WS_ADDR or $BACKEND_ADDR is taken by a process this script did not start"; return 1
  fi
  echo "taskset -c $CPUS ${CMD[*]}" > "$dir/command.txt"
  log "$name: starting on CPUs $CPUS: ${CMD[*]}"
  taskset -c "$CPUS" "${CMD[@]}" > "$dir/server.log" 2>&1 &
  SERVER_PID=$!
  STARTED+=("$SERVER_PID")
  for _ in $(seq 100); do
    kill -0 "$SERVER_PID" 2>/dev/null || { log "$name: exited at start (see $dir/server.log)"; return 1; }
    port_open "$WS_ADDR" && port_open "$BACKEND_ADDR" && break
    sleep 0.1
  done
  port_open "$WS_ADDR" && port_open "$BACKEND_ADDR" || { log "$name: ports not open after 10 s"; return 1; }
  if ! node "$CHECK" "$WS_ADDR" "$BACKEND_ADDR" > "$dir/check.log" 2>&1; then
    log "$name: protocol check failed: $(tail -1 "$dir/check.log")"; return 1
  fi
  log "$(tail -1 "$dir/check.log")"
}

stop_server() {
  [ -n "$SERVER_PID" ] || return 0
  stop_pid "$SERVER_PID"
  forget_pid "$SERVER_PID"
  SERVER_PID=""
}

# ---- measurement ------------------------------------------------------------
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
rss_kib() { awk '/^VmRSS/{print $2}' "/proc/$1/status"; }

# The loadgen command line of each scenario: the one place to adapt if the
# loadgen's flags change.
loadgen_args() {
  local common=(--server "$WS_ADDR" --src-ips "$SRC_IPS" --server-pid "$SERVER_PID" --json "$2"
                --threads 1 --first-core "${LOADGEN_CPUS%%[,-]*}" --allow-loss)
  case "$1" in
    connect) LG=(connect --connections "$IDLE_CONNECTIONS" "${common[@]}") ;;
    idle) LG=(idle --connections "$IDLE_CONNECTIONS" --duration "$DURATION" "${common[@]}") ;;
    fanout) LG=(fanout --connections "$CONNECTIONS" --rate "$FANOUT_RATE" --duration "$DURATION" --backend "$BACKEND_ADDR" "${common[@]}") ;;
    saturate) LG=(saturate --connections "$CONNECTIONS" --duration "$DURATION" --backend "$BACKEND_ADDR" "${common[@]}") ;;
  esac
}

run_scenario() {
  local name="$1" scenario="$2" dir="$RUN/$1" conns
  case "$scenario" in connect|idle) conns="$IDLE_CONNECTIONS" ;; *) conns="$CONNECTIONS" ;; esac
  loadgen_args "$scenario" "$dir/$scenario.json"
  echo "taskset -c $LOADGEN_CPUS $LOADGEN ${LG[*]}" >> "$dir/command.txt"
  log "$name: $scenario"
  local cpu0 rss0 t0 sampler
  cpu0="$(cpu_ticks "$SERVER_PID")" rss0="$(rss_kib "$SERVER_PID")" t0="$(date +%s.%N)"
  # Peak RSS while the scenario runs, sampled twice a second.
  ( peak=0; while kill -0 "$SERVER_PID" 2>/dev/null; do
      r="$(rss_kib "$SERVER_PID" 2>/dev/null || echo 0)"; [ "${r:-0}" -gt "$peak" ] && peak="$r" && echo "$peak" > "$dir/$scenario.rsspeak"
      sleep 0.5; done ) &
  sampler=$!
  STARTED+=("$sampler")
  local ok=1
  taskset -c "$LOADGEN_CPUS" "$LOADGEN" "${LG[@]}" > "$dir/$scenario.log" 2>&1 || ok=0
  local cpu1 t1 peak
  cpu1="$(cpu_ticks "$SERVER_PID" 2>/dev/null || echo "$cpu0")" t1="$(date +%s.%N)"
  stop_pid "$sampler"; forget_pid "$sampler"
  peak="$(cat "$dir/$scenario.rsspeak" 2>/dev/null || echo "$rss0")"
  awk -v c0="$cpu0" -v c1="$cpu1" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
      -v r0="$rss0" -v rp="$peak" -v n="$conns" -v ok="$ok" 'BEGIN {
    printf "{\"cpu_ns\": %.0f, \"wall_s\": %.3f, \"rss_kib_before\": %d, \"rss_kib_peak\": %d, \"connections\": %d, \"rss_kib_per_connection\": %.3f, \"loadgen_ok\": %s}\n",
      (c1 - c0) * 1e9 / hz, t1 - t0, r0, rp, n, (rp - r0) / (n > 0 ? n : 1), ok ? "true" : "false" }' \
    > "$dir/$scenario.server.json"
  [ "$ok" = 1 ] || log "$name: $scenario: loadgen failed (see $dir/$scenario.log)"
}

# ---- the run ----------------------------------------------------------------
FAILED=()
for name in $SERVERS; do
  echo "$name" >> "$RUN/servers.txt"
  if ! start_server "$name"; then
    FAILED+=("$name"); stop_server; continue
  fi
  if [ "$CHECK_ONLY" = 0 ]; then
    # idle first: its RSS growth is measured from a freshly started server,
    # before any earlier scenario has grown the allocator's heap.
    for scenario in idle connect fanout saturate; do
      kill -0 "$SERVER_PID" 2>/dev/null || { log "$name: server died"; FAILED+=("$name"); break; }
      run_scenario "$name" "$scenario"
    done
  fi
  stop_server
done

if [ "$CHECK_ONLY" = 1 ]; then
  [ "${#FAILED[@]}" = 0 ] || die "failed: ${FAILED[*]}"
  log "all servers passed the protocol check: $SERVERS"
  exit 0
fi

# ---- report -------------------------------------------------------------------
[ -x "$CHART" ] || die "$CHART not built"
# Hand-maintained engine figures after this marker survive a new run.
KEEP="$(sed -n '/^<!-- engine-figures -->$/,$p' "$BENCH/RESULTS.md" 2>/dev/null || true)"
TABLE="$("$CHART" "$RUN" "$BENCH/results.png")"
cp "$BENCH/results.png" "$RUN/results.png"
ver() { node -p "require('$1/package.json').version" 2>/dev/null || echo "?"; }
lockver() { awk -v n="$2" '$0 == "name = \"" n "\"" {getline; gsub(/version = |"/, ""); print; exit}' "$1"; }
{
  echo "# ringcast vs uWebSockets.js, ws and tokio-tungstenite"
  echo
  echo "Run $STAMP. Reproduce with:"
  echo
  echo '```sh'
  echo "CONNECTIONS=$CONNECTIONS IDLE_CONNECTIONS=$IDLE_CONNECTIONS FANOUT_RATE=$FANOUT_RATE DURATION=$DURATION SRC_IPS=$SRC_IPS \\"
  echo "SERVER_CPUS=$SERVER_CPUS SERVER_CPUS_WIDE=$SERVER_CPUS_WIDE LOADGEN_CPUS=$LOADGEN_CPUS bench/compare.sh $ARGS"
  echo '```'
  echo
  echo "## Machine"
  echo
  echo "- CPU: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo) ($(nproc) CPUs available)"
  echo "- Memory: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "- Kernel: $(uname -srm)"
  echo "- OS: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
  echo "- ringcast: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?); $(rustc --version)"
  echo "- Node $(node --version); uWebSockets.js (@trufflesuite/uws-js-unofficial) $(ver "$BENCH/peers/uws/node_modules/@trufflesuite/uws-js-unofficial"); ws $(ver "$BENCH/peers/ws/node_modules/ws")"
  echo "- tokio $(lockver "$BENCH/peers/tokio-tungstenite/Cargo.lock" tokio); tokio-tungstenite $(lockver "$BENCH/peers/tokio-tungstenite/Cargo.lock" tokio-tungstenite)"
  echo
  echo "## Setup"
  echo
  echo "- One server at a time on ws $WS_ADDR and backend $BACKEND_ADDR; each passes a protocol check first (\`bench/peers/ws/check.js\`)."
  echo "- Server pinned to CPUs $SERVER_CPUS (2-shard ringcast: $SERVER_CPUS_WIDE), \`ringcast-loadgen\` to CPUs $LOADGEN_CPUS, with \`taskset\`."
  echo "  Where the two sets overlap (2 shards on a 2-CPU machine) the server shares a core with the load generator."
  echo "- Scenarios: connect ($IDLE_CONNECTIONS connections), idle ($IDLE_CONNECTIONS connections for ${DURATION}s), fan-out ($CONNECTIONS subscribers, $FANOUT_RATE publications/s for ${DURATION}s), saturate ($CONNECTIONS subscribers, publish as fast as the server takes them, ${DURATION}s)."
  echo "- Server CPU is the server process's utime+stime from \`/proc\` over the scenario (unless the loadgen reports its own figure); idle KiB/conn is peak RSS growth over the connections."
  echo
  echo "## Results"
  echo
  echo "$TABLE"
  echo
  [ "${#FAILED[@]}" = 0 ] || { echo "Did not complete: ${FAILED[*]} (logs under \`bench/results/$STAMP/\`)."; echo; }
  echo "![deliveries/s, CPU per delivery and p99 latency per server](results.png)"
  echo
  echo "Raw reports and logs: \`bench/results/$STAMP/\` (not committed)."
  if [ -n "$KEEP" ]; then echo; echo "$KEEP"; fi
} > "$BENCH/RESULTS.md"
log "wrote $BENCH/RESULTS.md and $BENCH/results.png"
