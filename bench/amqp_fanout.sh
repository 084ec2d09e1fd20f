#!/usr/bin/env bash
# AMQP-sourced fan-out (issue 21): DMOJ's poster body form published to a
# throwaway RabbitMQ by engine/tests/clients/dmoj_amqp_poster.py (pika,
# as event_poster_amqp.py), consumed by `[sources.amqp]` and delivered to
# 10,000 DMOJ receivers of one channel held by ringcast-loadgen (`idle`).
# Prints the publications/s the source sustained (from
# ringcast_source_messages_total, first to last message) and the
# loadgen's deliveries; then, side by side on the same server setup, the
# backend port's rate (`saturate`) into the same 10,000 subscribers.
# Starts and stops its own broker and servers; kills only those.
#
# Usage: bench/amqp_fanout.sh [--no-build]   (COUNT publications, default 400; SIZE payload pad, 100; ROUNDS, 2)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "${1:-}" = "--no-build" ] || cargo build --release -p ringcast -p ringcast-loadgen
source bench/lib.sh
COUNT="${COUNT:-400}" SIZE="${SIZE:-100}"
AMQP_PORT="${AMQP_PORT:-35672}"
DIR="$(mktemp -d /tmp/ringcast-amqp-bench.XXXXXX)"
BROKER_PID=""
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null
  if [ -n "$BROKER_PID" ]; then
    kill -KILL -- "-$BROKER_PID" 2>/dev/null
    for _ in $(seq 50); do
      ERL_EPMD_PORT=$((AMQP_PORT + 2)) epmd -kill 2>&1 | grep -q -e Killed -e "Cannot connect" && break
      sleep 0.1
    done
  fi
  rm -rf "$DIR"
}
trap cleanup EXIT

# The broker as in engine/tests/common/rabbitmq.rs: own ports, epmd, data.
mkdir -p "$DIR/home"
printf 'RINGCASTBENCH' >"$DIR/home/.erlang.cookie"
chmod 400 "$DIR/home/.erlang.cookie"
echo '[].' >"$DIR/enabled_plugins"
(
  cd "$DIR"
  HOME="$DIR/home" RABBITMQ_NODE_PORT=$AMQP_PORT RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 \
    RABBITMQ_DIST_PORT=$((AMQP_PORT + 1)) ERL_EPMD_PORT=$((AMQP_PORT + 2)) ERL_EPMD_ADDRESS=127.0.0.1 \
    RABBITMQ_NODENAME="rcbench$AMQP_PORT@localhost" RABBITMQ_MNESIA_BASE="$DIR/mnesia" \
    RABBITMQ_LOG_BASE="$DIR/log" RABBITMQ_PID_FILE="$DIR/pid" RABBITMQ_CONFIG_FILE="$DIR/rabbitmq" \
    RABBITMQ_ADVANCED_CONFIG_FILE="$DIR/advanced.config" RABBITMQ_CONF_ENV_FILE="$DIR/env.conf" \
    RABBITMQ_ENABLED_PLUGINS_FILE="$DIR/enabled_plugins" RABBITMQ_PLUGINS_EXPAND_DIR="$DIR/plugins" \
    exec setsid /usr/lib/rabbitmq/bin/rabbitmq-server >/dev/null 2>&1
) &
BROKER_PID=$!
for _ in $(seq 600); do (echo >"/dev/tcp/127.0.0.1/$AMQP_PORT") 2>/dev/null && break; sleep 0.1; done
sleep 2
URL="amqp://guest:guest@127.0.0.1:$AMQP_PORT/%2f"
CHANNEL=amqpbench-0

export RINGCAST_PROTOCOLS_DMOJ_ENABLED=true RINGCAST_PROTOCOLS_DMOJ_RECEIVERS= \
  RINGCAST_PROTOCOLS_DMOJ_SENDERS= RINGCAST_PROTOCOLS_DMOJ_LONG_POLL=
metric() { curl -sf "http://$BE/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
connections() { curl -sf "http://$BE/metrics" | awk '$1 ~ /^ringcast_connections($|[{])/ { s += $2 } END { print s + 0 }'; }

uptime
for round in $(seq "${ROUNDS:-2}"); do
  echo "## round $round, AMQP source: $COUNT publications into 1 channel, 10,000 DMOJ receivers, driver uring"
  RINGCAST_SOURCES_AMQP_ENABLED=true RINGCAST_SOURCES_AMQP_URL="$URL" start --driver uring
  for _ in $(seq 100); do
    curl -sf "http://$BE/health" | grep -q "amqp: connected" && break
    sleep 0.1
  done
  loadgen idle -a 10000 --channels 1 --channel-prefix amqpbench- -d 30 --protocol dmoj --path /event/ \
    --allow-loss >"$DIR/loadgen.out" &
  LG=$!
  # Wait until the 10,000 receivers are connected.
  for _ in $(seq 600); do
    [ "$(connections)" -ge 10000 ] && break
    sleep 0.1
  done
  sleep 1
  python3 engine/tests/clients/dmoj_amqp_poster.py --bench "$URL" dmoj-events "$CHANNEL" "$COUNT" "$SIZE" \
    >"$DIR/poster.out" &
  PUB=$!
  m='ringcast_source_messages_total{source="amqp"}'
  t0=""
  while :; do
    n=$(metric "$m")
    now=$(date +%s.%N)
    [ -z "$t0" ] && [ "${n:-0}" -gt 0 ] && { t0=$now; n0=$n; }
    [ "${n:-0}" -ge "$COUNT" ] && break
    sleep 0.05
  done
  wait "$PUB"
  echo "poster published $COUNT in $(cat "$DIR/poster.out") s"
  awk -v c="$COUNT" -v n0="$n0" -v t0="$t0" -v t1="$now" \
    'BEGIN { printf "source: %d publications in %.2f s = %.1f publications/s (%.0f deliveries/s)\n", c - n0, t1 - t0, (c - n0) / (t1 - t0), (c - n0) / (t1 - t0) * 10000 }'
  echo "rejected $(metric ringcast_amqp_rejected_total), ids replaced $(metric ringcast_amqp_ids_replaced_total)"
  wait "$LG" || true
  cat "$DIR/loadgen.out"
  stop

  echo "## round $round, backend port (saturate) into 1 channel, 10,000 DMOJ receivers, driver uring"
  start --driver uring
  loadgen saturate -a 10000 --channels 1 -n "$COUNT" --size "$SIZE" --protocol dmoj --path /event/
  stop
done
uptime
