#!/usr/bin/env bash
# The second of the README's two commands, and what .ci/run calls: installs
# what the tests need (scripts/setup.sh), checks formatting and lints, then
# runs every test of every crate (all of them, reporting every failure,
# not only the first). Stops at the first step that fails.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --no-fail-fast
