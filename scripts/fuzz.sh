#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for a bounded time from the committed seed corpus
# (fuzz/corpus/<target>/), as scripts/test.sh does in CI. docs/fuzzing.md explains the targets,
# the seeds and a longer run.
#
#   scripts/fuzz.sh                       every target, BUILDMESH_FUZZ_SECONDS (default 20) each
#   scripts/fuzz.sh wire_decode nar_read  only these
#
# Environment:
#   BUILDMESH_FUZZ_SECONDS   seconds per target (default 20)
#   BUILDMESH_FUZZ_JOBS      parallel fuzzing processes per target (default 1)
#   BUILDMESH_FUZZ_TARGET_DIR  cargo target dir of the fuzz build (default: outside the repo,
#                            ${XDG_CACHE_HOME:-$HOME/.cache}/buildmesh/fuzz-target; never the
#                            workspace's target/)
#   BUILDMESH_FUZZ_TOOLCHAIN nightly | stable (default: nightly when rustup has it). Nightly builds
#                            with AddressSanitizer; stable builds with RUSTC_BOOTSTRAP=1 and
#                            `--sanitizer none` (coverage-guided, panics and overflows still
#                            caught, no memory-error detection: the crates forbid unsafe code).
# A crash stops the script with its input saved under $work/artifacts/<target>/ and the command
# that replays it; fix the cause and keep the input as fuzz/corpus/<target>/regression-<name>.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${BUILDMESH_FUZZ_SECONDS:-20}"
jobs="${BUILDMESH_FUZZ_JOBS:-1}"
target_dir="${BUILDMESH_FUZZ_TARGET_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/buildmesh/fuzz-target}"

# The largest input worth trying per target: the parser's own limit (or a little above it), so
# that inputs above libFuzzer's default 4 KiB are tried where they can be valid.
declare -A max_len=(
  [wire_decode]=65536       # MAX_MESSAGE_SIZE is 63 KiB
  [revision_header]=65536   # a gossip message
  [manifest_decode]=262144  # manifests are large; 256 KiB keeps runs fast
  [drv_parse]=131072
  [nar_read]=65536          # the target's NarLimits allow 1 MiB; 64 KiB keeps runs fast
  [narinfo_parse]=16384
  [submit_body]=65536
  [rpc_decode]=131072
  [intoto_statement]=36864  # MAX_STATEMENT_LEN is 32 KiB
)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz.sh: installing cargo-fuzz" >&2
  cargo install cargo-fuzz --locked
fi

toolchain="${BUILDMESH_FUZZ_TOOLCHAIN:-}"
if [[ -z "$toolchain" ]]; then
  if command -v rustup >/dev/null 2>&1 && rustup toolchain list | grep -q '^nightly'; then
    toolchain=nightly
  else
    toolchain=stable
  fi
fi
fuzz=(cargo)
flags=(--debug-assertions --target-dir "$target_dir")
case "$toolchain" in
  nightly) fuzz+=(+nightly fuzz) ;;
  stable)
    # cargo-fuzz passes -Z flags (coverage instrumentation); RUSTC_BOOTSTRAP lets stable take them.
    export RUSTC_BOOTSTRAP=1
    if command -v rustup >/dev/null 2>&1; then fuzz+=(+stable); fi
    fuzz+=(fuzz)
    flags+=(--sanitizer none)
    ;;
  *) echo "fuzz.sh: BUILDMESH_FUZZ_TOOLCHAIN must be nightly or stable" >&2; exit 2 ;;
esac

if [[ $# -gt 0 ]]; then targets=("$@"); else mapfile -t targets < <("${fuzz[@]}" list --fuzz-dir fuzz); fi

work="$(mktemp -d "${TMPDIR:-/tmp}/buildmesh-fuzz.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fuzz.sh: building ${#targets[@]} targets ($toolchain) in $target_dir" >&2
start=$SECONDS
if [[ $# -eq 1 ]]; then
  "${fuzz[@]}" build --fuzz-dir fuzz "${flags[@]}" "$1"
else
  # `cargo fuzz build` takes one target or builds them all.
  "${fuzz[@]}" build --fuzz-dir fuzz "${flags[@]}"
fi
echo "fuzz.sh: built in $((SECONDS - start)) s" >&2

for t in "${targets[@]}"; do
  seeds="fuzz/corpus/$t"
  if [[ ! -d "$seeds" ]] || [[ -z "$(ls -A "$seeds")" ]]; then
    echo "fuzz.sh: no seed corpus in $seeds (tests/tests/fuzz_seeds.rs writes it)" >&2
    exit 1
  fi
  len="${max_len[$t]:-4096}"
  mkdir -p "$work/corpus/$t" "$work/artifacts/$t"
  echo "fuzz.sh: $t for ${seconds}s (max_len $len, $(ls "$seeds" | wc -l) seeds)" >&2
  # New inputs go to the scratch corpus (first directory); the committed seeds are only read.
  parallel=()
  if [[ "$jobs" -gt 1 ]]; then parallel=(-jobs="$jobs" -workers="$jobs"); fi
  if ! "${fuzz[@]}" run --fuzz-dir fuzz "${flags[@]}" "$t" "$work/corpus/$t" "$seeds" -- \
      -max_total_time="$seconds" -max_len="$len" -timeout=10 -rss_limit_mb=2048 \
      "${parallel[@]}" -print_final_stats=1 \
      -artifact_prefix="$work/artifacts/$t/" >"$work/$t.log" 2>&1; then
    tail -n 40 "$work/$t.log" >&2
    keep="$(mktemp -d "${TMPDIR:-/tmp}/buildmesh-fuzz-crash.XXXXXX")"
    cp -r "$work/artifacts/$t" "$keep/"
    echo "fuzz.sh: $t FAILED; the input is in $keep/$t/. Replay it with:" >&2
    echo "  ${fuzz[*]} run --fuzz-dir fuzz ${flags[*]} $t $keep/$t/<file>" >&2
    echo "then fix the cause and keep the input as fuzz/corpus/$t/regression-<name>." >&2
    exit 1
  fi
  grep -E '^(stat::number_of_executed_units|stat::new_units_added)' "$work/$t.log" | tr '\n' ' ' >&2 || true
  echo >&2
done
echo "fuzz.sh: ${#targets[@]} targets fuzzed, no crash" >&2
