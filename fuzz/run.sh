#!/usr/bin/env bash
# Builds and runs ringcast's fuzz targets with AFL++ (cargo-afl), on the
# stable toolchain. See fuzz/README.md.
#
#   fuzz/run.sh build                 instrumented release build of every target
#   fuzz/run.sh run TARGET EXECS      fuzz TARGET for about EXECS executions
#   fuzz/run.sh smoke SECONDS         every target for SECONDS each (CI)
#   fuzz/run.sh minimize TARGET       replace corpus/TARGET by afl-cmin's set
#
# The instrumented build goes to $CARGO_TARGET_DIR/afl (default
# target/afl at the repository root): its RUSTFLAGS differ from a normal
# build's, so it gets its own directory. Findings go to $FUZZ_OUT (default
# that directory's afl-out), one directory per target. `run` and `smoke`
# exit 1 when a target found a crash or a hang, naming the files.
set -euo pipefail
cd "$(dirname "$0")"

TARGETS=(frame_decoder handshake backend_http rpc dmoj deflate)
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/../target}/afl"
export CARGO_TARGET_DIR
OUT="${FUZZ_OUT:-$CARGO_TARGET_DIR/afl-out}"
BIN="$CARGO_TARGET_DIR/release"
# A shared machine: no CPU governor or core-dump tuning, no pinning to a
# core another process may be using, plain log output.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1
export AFL_NO_AFFINITY=1 AFL_NO_UI=1 AFL_QUIET=1

build() {
  if ! cargo afl --version >/dev/null 2>&1; then
    echo "fuzz: cargo-afl is not installed (scripts/setup.sh installs it:" \
      "cargo install cargo-afl --locked && cargo afl config --build)" >&2
    exit 1
  fi
  cargo afl build --release --bins
}

known() {
  local t
  for t in "${TARGETS[@]}"; do [ "$t" = "$1" ] && return 0; done
  echo "unknown target '$1' (known: ${TARGETS[*]})" >&2
  exit 2
}

# fuzz TARGET AFL-LIMIT-ARGS...: one afl-fuzz run from the committed
# corpus, then a check of its findings.
fuzz() {
  local target=$1
  shift
  known "$target"
  rm -rf "${OUT:?}/$target"
  mkdir -p "$OUT"
  # -t 1000: an input taking over a second is a hang.
  cargo afl fuzz -i "corpus/$target" -o "$OUT/$target" -t 1000 "$@" \
    -- "$BIN/$target" >"$OUT/$target.log" 2>&1 || {
    echo "afl-fuzz failed for $target; its log:" >&2
    tail -30 "$OUT/$target.log" >&2
    return 1
  }
  report "$target"
}

report() {
  local target=$1 stats="$OUT/$1/default/fuzzer_stats"
  if [ ! -f "$stats" ]; then
    echo "$target: no fuzzer_stats in $OUT/$target" >&2
    return 1
  fi
  local execs crashes hangs secs
  execs=$(awk -F' *: *' '$1=="execs_done"{print $2}' "$stats")
  crashes=$(awk -F' *: *' '$1=="saved_crashes"{print $2}' "$stats")
  hangs=$(awk -F' *: *' '$1=="saved_hangs"{print $2}' "$stats")
  secs=$(awk -F' *: *' '$1=="run_time"{print $2}' "$stats")
  echo "$target: $execs executions in ${secs} s, $crashes crashes, $hangs hangs," \
    "corpus $(awk -F' *: *' '$1=="corpus_count"{print $2}' "$stats") inputs"
  if [ "$crashes" != 0 ] || [ "$hangs" != 0 ]; then
    echo "$target: findings in $OUT/$target/default/crashes and .../hangs:" >&2
    ls "$OUT/$target/default/crashes" "$OUT/$target/default/hangs" >&2
    return 1
  fi
}

case "${1:-}" in
build) build ;;
run)
  [ $# -eq 3 ] || { echo "usage: $0 run TARGET EXECS" >&2; exit 2; }
  fuzz "$2" -E "$3"
  ;;
smoke)
  [ $# -eq 2 ] || { echo "usage: $0 smoke SECONDS" >&2; exit 2; }
  build
  failed=0
  for t in "${TARGETS[@]}"; do fuzz "$t" -V "$2" || failed=1; done
  exit "$failed"
  ;;
minimize)
  [ $# -eq 2 ] || { echo "usage: $0 minimize TARGET" >&2; exit 2; }
  known "$2"
  queue="$OUT/$2/default/queue"
  [ -d "$queue" ] || { echo "no queue in $queue: run the target first" >&2; exit 1; }
  rm -rf "$OUT/$2.cmin"
  # The shell afl-cmin: the Python one finds no coverage in persistent-mode
  # Rust targets here.
  afl_bin=$(dirname "$(compgen -G "${XDG_DATA_HOME:-$HOME/.local/share}/afl.rs/rustc-$(rustc -V | cut -d' ' -f2)*/afl.rs-*/afl/bin/afl-cmin.bash" | head -1)")
  "$afl_bin/afl-cmin.bash" -i "$queue" -o "$OUT/$2.cmin" -t 1000 -- "$BIN/$2" >"$OUT/$2.cmin.log" 2>&1
  if ! compgen -G "$OUT/$2.cmin/*" >/dev/null; then
    echo "$2: afl-cmin kept nothing (see $OUT/$2.cmin.log); corpus left as it was" >&2
    exit 1
  fi
  rm -rf "corpus/$2"
  mkdir -p "corpus/$2"
  i=0
  for f in "$OUT/$2.cmin"/*; do
    i=$((i + 1))
    cp "$f" "corpus/$2/$(printf 'min-%05d' "$i")"
  done
  echo "$2: corpus minimised to $i inputs"
  ;;
*)
  sed -n '2,13p' "$0" >&2
  exit 2
  ;;
esac
