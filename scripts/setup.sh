#!/usr/bin/env bash
# One-time setup for a fresh machine: the system tools the tests and
# benches use (installed with apt where missing), then the build of every
# test target and of the release server.
set -euo pipefail
cd "$(dirname "$0")/.."

# command -> Debian package. `script` drives the shell's pseudo-terminal
# test (tmux is the alternative), systemd-analyze checks the unit file,
# node/npm run the uWebSockets.js and ws peers of bench/compare.sh, curl and
# taskset are used by the bench scripts, chromium runs the browser tests
# (engine/tests/browser.rs; chromedriver comes with it for WebDriver
# clients), make and cc build AFL++ for the fuzz smoke, redis-server (and
# redis-cli, which makes engine/tests/cluster.rs's Redis Cluster) and
# postgresql give the message-source tests (engine/tests/sources_*.rs) their
# throwaway servers, and so does rabbitmq-server (sources_amqp.rs runs
# /usr/lib/rabbitmq/bin/rabbitmq-server as the test's user on free ports with
# its own epmd port; the package's own service, if the init system starts it,
# listens on 5672/25672/4369 and is never used, so it may run or not).
# Tests skip, with a message, what they cannot find, so a failed
# install does not stop the build; under CI=true they fail instead.
declare -A wanted=(
  [script]=util-linux [taskset]=util-linux [tmux]=tmux
  [systemd-analyze]=systemd [node]=nodejs [npm]=npm [ps]=procps [curl]=curl
  [chromium]=chromium [chromedriver]=chromium-driver [redis-server]=redis-server
  [redis-cli]=redis-tools
  [make]=make [cc]=gcc
)
missing=()
for cmd in "${!wanted[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${wanted[$cmd]}")
done
# PostgreSQL's server binaries (initdb, postgres) are not on PATH.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing+=(postgresql)
# RabbitMQ's real start script is not on PATH (/usr/sbin's wrapper su's to
# the rabbitmq user).
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" ||
      echo "setup: could not install ${missing[*]}; the tests that need them will skip (fail under CI=true)" >&2
  else
    echo "setup: please install ${missing[*]} (sudo apt-get install ${missing[*]})" >&2
  fi
fi

# The browser tests' driver, puppeteer-core, and the permessage-deflate
# test's client, ws; pinned by package-lock.json. Downloads no browser.
if command -v npm >/dev/null 2>&1; then
  (cd engine/tests/browser && npm ci --no-audit --no-fund --loglevel=error) ||
    echo "setup: npm ci in engine/tests/browser failed; the browser and permessage-deflate tests need it" >&2
fi

# The compatibility tests' real clients (engine/tests/dmoj.rs): Node `ws`
# pinned by package-lock.json, Python `websocket-client` by requirements.txt.
if command -v npm >/dev/null 2>&1; then
  (cd engine/tests/clients && npm ci --no-audit --no-fund --loglevel=error) ||
    echo "setup: npm ci in engine/tests/clients failed; the DMOJ and Socket.IO tests need it" >&2
fi
if command -v python3 >/dev/null 2>&1; then
  python3 -m pip install -q -r engine/tests/clients/requirements.txt ||
    echo "setup: pip install -r engine/tests/clients/requirements.txt failed; the DMOJ and Socket.IO tests need it" >&2
fi

# The fuzz targets (fuzz/README.md) run under AFL++ through cargo-afl on
# the stable toolchain: the cargo subcommand from crates.io, then AFL++
# itself, built from the source the crate bundles (needs make and a C
# compiler) into ~/.local/share/afl.rs, once per Rust version.
if ! cargo afl --version >/dev/null 2>&1; then
  cargo install cargo-afl --locked --version 0.18.2 ||
    echo "setup: cargo install cargo-afl failed; the fuzz smoke in scripts/test.sh needs it" >&2
fi
if cargo afl --version >/dev/null 2>&1; then
  afl_home="${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$(rustc -V | cut -d' ' -f2)"
  if ! compgen -G "$afl_home*/afl.rs-*/afl/bin/afl-fuzz" >/dev/null; then
    cargo afl config --build ||
      echo "setup: cargo afl config --build failed; the fuzz smoke in scripts/test.sh needs it" >&2
  fi
fi

# What `cargo test --workspace` runs, built as it builds it (the test
# profile, opt-level 1: a plain `cargo build --all-targets` would be a
# second debug build of every crate that the test step cannot reuse), and
# the server as `cargo run --release` builds it. The bench scripts build
# their own release binaries (`cargo build --release -p ... `).
cargo test --workspace --no-run
cargo build --release
