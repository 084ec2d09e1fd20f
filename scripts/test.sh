#!/usr/bin/env bash
# The second of the README's two commands, and what .ci/run calls: installs
# what the tests need (scripts/setup.sh), checks formatting and lints, then
# runs every test of every crate (all of them, reporting every failure,
# not only the first), then a bounded fuzz smoke: every fuzz target for
# FUZZ_SMOKE_SECONDS (default 20) under AFL++ (fuzz/README.md). Stops at
# the first step that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
fuzz/run.sh smoke "${FUZZ_SMOKE_SECONDS:-20}"
