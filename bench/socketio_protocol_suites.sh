#!/usr/bin/env bash
# The official Engine.IO and Socket.IO protocol test suites (the
# `test-suite/` folders of github.com/socketio/engine.io-protocol and
# github.com/socketio/socket.io-protocol) against ringcast's Socket.IO
# endpoint (issue 11). They are published on GitHub only (no registry
# ships them), so CI cannot fetch them: check them out yourself and pass
# the two folders. For each suite this script installs its npm
# dependencies in its own folder (`npm ci`, `npm install` without a
# lockfile), starts ringcast as the suite expects (LQDOJ's listener on
# localhost:3000, path `/engine.io/` or `/socket.io/`, pingInterval 300 ms,
# pingTimeout 200 ms, maxPayload 1000000 = `limits.max_message_size`),
# runs mocha, stops that server (only the one it started) and prints the
# pass/fail counts. The failures that remain are explained in README.md,
# "Coming from LQDOJ".
#
# Usage: bench/socketio_protocol_suites.sh <engine.io-protocol/test-suite>
#                                          <socket.io-protocol/test-suite>
#   RINGCAST: the binary (default: built with `cargo build -p ringcast`
#   into $CARGO_TARGET_DIR or target/). Port 3000 must be free; the public
#   and backend ports are 3100/3101 (WS_PORT / BACKEND_PORT to change).
set -euo pipefail
[ $# -eq 2 ] || { sed -n '2,20p' "$0"; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EIO="$(cd "$1" && pwd)"
SIO="$(cd "$2" && pwd)"
if [ -z "${RINGCAST:-}" ]; then
  (cd "$ROOT" && cargo build -p ringcast)
  RINGCAST="${CARGO_TARGET_DIR:-$ROOT/target}/debug/ringcast"
fi
WS_PORT="${WS_PORT:-3100}" BACKEND_PORT="${BACKEND_PORT:-3101}"
LOG="$(mktemp -d)"
PID=""
stop_server() {
  if [ -n "$PID" ]; then
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=""
  fi
}
trap stop_server EXIT

run_suite() { # name folder path
  local name="$1" dir="$2" path="$3"
  echo "## $name ($dir), path $path"
  if [ -f "$dir/package-lock.json" ]; then
    (cd "$dir" && npm ci --no-audit --no-fund >/dev/null)
  else
    (cd "$dir" && npm install --no-audit --no-fund >/dev/null)
  fi
  env RINGCAST_PROTOCOLS_SOCKETIO_ENABLED=true \
    RINGCAST_PROTOCOLS_SOCKETIO_LISTEN=127.0.0.1:3000 \
    RINGCAST_PROTOCOLS_SOCKETIO_PATH="$path" \
    RINGCAST_PROTOCOLS_SOCKETIO_PING_INTERVAL=300 \
    RINGCAST_PROTOCOLS_SOCKETIO_PING_TIMEOUT=200 \
    RINGCAST_LIMITS_MAX_MESSAGE_SIZE=1000000 \
    RINGCAST_PROTOCOLS_DMOJ_RECEIVERS= \
    "$RINGCAST" --ws-listen "127.0.0.1:$WS_PORT" \
    --backend-listen "127.0.0.1:$BACKEND_PORT" --shards 2 \
    >"$LOG/$name-server.log" 2>&1 &
  PID=$!
  for _ in $(seq 100); do
    (exec 3<>/dev/tcp/127.0.0.1/3000) 2>/dev/null && break
    kill -0 "$PID" 2>/dev/null || { cat "$LOG/$name-server.log"; exit 1; }
    sleep 0.1
  done
  (cd "$dir" && npx mocha test-suite.js) >"$LOG/$name.txt" 2>&1 || true
  stop_server
  grep -vE '^\s+at ' "$LOG/$name.txt"
  echo "$name: $(grep -oE '[0-9]+ passing' "$LOG/$name.txt" || echo '0 passing'), $(grep -oE '[0-9]+ failing' "$LOG/$name.txt" || echo '0 failing')"
}

run_suite engine.io-protocol "$EIO" /engine.io/
run_suite socket.io-protocol "$SIO" /socket.io/
echo "logs in $LOG"
