#!/usr/bin/env bash
# Soak: 10 minutes of steady fan-out under connection churn, then checks
# that nothing leaked and nothing was lost (issue 20).
#
#   bench/soak.sh [SECONDS]      (default 600)
#
# - `ringcast serve --shards 2`, open-file limit 20,000.
# - 10,000 steady subscribers (ringcast-loadgen fanout, CHANNELS channels,
#   default 1) receiving 20 publications/s for the whole run: they must lose nothing
#   (the loadgen exits non-zero on any loss, duplicate, reordering or
#   unexpected close).
# - Once they are connected and WARMUP (45 s) has passed (the start of
#   the steady state: history at its level, see --history-ttl), a second
#   ringcast-loadgen opens, subscribes and closes 1,000 other connections/s
#   for SECONDS.
# - The warmup includes WARMUP_CHURN (10 s) of the same churn, so the
#   first sample already holds what any churn touches once and keeps (the
#   code pages of the connect and close paths, the allocator's pages for
#   connections in flight): the check measures growth over the run, not a
#   first touch. With the base at ~20.6 MB, those ~0.44 MB alone are 2%
#   (bench/RESULTS.md, ninth session).
# - Server RSS and open fds are sampled every 10 s; the last sample while
#   the steady subscribers are still connected and the churn has stopped
#   must be within 2% of the first.
#
# Server and each loadgen run in separate processes with their own
# 20,000-fd limit; clients bind 127.0.0.1-127.0.0.8 as source addresses
# (--src-ips) so the churn's 600,000 connections do not run out of
# ephemeral ports per address; the server's ports (28100, 28199) are below
# the ephemeral range. Binaries: RINGCAST and LOADGEN (default
# target/release/...); build them with `cargo build --release --bins`.
# Output: OUT (default target/soak-<time>) holds the server log, both JSON
# reports and samples.csv. Exits 1 when a check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_RUN="${1:-600}"
RINGCAST="${RINGCAST:-target/release/ringcast}"
LOADGEN="${LOADGEN:-target/release/ringcast-loadgen}"
WS="${WS:-127.0.0.1:28100}"
BE="${BE:-127.0.0.1:28199}"
STEADY=10000
PUB_RATE=20
# 1 channel: every steady subscriber receives all 20 publications/s
# (200,000 deliveries/s). CHANNELS=100 spreads them (2,000 deliveries/s).
CHANNELS="${CHANNELS:-1}"
CHURN_RATE=1000
# Client threads of the steady loadgen: 200,000 deliveries/s is more than
# one thread reads on a busy 2-core box.
STEADY_THREADS="${STEADY_THREADS:-2}"
FDS=20000
OUT="${OUT:-target/soak-$(date +%Y%m%d-%H%M%S)}"
mkdir -p "$OUT"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# history.ttl 30 s: each channel's retained publications grow until the
# oldest expire, then stay level (bounded by design). With the default
# 300 s that takes the first five minutes of publishing (the first run
# showed RSS climbing for exactly 300 s, then flat); 30 s lets WARMUP
# cover it, so the first sample is taken in the steady state.
WARMUP="${WARMUP:-45}"
WARMUP_CHURN="${WARMUP_CHURN:-10}"
(ulimit -n "$FDS" && exec "$RINGCAST" serve --shards 2 --ws-listen "$WS" --backend-listen "$BE" \
  --max-connections 19000 --history-ttl 30) >"$OUT/server.log" 2>&1 &
SERVER=$!
pids+=("$SERVER")
for _ in $(seq 200); do
  curl -sf "http://$BE/health" >/dev/null 2>&1 && break
  sleep 0.05
done
curl -sf "http://$BE/health" >/dev/null || { echo "soak: server did not start" >&2; exit 1; }

rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$SERVER/status"; }
fds() { ls "/proc/$SERVER/fd" | wc -l; }
conns() { curl -sf "http://$BE/" -d '{"jsonrpc":"2.0","id":1,"method":"info"}' |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["result"]["connections"])'; }

# Steady subscribers: publishing runs SECONDS + WARMUP + 30 s so they are
# still connected when the churn has stopped and the last sample is taken.
(ulimit -n "$FDS" && exec "$LOADGEN" fanout -s "$WS" --backend "$BE" -c "$STEADY" --channels "$CHANNELS" \
  --rate "$PUB_RATE" -d "$((SECONDS_RUN + WARMUP + 30))" --src-ips 4 --no-pin --channel-prefix steady- \
  --threads "$STEADY_THREADS" \
  --drain-timeout 10 --json "$OUT/steady.json" --server-pid "$SERVER") >"$OUT/steady.log" 2>&1 &
STEADY_PID=$!
pids+=("$STEADY_PID")
for _ in $(seq 600); do
  [ "$(conns)" -ge "$STEADY" ] && break
  sleep 0.2
done
[ "$(conns)" -ge "$STEADY" ] || { echo "soak: steady subscribers did not connect" >&2; exit 1; }
# A first churn inside the warmup, then the rest of the warmup.
(ulimit -n "$FDS" && exec "$LOADGEN" churn -s "$WS" --backend "$BE" -c 100 --channels 100 \
  --rate "$CHURN_RATE" -d "$WARMUP_CHURN" --src-ips 8 --no-pin --channel-prefix churn-) >"$OUT/warmup-churn.log" 2>&1 ||
  { echo "soak: the warmup churn failed (see $OUT/warmup-churn.log)" >&2; exit 1; }
sleep "$((WARMUP > WARMUP_CHURN ? WARMUP - WARMUP_CHURN : 0))" # publications flowing, history at its level

echo "t_s,rss_kib,fds,connections" >"$OUT/samples.csv"
T0=$(date +%s)
sample() { echo "$(($(date +%s) - T0)),$(rss_kib),$(fds),$(conns)" | tee -a "$OUT/samples.csv"; }
sample
read -r _ RSS0 FDS0 _ < <(tail -1 "$OUT/samples.csv" | tr ',' ' ')

(ulimit -n "$FDS" && exec "$LOADGEN" churn -s "$WS" --backend "$BE" -c 100 --channels 100 \
  --rate "$CHURN_RATE" -d "$SECONDS_RUN" --src-ips 8 --no-pin --channel-prefix churn- \
  --json "$OUT/churn.json" --server-pid "$SERVER") >"$OUT/churn.log" 2>&1 &
CHURN_PID=$!
pids+=("$CHURN_PID")
while kill -0 "$CHURN_PID" 2>/dev/null; do
  sleep 10
  sample
done
churn_rc=0
wait "$CHURN_PID" || churn_rc=$?
sleep 10 # closing handshakes finish
sample
read -r _ RSS1 FDS1 CONN1 < <(tail -1 "$OUT/samples.csv" | tr ',' ' ')
steady_rc=0
wait "$STEADY_PID" || steady_rc=$?

python3 - "$OUT" "$RSS0" "$RSS1" "$FDS0" "$FDS1" "$CONN1" "$steady_rc" "$churn_rc" <<'PY'
import json, sys
out, rss0, rss1, fds0, fds1, conn1, steady_rc, churn_rc = sys.argv[1:]
rss0, rss1, fds0, fds1 = map(int, (rss0, rss1, fds0, fds1))
s = json.load(open(f"{out}/steady.json"))
c = json.load(open(f"{out}/churn.json"))
ok = True
def check(what, cond):
    global ok
    print(("ok   " if cond else "FAIL ") + what)
    ok = ok and cond
print(f"steady: {s['connections_open']} subscribers, {s['publications']} publications "
      f"({s.get('publications_sent', 0)} sent, {s['publish_errors']} errors), "
      f"{s['deliveries']} of {s['expected_deliveries']} deliveries, lost {s['lost']}, "
      f"dup {s['duplicates']}, reordered {s['reordered']}, unexpected closes {s['unexpected_closes']}, "
      f"latency p50 {s['latency_ns'].get('p50', 0)/1e6:.2f} ms p99 {s['latency_ns'].get('p99', 0)/1e6:.2f} ms (loadgen exit {steady_rc})")
print(f"churn: {c['churned']} connections opened, subscribed and closed, "
      f"connect failures {c['connect_failures']} (loadgen exit {churn_rc})")
print(f"server RSS {rss0} KiB -> {rss1} KiB ({100*(rss1-rss0)/rss0:+.2f}%), "
      f"fds {fds0} -> {fds1} ({100*(fds1-fds0)/fds0:+.2f}%), connections at the end {conn1}")
check("steady subscribers lost nothing", s["lost"] == 0 and s["duplicates"] == 0
      and s["reordered"] == 0 and s["unexpected_closes"] == 0
      and s["deliveries"] == s["expected_deliveries"] and s["publish_errors"] == 0
      and s.get("deliveries_unacknowledged", 0) == 0 and steady_rc == "0")
check("RSS within 2% of the steady state's start", abs(rss1 - rss0) <= 0.02 * rss0)
check("open fds within 2% of the steady state's start", abs(fds1 - fds0) <= 0.02 * fds0)
sys.exit(0 if ok else 1)
PY
