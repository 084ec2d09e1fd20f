#!/usr/bin/env bash
# Side-by-side comparison: ringcast (io_uring and epoll, 1 and 2 shards)
# against uWebSockets.js, Node ws and tokio-tungstenite, on this machine, in
# one run, with the same load generator and the same scenarios.
#
# Usage: bench/compare.sh [--matrix] [--quick] [--only a,b,...] [--no-build] [--check-only]
#
#   --matrix      issue 17's matrix (below) instead of the suite's four
#                 scenarios: one table row per load and server, written to
#                 bench/results/<stamp>/matrix.md and printed;
#                 bench/RESULTS.md is left alone (the matrix gets pasted
#                 with its context). A flag, not the default: a plain run
#                 keeps producing the top of RESULTS.md (one row per
#                 server, all seven servers) that the READMEs point to; the
#                 matrix is another table, with other servers by default.
#   --quick       short runs with few connections (a smoke test of the suite)
#   --only LIST   servers to run, comma-separated, from:
#                 ringcast-uring-1 ringcast-epoll-1 ringcast-uring-2
#                 ringcast-epoll-2 uws ws tokio-tungstenite, and, with
#                 RINGCAST_BEFORE set, before-uring-1 before-epoll-1
#                 before-uring-2 before-epoll-2
#   --no-build    reuse the binaries and node_modules already there
#   --check-only  start each server, run the protocol check, stop it; no load
#
# Servers by default: all of the above but the before-* ones; with
# --matrix, ringcast-uring-1 ringcast-epoll-1 uws, or with RINGCAST_BEFORE
# set, before-uring-1 ringcast-uring-1 before-epoll-1 ringcast-epoll-1 uws
# (before and after of one driver back to back).
#
# The matrix, in run order (idle first, from a freshly started server), for
# DURATION seconds each, 100-byte payloads; a row's name says its load:
#
#   idle            IDLE_CONNECTIONS held: server RSS bytes per connection
#   connect         IDLE_CONNECTIONS connect+subscribe: connections/s
#   fanout-10k-50   10,000 subscribers x 50 publications/s
#   fanout-10k-20   10,000 subscribers x 20 publications/s
#   fanout-1k-100   1,000 subscribers x 100 publications/s
#   saturate-32     CONNECTIONS subscribers, 32 publications in flight
#   saturate-256    CONNECTIONS subscribers, 256 in flight (the loadgen's
#                   default window, so the suite's `saturate`)
#
# MATRIX_FANOUT ("10000x50 10000x20 1000x100", SUBSCRIBERSxRATE) and
# MATRIX_WINDOWS ("32 256") change those rows (empty: none of that kind,
# e.g. MATRIX_FANOUT= for the saturation rows alone). --quick's MATRIX_FANOUT
# divides the subscribers by 10 (fanout-1k-50 fanout-1k-20 fanout-100-100),
# and CONNECTIONS, IDLE_CONNECTIONS and DURATION take their --quick values.
#
# Settings (environment): WS_ADDR (127.0.0.1:28000), BACKEND_ADDR
# (127.0.0.1:29999; both below the ephemeral port range, so no client's
# TIME_WAIT can hold them), SERVER_CPUS (0), SERVER_CPUS_WIDE (0,1; for 2-shard
# runs), LOADGEN_CPUS (1), CONNECTIONS (1000, fan-out/saturate subscribers;
# --quick 200), IDLE_CONNECTIONS (10000; --quick 1000), FANOUT_RATE (1000
# publications/s; --quick 200), DURATION (15, seconds per scenario; --quick
# 5), SRC_IPS (4 source addresses 127.0.0.1..N).
#
# Binaries (environment): RINGCAST (the "after" ringcast, default
# $CARGO_TARGET_DIR/release/ringcast, CARGO_TARGET_DIR defaulting to
# target/), RINGCAST_BEFORE (a ringcast to compare it with; not built here),
# LOADGEN (…/release/ringcast-loadgen), CHART (…/release/chart). The build
# step builds the default paths; an overridden binary is used as it is.
#
# Writes bench/results/<stamp>/ (raw reports and logs, not committed), and
# bench/RESULTS.md and bench/results.png (the suite) or the run's matrix.md
# and matrix.png (--matrix). Only processes this script starts are stopped,
# on exit and on failure.
set -euo pipefail

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$BENCH/.." && pwd)"
# A word as the shell reads it back: quoted only where it needs to be.
shq() {
  case "$1" in
    '' | *[!A-Za-z0-9_./:,+=@%-]*) printf "'%s'" "${1//\'/\'\\\'\'}" ;;
    *) printf '%s' "$1" ;;
  esac
}
ARGS=""
for a in "$@"; do ARGS+=" $(shq "$a")"; done

QUICK=0 BUILD=1 CHECK_ONLY=0 MATRIX=0 ONLY=""
ALL_SERVERS="ringcast-uring-1 ringcast-epoll-1 ringcast-uring-2 ringcast-epoll-2 uws ws tokio-tungstenite"
while [ $# -gt 0 ]; do
  case "$1" in
    --matrix) MATRIX=1 ;;
    --quick) QUICK=1 ;;
    --only) [ $# -ge 2 ] || { echo "compare.sh: --only needs a list" >&2; exit 2; }; ONLY="${2//,/ }"; shift ;;
    --no-build) BUILD=0 ;;
    --check-only) CHECK_ONLY=1 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# Not in the servers' environment: ringcast reads RINGCAST_* variables as
# settings and refuses one it does not know.
RINGCAST_BEFORE="${RINGCAST_BEFORE:-}"
export -n RINGCAST_BEFORE
if [ -n "$ONLY" ]; then
  SERVERS="$ONLY"
elif [ "$MATRIX" = 1 ] && [ -n "$RINGCAST_BEFORE" ]; then
  SERVERS="before-uring-1 ringcast-uring-1 before-epoll-1 ringcast-epoll-1 uws"
elif [ "$MATRIX" = 1 ]; then
  SERVERS="ringcast-uring-1 ringcast-epoll-1 uws"
else
  SERVERS="$ALL_SERVERS"
fi

# Binaries and addresses the caller gave, repeated in the report's command
# line (the other settings are always written out).
GIVEN_ENV=()
for v in RINGCAST RINGCAST_BEFORE LOADGEN CHART CARGO_TARGET_DIR WS_ADDR BACKEND_ADDR; do
  [ -z "${!v:-}" ] || GIVEN_ENV+=("$v=$(shq "${!v}")")
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
  MATRIX_FANOUT="${MATRIX_FANOUT-1000x50 1000x20 100x100}"
else
  CONNECTIONS="${CONNECTIONS:-1000}" IDLE_CONNECTIONS="${IDLE_CONNECTIONS:-10000}"
  FANOUT_RATE="${FANOUT_RATE:-1000}" DURATION="${DURATION:-15}"
  MATRIX_FANOUT="${MATRIX_FANOUT-10000x50 10000x20 1000x100}"
fi
MATRIX_WINDOWS="${MATRIX_WINDOWS-32 256}"

# Binaries: the given ones, else where the build step below puts them.
if [ -n "${CARGO_TARGET_DIR:-}" ]; then
  case "$CARGO_TARGET_DIR" in /*) ;; *) CARGO_TARGET_DIR="$PWD/$CARGO_TARGET_DIR" ;; esac
  export CARGO_TARGET_DIR
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
RINGCAST="${RINGCAST:-$TARGET/release/ringcast}"
LOADGEN="${LOADGEN:-$TARGET/release/ringcast-loadgen}"
CHART="${CHART:-$TARGET/release/chart}"
TT="${CARGO_TARGET_DIR:-$BENCH/peers/tokio-tungstenite/target}/release/ringcast-peer-tokio-tungstenite"
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

# ---- what to run --------------------------------------------------------------
# One load a line: ROW SCENARIO CONNECTIONS RATE WINDOW ("-": not given to
# the loadgen), in run order. ROW names the reports, SERVER/ROW.json.
ROWS=()
# 10000 -> 10k, 1500 -> 1500.
short_count() { if [ "$1" -ge 1000 ] && [ $(($1 % 1000)) = 0 ]; then echo "$(($1 / 1000))k"; else echo "$1"; fi; }
if [ "$MATRIX" = 1 ]; then
  ROWS+=("idle idle $IDLE_CONNECTIONS - -" "connect connect $IDLE_CONNECTIONS - -")
  for f in $MATRIX_FANOUT; do
    c="${f%%x*}" r="${f#*x}"
    [[ "$c" =~ ^[1-9][0-9]*$ && "$r" =~ ^[0-9]+(\.[0-9]+)?$ && "$f" = "${c}x${r}" ]] ||
      die "MATRIX_FANOUT: '$f' is not SUBSCRIBERSxRATE (e.g. 10000x50)"
    ROWS+=("fanout-$(short_count "$c")-$r fanout $c $r -")
  done
  for w in $MATRIX_WINDOWS; do
    [[ "$w" =~ ^[1-9][0-9]*$ ]] || die "MATRIX_WINDOWS: '$w' is not a number of publications"
    ROWS+=("saturate-$w saturate $CONNECTIONS - $w")
  done
else
  # idle first: its RSS growth is measured from a freshly started server,
  # before any earlier scenario has grown the allocator's heap.
  ROWS=("idle idle $IDLE_CONNECTIONS - -" "connect connect $IDLE_CONNECTIONS - -"
        "fanout fanout $CONNECTIONS $FANOUT_RATE -" "saturate saturate $CONNECTIONS - -")
fi
MAX_CONNS=0
for row in "${ROWS[@]}"; do
  read -r _ _ c _ _ <<< "$row"
  [ "$c" -le "$MAX_CONNS" ] || MAX_CONNS="$c"
done

for name in $SERVERS; do
  case "$name" in
    ringcast-uring-[12] | ringcast-epoll-[12] | uws | ws | tokio-tungstenite) ;;
    before-uring-[12] | before-epoll-[12])
      [ -n "$RINGCAST_BEFORE" ] || die "$name needs RINGCAST_BEFORE=/path/to/ringcast"
      [ -x "$RINGCAST_BEFORE" ] || die "RINGCAST_BEFORE=$RINGCAST_BEFORE is not an executable" ;;
    *) die "unknown server $name (see --help)" ;;
  esac
done
selected() { case " $SERVERS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# ---- prerequisites and build ----------------------------------------------
for cmd in node npm cargo taskset getconf; do
  command -v "$cmd" >/dev/null || die "$cmd is needed"
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" || true
if [ "$(ulimit -n)" -lt $((MAX_CONNS + 1000)) ]; then
  log "warning: open-file limit $(ulimit -n) is below $MAX_CONNS connections + 1000"
fi

if [ "$BUILD" = 1 ]; then
  # Only what the selected servers need; the ws peer's modules serve the
  # protocol check of every server.
  log "installing peer dependencies (npm ci)"
  if selected uws; then (cd "$BENCH/peers/uws" && npm ci --no-audit --no-fund --loglevel=error); fi
  (cd "$BENCH/peers/ws" && npm ci --no-audit --no-fund --loglevel=error)
  if selected tokio-tungstenite; then
    log "building tokio-tungstenite peer"
    cargo build --release --quiet --manifest-path "$BENCH/peers/tokio-tungstenite/Cargo.toml"
  fi
  log "building ringcast, ringcast-loadgen and the chart tool"
  (cd "$ROOT" && cargo build --release --quiet -p ringcast -p ringcast-loadgen -p ringcast-bench --bin ringcast --bin ringcast-loadgen --bin chart)
fi
if [ ! -f "$CHECK" ] || [ ! -d "$BENCH/peers/ws/node_modules" ]; then
  die "run without --no-build first (peer deps missing)"
fi
if selected uws && [ ! -d "$BENCH/peers/uws/node_modules" ]; then
  die "run without --no-build first (uWebSockets.js peer's node_modules missing)"
fi
if [ -n "$RINGCAST_BEFORE" ] && [ "$(readlink -f "$RINGCAST_BEFORE")" = "$(readlink -f "$RINGCAST")" ]; then
  log "note: RINGCAST_BEFORE and RINGCAST are the same file"
fi
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
  local driver shards bin
  case "$1" in
    ringcast-*-* | before-*-*)
      driver="$(echo "$1" | cut -d- -f2)" shards="$(echo "$1" | cut -d- -f3)"
      bin="$RINGCAST"; [ "${1%%-*}" = before ] && bin="$RINGCAST_BEFORE"
      [ -x "$bin" ] || die "$bin not built"
      CMD=("$bin" serve --shards "$shards" --driver "$driver" --ws-listen "$WS_ADDR" --backend-listen "$BACKEND_ADDR")
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
    kill -0 "$SERVER_PID" 2>/dev/null || { log "$name: exited at start: $(tail -1 "$dir/server.log") (see $dir/server.log)"; return 1; }
    port_open "$WS_ADDR" && port_open "$BACKEND_ADDR" && break
    sleep 0.1
  done
  if ! port_open "$WS_ADDR" || ! port_open "$BACKEND_ADDR"; then
    log "$name: ports not open after 10 s"; return 1
  fi
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
# loadgen's flags change. Arguments: SCENARIO JSON CONNECTIONS RATE WINDOW.
loadgen_args() {
  local common=(--server "$WS_ADDR" --src-ips "$SRC_IPS" --server-pid "$SERVER_PID" --json "$2"
                --threads 1 --first-core "${LOADGEN_CPUS%%[,-]*}" --allow-loss)
  case "$1" in
    connect) LG=(connect --connections "$3" "${common[@]}") ;;
    idle) LG=(idle --connections "$3" --duration "$DURATION" "${common[@]}") ;;
    fanout) LG=(fanout --connections "$3" --rate "$4" --duration "$DURATION" --backend "$BACKEND_ADDR" "${common[@]}") ;;
    saturate) LG=(saturate --connections "$3" --duration "$DURATION" --backend "$BACKEND_ADDR" "${common[@]}") ;;
  esac
  [ "$5" = - ] || LG+=(--window "$5")
}

# run_scenario SERVER ROW SCENARIO CONNECTIONS RATE WINDOW
run_scenario() {
  local name="$1" scenario="$2" kind="$3" conns="$4" rate="$5" window="$6" dir="$RUN/$1"
  loadgen_args "$kind" "$dir/$scenario.json" "$conns" "$rate" "$window"
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
  # The load as asked for (the chart reads it) and the server's cost.
  awk -v c0="$cpu0" -v c1="$cpu1" -v hz="$CLK_TCK" -v t0="$t0" -v t1="$t1" \
      -v r0="$rss0" -v rp="$peak" -v n="$conns" -v ok="$ok" -v row="$scenario" -v kind="$kind" \
      -v rate="$rate" -v win="$window" -v dur="$DURATION" 'BEGIN {
    printf "{\"row\": \"%s\", \"scenario\": \"%s\", \"rate\": %s, \"window\": %s, \"duration_s\": %s, ",
      row, kind, rate == "-" ? "null" : rate, win == "-" ? "null" : win, dur
    printf "\"cpu_ns\": %.0f, \"wall_s\": %.3f, \"rss_kib_before\": %d, \"rss_kib_peak\": %d, \"connections\": %d, \"rss_kib_per_connection\": %.3f, \"loadgen_ok\": %s}\n",
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
    for row in "${ROWS[@]}"; do
      kill -0 "$SERVER_PID" 2>/dev/null || { log "$name: server died"; FAILED+=("$name"); break; }
      # shellcheck disable=SC2086 # the row's fields, split on purpose
      run_scenario "$name" $row
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
ver() { node -p "require('$1/package.json').version" 2>/dev/null || echo "?"; }
lockver() { awk -v n="$2" '$0 == "name = \"" n "\"" {getline; gsub(/version = |"/, ""); print; exit}' "$1"; }
machine() {
  echo "- CPU: $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo) ($(nproc) CPUs available)"
  echo "- Memory: $(awk '/MemTotal/{printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "- Kernel: $(uname -srm)"
  # shellcheck source=/dev/null
  echo "- OS: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
}
# The report's results: the chart tool's $TABLE, what did not complete,
# the chart (alt text $1, file $2) and where the raw reports are.
results() {
  echo "## Results"
  echo
  echo "$TABLE"
  echo
  [ "${#FAILED[@]}" = 0 ] || { echo "Did not complete: ${FAILED[*]} (logs under \`bench/results/$STAMP/\`)."; echo; }
  echo "![$1]($2)"
  echo
  echo "Raw reports and logs: \`bench/results/$STAMP/\` (not committed)."
}
# A binary as run: path, start of its SHA-256, modification time.
binary() { echo "\`$1\` (sha256 $(sha256sum "$1" | cut -c1-12), built $(date -u -r "$1" +%Y-%m-%dT%H:%MZ))"; }

if [ "$MATRIX" = 1 ]; then
  TABLE="$("$CHART" --matrix "$RUN" "$RUN/matrix.png")"
  {
    echo "# ringcast matrix (issue 17): ${SERVERS// /, }"
    echo
    echo "Run $STAMP$([ "$QUICK" = 1 ] && echo ", --quick: scaled-down counts, a smoke test, not figures to quote"). Reproduce with:"
    echo
    echo '```sh'
    [ "${#GIVEN_ENV[@]}" = 0 ] || printf '%s \\\n' "${GIVEN_ENV[@]}"
    echo "CONNECTIONS=$CONNECTIONS IDLE_CONNECTIONS=$IDLE_CONNECTIONS MATRIX_FANOUT=$(shq "$MATRIX_FANOUT") MATRIX_WINDOWS=$(shq "$MATRIX_WINDOWS") \\"
    echo "DURATION=$DURATION SRC_IPS=$SRC_IPS SERVER_CPUS=$SERVER_CPUS SERVER_CPUS_WIDE=$SERVER_CPUS_WIDE LOADGEN_CPUS=$LOADGEN_CPUS \\"
    echo "bench/compare.sh$ARGS"
    echo '```'
    echo
    echo "## Machine and binaries"
    echo
    machine
    echo "- Checkout: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo ?)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)'); $(rustc --version)"
    case " $SERVERS " in *" before-"*) echo "- before-* servers: $(binary "$RINGCAST_BEFORE")" ;; esac
    echo "- ringcast-* servers: $(binary "$RINGCAST")"
    echo "- Load generator: $(binary "$LOADGEN")"
    if selected uws; then
      echo "- Node $(node --version); uWebSockets.js (@trufflesuite/uws-js-unofficial) $(ver "$BENCH/peers/uws/node_modules/@trufflesuite/uws-js-unofficial")"
    fi
    echo
    echo "## Setup"
    echo
    echo "- One server at a time on ws $WS_ADDR and backend $BACKEND_ADDR; each passes a protocol check first (\`bench/peers/ws/check.js\`), then runs every load below in this order, without a restart: idle first, so its RSS growth is that of a fresh server."
    echo "- Server pinned to CPUs $SERVER_CPUS (2-shard ringcast: $SERVER_CPUS_WIDE), \`ringcast-loadgen\` (one client thread) to CPUs $LOADGEN_CPUS, with \`taskset\`; $SRC_IPS source addresses; 100-byte payloads; ${DURATION} s per load."
    echo "- Loads: $(for row in "${ROWS[@]}"; do read -r r _ _ _ _ <<< "$row"; printf '%s ' "$r"; done)(the table's \`what\` column gives each one's counts)."
    echo "- Deliveries/s, CPU per delivery (the server's utime+stime from \`/proc\` over the publishing window, divided by deliveries), latency (publication's timestamp to its arrival) and loss are the loadgen's \`--json\` report; RSS per connection is the server's RSS growth while the idle connections are open, over their number."
    echo
    results "one panel per load: server CPU ns per delivery, connects/s, RSS bytes per connection" matrix.png
  } > "$RUN/matrix.md"
  cat "$RUN/matrix.md"
  log "wrote $RUN/matrix.md and $RUN/matrix.png (bench/RESULTS.md not touched)"
  exit 0
fi

# Hand-maintained engine figures after this marker survive a new run.
KEEP="$(sed -n '/^<!-- engine-figures -->$/,$p' "$BENCH/RESULTS.md" 2>/dev/null || true)"
TABLE="$("$CHART" "$RUN" "$BENCH/results.png")"
cp "$BENCH/results.png" "$RUN/results.png"
{
  echo "# ringcast vs uWebSockets.js, ws and tokio-tungstenite"
  echo
  echo "Run $STAMP. Reproduce with:"
  echo
  echo '```sh'
  [ "${#GIVEN_ENV[@]}" = 0 ] || printf '%s \\\n' "${GIVEN_ENV[@]}"
  echo "CONNECTIONS=$CONNECTIONS IDLE_CONNECTIONS=$IDLE_CONNECTIONS FANOUT_RATE=$FANOUT_RATE DURATION=$DURATION SRC_IPS=$SRC_IPS \\"
  echo "SERVER_CPUS=$SERVER_CPUS SERVER_CPUS_WIDE=$SERVER_CPUS_WIDE LOADGEN_CPUS=$LOADGEN_CPUS bench/compare.sh$ARGS"
  echo '```'
  echo
  echo "## Machine"
  echo
  machine
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
  results "deliveries/s, CPU per delivery and p99 latency per server" results.png
  if [ -n "$KEEP" ]; then echo; echo "$KEEP"; fi
} > "$BENCH/RESULTS.md"
log "wrote $BENCH/RESULTS.md and $BENCH/results.png"
