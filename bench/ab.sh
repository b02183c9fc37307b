#!/usr/bin/env bash
# A/B benchmark of two builds of the message store, on loopback, in one run.
#
#   bench/ab.sh --a DIR --b DIR [--rounds N] [--duration SECS]
#
# DIR holds a build's release binaries (headnode, datanode, client). Each
# round starts, for each build in turn (the order alternates between
# rounds), a fresh cluster of a head node and 3 data nodes (--fsync batch)
# with 1 copy, then with 2 copies, and runs that build's `client bench` at
# 50x64 and 50x1 (connections x messages in flight) against it. It prints
# the median msgs/s of each build per scenario and their ratio B/A, so the
# two are compared under the same machine load, never against figures
# from another day.
#
# Options:
#   --a DIR, --b DIR    the two builds (required)
#   --rounds N          rounds (default 5)
#   --duration SECS     length of each measured run (default 5; 1 s warm-up)
#   -h, --help          this text
#
# Every process started here is stopped on exit, on Ctrl-C and on TERM; the
# whole run is capped by BENCH_TIME_LIMIT seconds (default 1800).

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

A_DIR="" B_DIR="" ROUNDS=5 DURATION=5
PAYLOAD="numero random: 42"

usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --a) A_DIR="$2"; shift ;;
        --b) B_DIR="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done
[ -n "$A_DIR" ] && [ -n "$B_DIR" ] || { usage >&2; die "--a and --b are required"; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a positive number"
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "--duration wants whole seconds"
for dir in "$A_DIR" "$B_DIR"; do
    for b in headnode datanode client; do
        [ -x "$dir/$b" ] || die "missing binary: $dir/$b"
    done
done

BENCH_DIR="$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/msgstore-ab.XXXXXX")" || die "cannot create a temporary directory"
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap 'rc=$?; cleanup; rm -rf "$BENCH_DIR"; exit $rc' EXIT
raise_fd_limit 65536
start_watchdog "${BENCH_TIME_LIMIT:-1800}"

# use_build A|B: the binaries start_cluster and run_ours use.
use_build() {
    local dir
    [ "$1" = A ] && dir="$A_DIR" || dir="$B_DIR"
    HEADNODE="$dir/headnode" DATANODE="$dir/datanode" CLIENT="$dir/client"
}

# RESULTS lines: "<build> <copies> <scenario> <msgs/s>"
RESULTS="$BENCH_DIR/results"
: >"$RESULTS"

log "A: $A_DIR"
log "B: $B_DIR"
log "$ROUNDS rounds of ${DURATION}s runs in $BENCH_DIR; load at start $(cut -d' ' -f1-3 /proc/loadavg)"
for ((round = 1; round <= ROUNDS; round++)); do
    if ((round % 2)); then order=(A B); else order=(B A); fi
    for build in "${order[@]}"; do
        use_build "$build"
        for copies in 1 2; do
            name="r${round}${build}${copies}"
            start_cluster "$name" batch "$copies" || die "build $build's cluster did not start"
            hp_var="HP_$name"
            for sc in 50x64 50x1; do
                c="${sc%x*}" p="${sc#*x}"
                if run_ours "${!hp_var}" store "$c" "$p" "$DURATION" 1 "$BENCH_DIR/$name-$sc.json"; then
                    echo "$build $copies $sc $R_RATE" >>"$RESULTS"
                else
                    die "build $build, $copies copies, $sc: $R_ERR"
                fi
            done
            stop_cluster "$name"
        done
    done
done

echo
printf '%-7s %-7s %14s %14s %8s   (median of %d rounds; each round alternates the order)\n' \
    copies scenario "A msgs/s" "B msgs/s" "B/A" "$ROUNDS"
for copies in 1 2; do
    for sc in 50x64 50x1; do
        a=$(awk -v c="$copies" -v s="$sc" '$1 == "A" && $2 == c && $3 == s { print $4 }' "$RESULTS" | sort -n)
        b=$(awk -v c="$copies" -v s="$sc" '$1 == "B" && $2 == c && $3 == s { print $4 }' "$RESULTS" | sort -n)
        med_a=$(awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }' <<<"$a")
        med_b=$(awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }' <<<"$b")
        printf '%-7s %-7s %14s %14s %8s   A %s | B %s\n' "$copies" "$sc" "$(fmt_int "${med_a%.*}")" \
            "$(fmt_int "${med_b%.*}")" "$(awk -v a="$med_a" -v b="$med_b" 'BEGIN { printf "%.2fx", b / a }')" \
            "$(tr '\n' ' ' <<<"$a")" "$(tr '\n' ' ' <<<"$b")"
    done
done
