#!/usr/bin/env bash
# One-time setup for a fresh machine: system packages the tests and benches
# use, then a build of every crate and test target.
set -euo pipefail
cd "$(dirname "$0")/.."

# util-linux gives `script` (the shell's pseudo-terminal test), tmux is an
# alternative pty driver, systemd gives systemd-analyze (unit-file test),
# nodejs/npm run the uWebSockets.js and ws peers of bench/compare.sh.
packages=(util-linux tmux systemd nodejs npm procps curl)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
  else
    echo "setup: please install: ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
  fi
fi

cargo build --workspace --all-targets
cargo build --workspace --release --bins
