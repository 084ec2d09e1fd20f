#!/usr/bin/env bash
# Rodan-compatible load test: Thor-style run of ringcast-loadgen.
#   tuning/test_load.sh [-a CONNECTIONS] [-n MESSAGES] [-s HOST:PORT] [-h]
# Each of the -a connections subscribes to its own channel and receives -n
# messages published through the backend port. The summary goes to the
# terminal and to test_log/<timestamp>.txt. Extra loadgen flags may follow
# `--` (e.g. `-- --backend 127.0.0.1:59999 --server-pid 1234`).
set -euo pipefail

usage() {
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'
}

amount=1000
messages=1
server=127.0.0.1:58000
while getopts ":a:n:s:h" opt; do
    case "$opt" in
        a) amount=$OPTARG ;;
        n) messages=$OPTARG ;;
        s) server=$OPTARG ;;
        h) usage; exit 0 ;;
        :) echo "test_load.sh: -$OPTARG needs a value" >&2; exit 2 ;;
        *) echo "test_load.sh: unknown flag -$OPTARG (try -h)" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
[ "${1:-}" = "--" ] && shift

root=$(cd "$(dirname "$0")/.." && pwd)
bin=${RINGCAST_LOADGEN:-}
if [ -z "$bin" ]; then
    bin="$root/target/release/ringcast-loadgen"
    if [ ! -x "$bin" ]; then
        (cd "$root" && cargo build --release -p ringcast-loadgen >&2)
    fi
fi

mkdir -p "$root/test_log"
log="$root/test_log/$(date +%Y%m%d-%H%M%S).txt"
{
    echo "ringcast load test $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "connections=$amount messages=$messages server=$server"
} >"$log"
status=0
"$bin" -a "$amount" -n "$messages" -s "$server" "$@" 2>&1 | tee -a "$log" || status=${PIPESTATUS[0]}
echo "exit status $status" >>"$log"
echo "log: $log" >&2
exit "$status"
