#!/usr/bin/env bash
# permessage-deflate at fan-out: bytes on the wire and server CPU per
# delivery, compressed (`ws.compression = "shared"`, clients offer
# permessage-deflate) vs uncompressed (clients do not offer it), for a
# ~100-byte and a ~2 KB JSON payload, all in one run against one server.
#
#   bench/deflate.sh [CLIENTS] [PUBLICATIONS]     (default 10000 100)
#
# The server (one shard) runs on SERVER_CPU; the clients are Node's `ws`
# (bench/deflate_clients.js, which inflates like a browser) on LOADGEN_CPU.
# Server CPU is utime+stime of the server process from /proc over the
# publishing phase only (after every client is subscribed, until every
# client has every publication); bytes are what the clients' sockets read
# over the same phase (TCP payload: frames, headers included). Both include the backend HTTP requests of the emits,
# the same in every row.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
N="${1:-10000}"
P="${2:-100}"
export NODE_PATH="$PWD/engine/tests/browser/node_modules"

cpu_ticks() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
payload() { # a JSON array of records, exactly $1 bytes
  python3 -c "import json,sys
n=int(sys.argv[1]); items=[]; i=0
d=lambda v: json.dumps(v,separators=(',',':'))
while len(d(items+[{'id':i,'user':'user%d'%(i%7),'score':i*37%101}]))+12<=n:
    items.append({'id':i,'user':'user%d'%(i%7),'score':i*37%101}); i+=1
items.append({'n':''}); items[-1]['n']='x'*(n-len(d(items)))
print(d(items))" "$1"
}

RINGCAST_WS_COMPRESSION=shared start
tick=$(getconf CLK_TCK)
printf '%-8s %-8s %12s %14s %14s %14s\n' payload clients deliveries "bytes/deliv" "CPU us/deliv" "wire ratio"
for size in 100 2048; do
  data=$(payload "$size")
  body="{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"emit\",\"params\":{\"channel\":\"c$size\",\"data\":$data}}"
  plain_bytes=""
  for mode in plain deflate; do
    fifo=$(mktemp -u); mkfifo "$fifo"
    taskset -c "$LOADGEN_CPU" node bench/deflate_clients.js "ws://$WS/" "$N" "$mode" "c$size" "$P" >"$fifo" &
    cpid=$!
    exec 3<"$fifo"
    read -r line <&3; [ "$line" = ready ] || { echo "clients: $line" >&2; exit 1; }
    c0=$(cpu_ticks)
    for _ in $(seq "$P"); do
      curl -sf -o /dev/null -X POST "http://$BE/" -H 'Content-Type: application/json' --data "$body"
    done
    read -r line <&3
    c1=$(cpu_ticks)
    read -r _ _ bytes <<<"$line"
    exec 3<&-; rm -f "$fifo"; wait "$cpid" || true
    d=$((N * P))
    bpd=$(awk -v b="$bytes" -v d="$d" 'BEGIN {printf "%.1f", b / d}')
    us=$(awk -v c=$((c1 - c0)) -v t="$tick" -v d="$d" 'BEGIN {printf "%.3f", c / t * 1e6 / d}')
    [ -z "$plain_bytes" ] && plain_bytes=$bpd
    ratio=$(awk -v a="$bpd" -v p="$plain_bytes" 'BEGIN {printf "%.2f", a / p}')
    printf '%-8s %-8s %12d %14s %14s %14s  (%s; %s)\n' "${#data}B" "$N" "$d" "$bpd" "$us" "$ratio" "$mode" "$line"
  done
done
stop
