#!/usr/bin/env bash
# Issue 15: resident memory per idle subscribed connection, anonymous vs
# authenticated (a connection token on the upgrade), and authenticated in a
# presence namespace, 10,000 connections each, same binary and flags ([auth] hmac_secret set in every run), one
# server run per case, back to back. Quoted in bench/RESULTS.md
# ("Identity and access (issue 15)"). Kills only the servers it starts.
#
# Usage: [BEFORE=path/to/previous/ringcast] bench/identity-memory.sh [--no-build]
# With BEFORE, each round first runs that binary (anonymous) too.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ "${1:-}" = "--no-build" ] || cargo build --release -p ringcast -p ringcast-loadgen
source bench/lib.sh
SECRET="bench-secret-bench-secret-bench!"
export RINGCAST_AUTH_HMAC_SECRET="$SECRET"
# One user for every connection (its id interned once), and one user per
# connection is not possible with one URL: see RESULTS.md for that case.
TOKEN=$(python3 -c 'import jwt,sys; print(jwt.encode({"sub": "bench-user-0001", "groups": ["staff"], "info": {"name": "Bench"}}, sys.argv[1], algorithm="HS256"))' "$SECRET")
# Subscribers of pres:* channels are kept in their home shard's presence.
PRESENCE_CFG="$(mktemp)"
printf '[[auth.namespaces]]\nprefix = "pres:"\npresence = true\n' > "$PRESENCE_CFG"
AFTER="$RINGCAST"
for round in 1 2; do
  if [ -n "${BEFORE:-}" ]; then
    echo "## round $round: BEFORE ($BEFORE), anonymous, 10,000 idle connections"
    # (it knows no [auth] keys)
    unset RINGCAST_AUTH_HMAC_SECRET
    RINGCAST="$BEFORE"; start --driver uring; loadgen idle -a 10000 -d 5; stop; RINGCAST="$AFTER"
    export RINGCAST_AUTH_HMAC_SECRET="$SECRET"
  fi
  echo "## round $round: anonymous, 10,000 idle connections"
  start --driver uring; loadgen idle -a 10000 -d 5; stop
  echo "## round $round: authenticated (token with sub, groups, info), 10,000 idle connections"
  start --driver uring; loadgen idle -a 10000 -d 5 --path "/?token=$TOKEN"; stop
  echo "## round $round: authenticated, channels in a presence namespace (the home shard keeps every subscriber), 10,000 idle connections"
  start --driver uring --config "$PRESENCE_CFG"
  loadgen idle -a 10000 -d 5 --path "/?token=$TOKEN" --channel-prefix "pres:"; stop
done
rm -f "$PRESENCE_CFG"
