#!/usr/bin/env bash
# Loopback benchmark of the message store, side by side with Redis Streams.
#
#   bench/run.sh            full run: build, start everything, print one table
#   bench/run.sh --smoke    a few seconds, ours only: 1x1, 10x8, and 10x8 beside
#                           readers must finish with zero errors and non-zero
#                           throughput
#
# Options:
#   --smoke                 see above
#   --no-build              use the binaries already in --bin-dir
#   --bin-dir DIR           where the binaries are (default target/release)
#   --duration SECS         length of each measured run (default 5; smoke 2)
#   --rounds R              alternating rounds per scenario, best kept (default 3)
#   --payload TEXT          message text (default "numero random: 42")
#   --payload-size BYTES    message of BYTES 'x' characters instead of TEXT
#   --idle-connections N    idle clients for the RSS figure (default 10000)
#   --keep                  keep the temporary directory (logs, data, AOF)
#   -h, --help              this text
#
# Environment: CLIENT_BIN, HEADNODE_BIN, DATANODE_BIN, ECHO_BIN override one
# binary each; BENCH_TMP is the parent of the temporary directory (default
# $TMPDIR or /tmp); BENCH_TIME_LIMIT caps the whole run in seconds (default
# 900, smoke 180).
#
# Everything listens on 127.0.0.1 on free ports; every process started here
# is stopped on exit, on Ctrl-C and on TERM. Redis writes only inside the
# temporary directory.

set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"

SMOKE=0
BUILD=1
BIN_DIR="$ROOT/target/release"
DURATION=""
ROUNDS=3
PAYLOAD="numero random: 42"
IDLE_CONNS=10000
KEEP=0

usage() { sed -n '2,/^$/p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; }

while [ $# -gt 0 ]; do
    case "$1" in
        --smoke) SMOKE=1 ;;
        --no-build) BUILD=0 ;;
        --bin-dir) BIN_DIR="$2"; shift ;;
        --duration) DURATION="$2"; shift ;;
        --rounds) ROUNDS="$2"; shift ;;
        --payload) PAYLOAD="$2"; shift ;;
        --payload-size)
            [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--payload-size wants a positive number"
            PAYLOAD="$(head -c "$2" /dev/zero | tr '\0' x)"; shift ;;
        --idle-connections) IDLE_CONNS="$2"; shift ;;
        --keep) KEEP=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
    shift
done
[ -n "$DURATION" ] || { [ "$SMOKE" = 1 ] && DURATION=2 || DURATION=5; }
[[ "$DURATION" =~ ^[1-9][0-9]*$ ]] || die "--duration wants whole seconds"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "--rounds wants a positive number"
case "$PAYLOAD" in *$'\n'*|'') die "the payload must be one non-empty line" ;; esac

if [ "$SMOKE" = 1 ]; then TIME_LIMIT="${BENCH_TIME_LIMIT:-180}"; else TIME_LIMIT="${BENCH_TIME_LIMIT:-900}"; fi

# ---------------------------------------------------------------- set-up ---

BENCH_DIR="$(mktemp -d "${BENCH_TMP:-${TMPDIR:-/tmp}}/msgstore-bench.XXXXXX")" || die "cannot create a temporary directory"
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM
trap 'rc=$?; cleanup; exit $rc' EXIT

# Every process holds many sockets: 10,000 idle clients need as many
# descriptors in the client and in the head node.
raise_fd_limit 65536

if [ "$BUILD" = 1 ]; then
    log "building release binaries"
    (cd "$ROOT" && timeout 1200 cargo build --release -q -p headnode -p datanode -p client -p echo-server) \
        || die "cargo build failed"
fi
HEADNODE="${HEADNODE_BIN:-$BIN_DIR/headnode}"
DATANODE="${DATANODE_BIN:-$BIN_DIR/datanode}"
CLIENT="${CLIENT_BIN:-$BIN_DIR/client}"
ECHO="${ECHO_BIN:-$BIN_DIR/echo-server}"
# The time limit counts from here (the build has its own).
start_watchdog "$TIME_LIMIT"
for b in "$HEADNODE" "$DATANODE" "$CLIENT" "$ECHO"; do
    [ -x "$b" ] || die "missing binary: $b"
done
"$CLIENT" bench --help >/dev/null 2>&1 || die "$CLIENT has no 'bench' subcommand"

# ----------------------------------------------------------------- smoke ---

if [ "$SMOKE" = 1 ]; then
    log "smoke run in $BENCH_DIR"
    start_cluster A batch 2 || die "the cluster did not start"
    passed=0 failed=0
    for sc in 1x1 10x8; do
        c="${sc%x*}" p="${sc#*x}"
        out="$BENCH_DIR/smoke-$sc.json"
        if run_ours "$HP_A" store "$c" "$p" "$DURATION" 0 "$out"; then
            printf 'smoke %-5s ok    %s msgs/s, p50 %s us, p99 %s us, %s messages, 0 errors\n' \
                "$sc" "$(fmt_int "$R_RATE")" "$R_P50" "$R_P99" "$R_MSGS"
            passed=$((passed + 1))
        else
            printf 'smoke %-5s FAIL  %s\n' "$sc" "$R_ERR"
            failed=$((failed + 1))
        fi
    done
    # Reads beside writes, briefly: a follower and a read bench beside 10x8.
    start_readers "$HP_A" "$DURATION" 0 smoke-reads
    if run_ours "$HP_A" store 10 8 "$DURATION" 0 "$BENCH_DIR/smoke-reads.json"; then
        wrote="$(fmt_int "$R_RATE") msgs/s" write_err=""
    else
        wrote="" write_err="$R_ERR"
    fi
    if stop_readers && [ -z "$write_err" ]; then
        printf 'smoke reads ok    10x8 %s beside get %s reads/s (p99 %s us) and a follower (%s lines)\n' \
            "$wrote" "$(fmt_int "$RD_GET_RATE")" "$RD_GET_P99" "$(fmt_int "$RD_TAIL_LINES")"
        passed=$((passed + 1))
    else
        printf 'smoke reads FAIL  %s\n' "${write_err:-$R_ERR}"
        failed=$((failed + 1))
    fi
    echo "smoke: $passed passed, $failed failed"
    [ "$failed" = 0 ]
    exit
fi

# ------------------------------------------------------------- full run ---

log "full run in $BENCH_DIR (each measured run ${DURATION}s)"
LOAD_AT_START="$(cut -d' ' -f1-3 /proc/loadavg)"
FSYNC_AT_START="$(fsync_probe_us)"

REDIS_OK=0
if ensure_redis && start_redis; then REDIS_OK=1; else warn "Redis is unavailable: its columns stay empty"; fi

start_cluster A batch 1 || die "the cluster (--fsync batch, 1 copy) did not start"
start_cluster C batch 2 || die "the cluster (--fsync batch, 2 copies) did not start"

SCENARIOS=(1x1 50x1 50x64)
# O_*: ours with one copy (cluster A); T_*: ours with two copies, both
# fsynced before the answer (cluster C); X_*: Redis.
declare -A O_RATE O_P50 O_P99 O_NOTE O_CPU T_RATE T_P50 T_P99 T_NOTE T_CPU X_RATE X_P50 X_P99 X_NOTE
for sc in "${SCENARIOS[@]}"; do
    O_RATE[$sc]="" O_P50[$sc]="" O_P99[$sc]="" O_NOTE[$sc]="" O_CPU[$sc]=""
    T_RATE[$sc]="" T_P50[$sc]="" T_P99[$sc]="" T_NOTE[$sc]="" T_CPU[$sc]=""
    X_RATE[$sc]="" X_P50[$sc]="" X_P99[$sc]="" X_NOTE[$sc]=""
    [ "$REDIS_OK" = 1 ] || X_NOTE[$sc]="Redis unavailable"
done
# ours_round CLUSTER PREFIX SC ROUND: one measured run of ours; keeps the
# best round's figures (and its CPU per message) in PREFIX_* arrays.
ours_round() {
    local cl="$1" pre="$2" sc="$3" round="$4" hp="HP_$1" before after c p
    c="${sc%x*}" p="${sc#*x}"
    local -n rate="${pre}_RATE" p50="${pre}_P50" p99="${pre}_P99" note="${pre}_NOTE" cpu="${pre}_CPU"
    before="$(cpu_snapshot "$cl")"
    if run_ours "${!hp}" store "$c" "$p" "$DURATION" 1 "$BENCH_DIR/ours-$cl-$sc-$round.json"; then
        after="$(cpu_snapshot "$cl")"
        if ! ge "${rate[$sc]}" "$R_RATE"; then
            rate[$sc]=$R_RATE p50[$sc]=$R_P50 p99[$sc]=$R_P99
            # The 1 s warm-up's messages were stored in the span too, at
            # about the measured rate.
            cpu[$sc]="$(cpu_per_message "$before" "$after" "$(awk -v m="$R_MSGS" -v r="$R_RATE" 'BEGIN { print m + r }')")"
        fi
    else
        note[$sc]="$R_ERR"
        warn "ours ($cl) $sc: $R_ERR"
    fi
}
# Ours (one copy, then two) and Redis alternate, ROUNDS times per scenario;
# each keeps its best round (the machine is shared and noisy), and any round
# with errors fails the scenario.
for sc in "${SCENARIOS[@]}"; do
    c="${sc%x*}" p="${sc#*x}"
    for ((round = 1; round <= ROUNDS; round++)); do
        log "scenario $sc, round $round of $ROUNDS: ours, 1 copy"
        ours_round A O "$sc" "$round"
        log "scenario $sc, round $round of $ROUNDS: ours, 2 copies"
        ours_round C T "$sc" "$round"
        [ "$REDIS_OK" = 1 ] || continue
        log "scenario $sc, round $round of $ROUNDS: Redis"
        if run_redis "$c" "$p" "$DURATION" "$BENCH_DIR/redis-$sc-$round.csv"; then
            if ! ge "${X_RATE[$sc]}" "$R_RATE"; then
                X_RATE[$sc]=$R_RATE X_P50[$sc]=$R_P50 X_P99[$sc]=$R_P99
            fi
        else
            X_NOTE[$sc]="$R_ERR"
            warn "Redis $sc: $R_ERR"
        fi
    done
    # A failed scenario shows no figures.
    [ -z "${O_NOTE[$sc]}" ] || O_RATE[$sc]="" O_P50[$sc]="" O_P99[$sc]=""
    [ -z "${T_NOTE[$sc]}" ] || T_RATE[$sc]="" T_P50[$sc]="" T_P99[$sc]=""
    [ -z "${X_NOTE[$sc]}" ] || X_RATE[$sc]="" X_P50[$sc]="" X_P99[$sc]=""
done
stop_cluster C

# Where the time goes: a fresh cluster per copy count carries one 50x64 run
# and is stopped; each data node's shutdown line gives its records and
# fsyncs, over the run's span (warm-up included).
declare -A PROFILE
for r in 1 2; do
    PROFILE[$r]=""
    start_cluster "P$r" batch "$r" || { PROFILE[$r]="the cluster did not start"; continue; }
    span_start="$(date +%s.%N)" hv="HP_P$r"
    if run_ours "${!hv}" store 50 64 "$DURATION" 1 "$BENCH_DIR/profile-$r.json"; then
        span="$(awk -v a="$span_start" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
        stop_cluster "P$r"
        PROFILE[$r]="$(fsync_profile "P$r" "$span")"
    else
        PROFILE[$r]="$R_ERR"
        stop_cluster "P$r"
    fi
    log "  fsync profile, $r copies: ${PROFILE[$r]}"
done
[ "$REDIS_OK" = 1 ] && stop_redis

# Reads never block writes: 50x64 writes (1 copy) alone, then beside the
# readers (start_readers), on a cluster of their own, alternating ROUNDS
# times; each keeps its best round (and the readers' figures of the round
# kept beside them). The first round alone stores what the readers read.
log "writes alone and beside readers"
RW_ALONE="" RW_ALONE_P99="" RW_BUSY="" RW_BUSY_P99="" RW_NOTE=""
RD_KEPT_GET="" RD_KEPT_P50="" RD_KEPT_P99="" RD_KEPT_TAIL=""
if start_cluster R batch 1; then
    for ((round = 1; round <= ROUNDS; round++)); do
        log "reads beside writes, round $round of $ROUNDS: 50x64 alone"
        if ! run_ours "$HP_R" store 50 64 "$DURATION" 1 "$BENCH_DIR/rw-alone-$round.json"; then
            RW_NOTE="50x64 alone: $R_ERR"; break
        fi
        ge "$RW_ALONE" "$R_RATE" || { RW_ALONE=$R_RATE RW_ALONE_P99=$R_P99; }
        log "reads beside writes, round $round of $ROUNDS: 50x64 beside the readers"
        start_readers "$HP_R" "$DURATION" 1 "rw-$round"
        if ! run_ours "$HP_R" store 50 64 "$DURATION" 1 "$BENCH_DIR/rw-busy-$round.json"; then
            RW_NOTE="50x64 beside readers: $R_ERR"; stop_readers; break
        fi
        busy=$R_RATE busy_p99=$R_P99
        if ! stop_readers; then RW_NOTE="readers: $R_ERR"; break; fi
        if ! ge "$RW_BUSY" "$busy"; then
            RW_BUSY=$busy RW_BUSY_P99=$busy_p99
            RD_KEPT_GET=$RD_GET_RATE RD_KEPT_P50=$RD_GET_P50 RD_KEPT_P99=$RD_GET_P99 RD_KEPT_TAIL=$RD_TAIL_RATE
        fi
    done
    stop_cluster R
else
    RW_NOTE="the cluster did not start"
fi
[ -z "$RW_NOTE" ] || { RW_ALONE="" RW_BUSY=""; warn "reads beside writes: $RW_NOTE"; }

# Loopback floor (one connection, one message in flight, to the echo server)
# and the same 1x1 path through a second cluster without fsync. They
# alternate ROUNDS times; each keeps its round with the lowest p50.
log "loopback floor (echo 1x1) and ours 1x1 with --fsync never"
FLOOR_RATE="" FLOOR_P50="" FLOOR_P99="" FLOOR_NOTE=""
NEVER_RATE="" NEVER_P50="" NEVER_P99="" NEVER_NOTE=""
start_echo || FLOOR_NOTE="the echo server did not start"
start_cluster B never 1 || NEVER_NOTE="the cluster (--fsync never) did not start"
for ((round = 1; round <= ROUNDS; round++)); do
    if [ -z "$FLOOR_NOTE" ]; then
        if run_ours "$EP" echo 1 1 "$DURATION" 1 "$BENCH_DIR/echo-1x1-$round.json"; then
            if [ -z "$FLOOR_P50" ] || [ "$R_P50" -lt "$FLOOR_P50" ]; then
                FLOOR_RATE=$R_RATE FLOOR_P50=$R_P50 FLOOR_P99=$R_P99
            fi
        else
            FLOOR_NOTE="$R_ERR"
        fi
    fi
    if [ -z "$NEVER_NOTE" ]; then
        if run_ours "$HP_B" store 1 1 "$DURATION" 1 "$BENCH_DIR/never-1x1-$round.json"; then
            if [ -z "$NEVER_P50" ] || [ "$R_P50" -lt "$NEVER_P50" ]; then
                NEVER_RATE=$R_RATE NEVER_P50=$R_P50 NEVER_P99=$R_P99
            fi
        else
            NEVER_NOTE="$R_ERR"
        fi
    fi
done
[ -z "$FLOOR_NOTE" ] || { FLOOR_RATE="" FLOOR_P50=""; warn "floor: $FLOOR_NOTE"; }
[ -z "$NEVER_NOTE" ] || { NEVER_RATE="" NEVER_P50=""; warn "fsync never: $NEVER_NOTE"; }
stop_echo
stop_cluster B

# What the runs above left in the head node that carried them: mostly its
# deduplication window, full by now (--dedup-keys, 1,000,000 by default).
RSS_LOADED="$(rss_kb "$HN_PID_A")"
stop_cluster A

# Head node memory with many idle clients, on a head node of its own, so the
# figure is what connections cost.
log "head node RSS with $IDLE_CONNS idle clients"
RSS_BEFORE="" RSS_AFTER="" RSS_OPEN="" RSS_NOTE=""
if start_cluster I never 1; then
    measure_idle_rss "$HP_I" "$HN_PID_I" "$IDLE_CONNS" || { RSS_NOTE="$R_ERR"; warn "RSS: $R_ERR"; }
    stop_cluster I
else
    RSS_NOTE="the cluster for the idle clients did not start"
fi
FSYNC_AT_END="$(fsync_probe_us)"

# ---------------------------------------------------------------- report ---

print_report

# A run of ours with errors is a failed run; unmet targets are only reported.
for sc in "${SCENARIOS[@]}"; do [ -z "${O_NOTE[$sc]}${T_NOTE[$sc]}" ] || exit 1; done
[ -z "$FLOOR_NOTE" ] && [ -z "$NEVER_NOTE" ] && [ -z "$RW_NOTE" ] || exit 1
exit 0
