#!/usr/bin/env bash
# Fuzzes every target for SECONDS_PER_TARGET (default 60) seconds.
#
#   fuzz/run.sh [SECONDS_PER_TARGET]
#
# Each target starts from a throw-away copy of fuzz/corpus/<target>/ and
# fuzz/regressions/<target>/, so inputs the fuzzer discovers never land in
# the repository. A crashing (or hanging) input is copied into
# fuzz/regressions/<target>/ and the script exits 1; commit that file with
# the fix, and `cargo test -p protocol` replays it from then on.
#
# Needs the nightly toolchain; without it the script says SKIP and exits 0.
# Installs cargo-fuzz when it is missing.
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: fuzz/run.sh [SECONDS_PER_TARGET]" >&2
    exit 2
fi

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$fuzz_dir"

if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "SKIP: fuzz: no nightly toolchain (rustup toolchain install nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked >&2
fi

# Build once up front, so a compile error is reported as one, and the time
# budget below is spent fuzzing.
cargo +nightly fuzz build >&2

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Copies the regular, non-hidden files of $1 (if it exists) into $2.
copy_inputs() {
    [[ -d "$1" ]] || return 0
    find "$1" -maxdepth 1 -type f ! -name '.*' -exec cp {} "$2" \;
}

failed=0
for target in $(cargo +nightly fuzz list); do
    corpus="$work/corpus/$target"
    artifacts="$work/artifacts/$target"
    log="$work/$target.log"
    mkdir -p "$corpus" "$artifacts"
    copy_inputs "corpus/$target" "$corpus"
    copy_inputs "regressions/$target" "$corpus"

    started=$SECONDS
    if cargo +nightly fuzz run "$target" "$corpus" -- \
        -max_total_time="$seconds" -timeout=10 -artifact_prefix="$artifacts/" \
        >"$log" 2>&1; then
        # libFuzzer's last line: "Done 123456 runs in 61 second(s)".
        done_line="$(grep -E '^Done [0-9]+ runs in [0-9]+ second' "$log" | tail -n 1 || true)"
        runs="$(awk '{print $2}' <<<"$done_line")"
        took="$(awk '{print $5}' <<<"$done_line")"
        echo "fuzz $target: ${took:-$seconds} s, ${runs:-?} runs, no crash"
        continue
    fi

    failed=1
    took=$((SECONDS - started))
    # Status lines start with "#<runs so far>".
    runs="$(grep -oE '^#[0-9]+' "$log" | tail -n 1 | tr -d '#' || true)"
    found="$(find "$artifacts" -maxdepth 1 -type f | head -n 1)"
    if [[ -z "$found" ]]; then
        tail -n 30 "$log" >&2
        echo "fuzz $target: ${took} s, ${runs:-?} runs, FAILED without a crashing input (log above)"
        continue
    fi
    grep -E -A 8 "panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer" "$log" | head -n 24 >&2 || true
    known=""
    for kept in "corpus/$target"/* "regressions/$target"/*; do
        if [[ -f "$kept" ]] && cmp -s "$found" "$kept"; then
            known="$kept"
        fi
    done
    if [[ -n "$known" ]]; then
        echo "fuzz $target: ${took} s, ${runs:-?} runs, CRASH on a saved input: fuzz/$known"
        echo "  a bug it once caught is back (cargo test -p protocol shows the same failure)"
        continue
    fi
    mkdir -p "regressions/$target"
    saved="regressions/$target/$(basename "$found")"
    cp "$found" "$saved"
    echo "fuzz $target: ${took} s, ${runs:-?} runs, CRASH; input saved as fuzz/$saved"
    echo "  fix the bug, then commit fuzz/$saved as a regression test (cargo test -p protocol replays it)"
done
exit "$failed"
