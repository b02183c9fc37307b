# Helpers of bench/run.sh: process bookkeeping, the cluster, the echo server,
# Redis, the measured runs and the report. Sourced, not run.

# ------------------------------------------------------------ messages ---

log()  { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
warn() { printf '[bench %s] warning: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die()  { printf '[bench] error: %s\n' "$*" >&2; exit 1; }

# ------------------------------------------------------------ processes ---

PIDS=()          # every long-running process started here
WATCHDOG_PID=""
CLEANED=0

track() { PIDS+=("$1"); }

untrack() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# True while PID runs (a zombie child does not count).
alive() {
    local state
    [ -r "/proc/$1/stat" ] || return 1
    state="$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)"
    [ -n "$state" ] && [ "$state" != Z ]
}

# stop_pid PID [GRACE_SECONDS]: TERM, then KILL after the grace, then reap.
stop_pid() {
    local pid="$1" grace="${2:-5}" i
    [ -n "$pid" ] || return 0
    if alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null
        for ((i = 0; i < grace * 10; i++)); do alive "$pid" || break; sleep 0.1; done
        if alive "$pid"; then kill -KILL "$pid" 2>/dev/null; sleep 0.1; fi
    fi
    wait "$pid" 2>/dev/null
    untrack "$pid"
}

cleanup() {
    [ "$CLEANED" = 1 ] && return 0
    CLEANED=1
    trap "" INT TERM
    local p i
    # Newest first: clients, then data nodes, then head nodes and servers.
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
        p="${PIDS[i]}"
        alive "$p" && kill -TERM "$p" 2>/dev/null
    done
    for ((i = 0; i < 50; i++)); do
        local any=0
        for p in "${PIDS[@]}"; do alive "$p" && any=1; done
        [ "$any" = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do
        alive "$p" && kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    PIDS=()
    if [ -n "$WATCHDOG_PID" ]; then
        kill -TERM "$WATCHDOG_PID" 2>/dev/null
        wait "$WATCHDOG_PID" 2>/dev/null
    fi
    if [ -n "${BENCH_DIR:-}" ] && [ -d "$BENCH_DIR" ]; then
        if [ "${KEEP:-0}" = 1 ]; then
            log "kept $BENCH_DIR"
        else
            rm -rf "$BENCH_DIR"
        fi
    fi
}

# run_bounded LIMIT OUT ERR CMD...: runs CMD under `timeout LIMIT` with stdout to OUT
# and stderr to ERR, in the background so that a signal reaches the traps at
# once (cleanup then stops CMD too); returns CMD's status.
run_bounded() {
    local limit="$1" out="$2" err="$3" pid rc
    shift 3
    timeout -k 5 "$limit" "$@" >"$out" 2>"$err" </dev/null &
    pid=$!
    track "$pid"
    wait "$pid"
    rc=$?
    untrack "$pid"
    return "$rc"
}

# A background timer that TERMs this script once the time limit is reached;
# the TERM trap then stops everything. Each foreground step has its own
# timeout too, so the trap runs soon after.
start_watchdog() {
    local limit="$1" main=$$
    (
        trap 'kill "$sp" 2>/dev/null; wait "$sp" 2>/dev/null; exit 0' TERM
        sleep "$limit" &
        sp=$!
        wait "$sp"
        printf '[bench] error: time limit of %ss reached; stopping\n' "$limit" >&2
        kill -TERM "$main" 2>/dev/null
    ) &
    WATCHDOG_PID=$!
}

raise_fd_limit() {
    local want="$1" hard
    ulimit -Hn "$want" 2>/dev/null
    hard="$(ulimit -Hn)"
    if [ "$hard" != unlimited ] && [ "$hard" -lt "$want" ]; then want="$hard"; fi
    ulimit -n "$want" 2>/dev/null || warn "cannot raise the open-file limit to $want"
    FD_LIMIT="$(ulimit -n)"
}

# ---------------------------------------------------------------- ports ---

USED_PORTS=" "

# Sets PORT to a free TCP port on 127.0.0.1, outside the ephemeral range (the
# idle clients take thousands of ephemeral ports).
pick_port() {
    local lo hi base span p i
    read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || { lo=32768; hi=60999; }
    if [ "$lo" -gt 12000 ]; then base=10000; span=$((lo - 10000)); else base=$((hi + 1)); span=$((65000 - hi)); fi
    [ "$span" -gt 100 ] || { base=20000; span=10000; }
    for ((i = 0; i < 500; i++)); do
        p=$((base + (RANDOM * 32768 + RANDOM) % span))
        case "$USED_PORTS" in *" $p "*) continue ;; esac
        if [ -z "$(ss -Htan "( sport = :$p )" 2>/dev/null)" ]; then
            USED_PORTS+="$p "
            PORT="$p"
            return 0
        fi
    done
    return 1
}

# wait_listen PORT PID SECONDS
wait_listen() {
    local port="$1" pid="$2" secs="$3" i
    for ((i = 0; i < secs * 10; i++)); do
        alive "$pid" || return 1
        [ -n "$(ss -Hltn "( sport = :$port )" 2>/dev/null)" ] && return 0
        sleep 0.1
    done
    return 1
}

# --------------------------------------------------------------- cluster ---

# start_cluster NAME FSYNC REPLICAS: head node and 3 data nodes, each message
# on REPLICAS of them (all fsynced before the answer); sets HP_<NAME>,
# HN_PID_<NAME>, DN_PIDS_<NAME>.
start_cluster() {
    local name="$1" fsync="$2" replicas="$3" dir="$BENCH_DIR/cluster-$1" hp hpid i pid dn_pids=() n
    mkdir -p "$dir"
    pick_port || return 1
    hp="$PORT"
    # A throw-away cluster token, passed in the environment (never as an argument).
    local token
    token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
    CLUSTER_TOKEN=$token RUST_LOG=warn "$HEADNODE" --listen "127.0.0.1:$hp" --http-listen off --log-dir "$dir/headnode" \
        --replicas "$replicas" >"$dir/headnode.out" 2>&1 &
    hpid=$!
    track "$hpid"
    if ! wait_listen "$hp" "$hpid" 15; then
        warn "head node $name did not listen on $hp; see $dir/headnode.out"
        tail -5 "$dir/headnode.out" >&2
        return 1
    fi
    for i in 1 2 3; do
        # The stats target: one line at shutdown with the records and fsyncs.
        CLUSTER_TOKEN=$token RUST_LOG=warn,datanode::stats=info "$DATANODE" --headnode "127.0.0.1:$hp" --node-id "dn$i" \
            --data-dir "$dir/dn$i" --fsync "$fsync" >"$dir/dn$i.out" 2>&1 &
        pid=$!
        track "$pid"
        dn_pids+=("$pid")
    done
    # Registered once each data node holds its connection to the head node.
    for ((i = 0; i < 150; i++)); do
        n=0
        for pid in "${dn_pids[@]}"; do
            alive "$pid" || { warn "a data node exited:"; tail -n 3 "$dir"/dn*.out >&2; return 1; }
            ss -Htnp state established "( dport = :$hp )" 2>/dev/null | grep -q "pid=$pid," && n=$((n + 1))
        done
        [ "$n" = 3 ] && break
        sleep 0.1
    done
    if [ "$n" != 3 ]; then
        warn "only $n of 3 data nodes connected to head node $name"
        return 1
    fi
    sleep 1  # registration and the first heartbeat round
    printf -v "HP_$name" '%s' "$hp"
    printf -v "HN_PID_$name" '%s' "$hpid"
    eval "DN_PIDS_$name=(\"\${dn_pids[@]}\")"
    log "cluster $name up: head node 127.0.0.1:$hp, 3 data nodes --fsync $fsync, $replicas copies per message"
}

# fsync_profile NAME SECONDS: after stop_cluster NAME, the data nodes'
# shutdown lines as "dn1 R records/s, F fsyncs/s (M per fsync); ...".
fsync_profile() {
    local dir="$BENCH_DIR/cluster-$1" secs="$2" i line out=""
    for i in 1 2 3; do
        line="$(grep -h 'written by this process' "$dir/dn$i.out" 2>/dev/null | tail -1)"
        out+="$(awk -v l="$line" -v s="$secs" -v n="dn$i" 'BEGIN {
            r = l; sub(/.*records=/, "", r); sub(/ .*/, "", r)
            f = l; sub(/.*fsyncs=/, "", f); sub(/ .*/, "", f)
            if (l == "" || s <= 0) { printf "%s -; ", n; exit }
            printf "%s %.0f records/s, %.0f fsyncs/s (%.1f records per fsync); ", n, r / s, f / s, (f > 0 ? r / f : 0)
        }')"
    done
    printf '%s' "${out%; }"
}

stop_cluster() {
    local name="$1" hv="HN_PID_$1" dv="DN_PIDS_$1[@]" pid
    for pid in ${!dv-}; do stop_pid "$pid" 5; done
    [ -n "${!hv-}" ] && stop_pid "${!hv}" 5
    return 0
}

start_echo() {
    local dir="$BENCH_DIR/echo"
    mkdir -p "$dir"
    pick_port || return 1
    EP="$PORT"
    RUST_LOG=warn "$ECHO" --listen "127.0.0.1:$EP" --log-dir "$dir" --max-connections 100 \
        >"$dir/echo.out" 2>&1 &
    ECHO_PID=$!
    track "$ECHO_PID"
    wait_listen "$EP" "$ECHO_PID" 15
}

stop_echo() { [ -n "${ECHO_PID:-}" ] && stop_pid "$ECHO_PID" 5; ECHO_PID=""; }

# ---------------------------------------------------------------- Redis ---

ensure_redis() {
    if command -v redis-server >/dev/null && command -v redis-benchmark >/dev/null \
        && command -v redis-cli >/dev/null; then
        return 0
    fi
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        warn "redis-server / redis-tools are missing and cannot be installed here (needs root and apt-get)"
        return 1
    fi
    log "installing redis-server and redis-tools"
    timeout 600 apt-get update -qq >"$BENCH_DIR/apt.log" 2>&1 \
        && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq redis-server redis-tools \
            >>"$BENCH_DIR/apt.log" 2>&1 \
        || { warn "apt-get failed; see the tail of its log:"; tail -5 "$BENCH_DIR/apt.log" >&2; return 1; }
}

start_redis() {
    local dir="$BENCH_DIR/redis" i
    mkdir -p "$dir"
    pick_port || return 1
    RP="$PORT"
    REDIS_VERSION="$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
    # No config file: everything it writes (AOF, log) is under $dir.
    redis-server --port "$RP" --bind 127.0.0.1 --dir "$dir" --logfile "$dir/redis.log" \
        --daemonize no --appendonly yes --appendfsync always --save '' \
        --auto-aof-rewrite-percentage 0 >"$dir/redis.out" 2>&1 &
    REDIS_PID=$!
    track "$REDIS_PID"
    for ((i = 0; i < 100; i++)); do
        alive "$REDIS_PID" || break
        [ "$(redis-cli -h 127.0.0.1 -p "$RP" ping 2>/dev/null)" = PONG ] && {
            log "Redis $REDIS_VERSION up on 127.0.0.1:$RP (appendfsync always)"
            return 0
        }
        sleep 0.1
    done
    warn "Redis did not start; see $dir/redis.log"
    tail -5 "$dir/redis.log" "$dir/redis.out" >&2 2>/dev/null
    return 1
}

stop_redis() { [ -n "${REDIS_PID:-}" ] && stop_pid "$REDIS_PID" 10; REDIS_PID=""; }

rcli() { timeout 30 redis-cli -h 127.0.0.1 -p "$RP" "$@"; }

# csv_field FILE COLUMN: the value of COLUMN (by its header name) in the
# first data row of redis-benchmark's --csv output.
csv_field() {
    awk -F'","' -v col="$2" '
        NR == 1 { gsub(/^"|"$/, ""); for (i = 1; i <= NF; i++) idx[$i] = i; next }
        NR == 2 { gsub(/^"|"$/, ""); if (col in idx) print $(idx[col]); exit }
    ' "$1"
}

# run_redis CONNS PIPELINE SECONDS OUT: XADD with the same payload; the
# request count is sized from a short probe so the run lasts about SECONDS.
# Sets R_RATE, R_P50, R_P99 (µs), R_MSGS, or R_ERR.
run_redis() {
    local c="$1" p="$2" secs="$3" out="$4" n0 n rate0 len
    R_RATE="" R_P50="" R_P99="" R_MSGS="" R_ERR=""
    n0=$((c * p * 100)); [ "$n0" -lt 1000 ] && n0=1000
    rcli del s >/dev/null
    if ! run_bounded 120 "$out.probe" "$out.err" redis-benchmark -h 127.0.0.1 -p "$RP" -c "$c" -P "$p" -n "$n0" --csv \
        XADD s '*' f "$PAYLOAD"; then
        R_ERR="redis-benchmark (probe) failed: $(tail -1 "$out.err")"; return 1
    fi
    rate0="$(csv_field "$out.probe" rps)"
    n="$(awk -v r="$rate0" -v s="$secs" -v lo="$n0" 'BEGIN { n = int(r * s); if (n < lo) n = lo; if (n > 5000000) n = 5000000; print n }')"
    rcli del s >/dev/null
    if ! run_bounded $((secs * 6 + 60)) "$out" "$out.err" redis-benchmark -h 127.0.0.1 -p "$RP" -c "$c" -P "$p" -n "$n" --csv \
        XADD s '*' f "$PAYLOAD"; then
        R_ERR="redis-benchmark failed or timed out: $(tail -1 "$out.err")"; return 1
    fi
    # Every request must have been stored (with -P, redis-benchmark may send
    # up to one pipeline more per connection than -n).
    len="$(rcli xlen s)"
    rcli del s >/dev/null
    if ! [[ "$len" =~ ^[0-9]+$ ]] || [ "$len" -lt "$n" ] || [ "$len" -gt $((n + c * p)) ]; then
        R_ERR="Redis stream holds ${len:-?} entries after $n XADDs"; return 1
    fi
    R_RATE="$(csv_field "$out" rps)"
    R_P50="$(awk -v v="$(csv_field "$out" p50_latency_ms)" 'BEGIN { printf "%.0f", v * 1000 }')"
    R_P99="$(awk -v v="$(csv_field "$out" p99_latency_ms)" 'BEGIN { printf "%.0f", v * 1000 }')"
    R_MSGS="$n"
    if [ -z "$R_RATE" ] || ! awk -v r="$R_RATE" 'BEGIN { exit !(r > 0) }'; then
        R_ERR="no throughput in redis-benchmark's output"; return 1
    fi
    log "  Redis ${c}x$p: $(fmt_int "$R_RATE") msgs/s, p50 ${R_P50} µs, p99 ${R_P99} µs ($n requests)"
}

# ------------------------------------------------------------ our client ---

# json_num FILE KEY: a number from the client's one-line JSON object.
json_num() {
    grep -o "\"$2\"[[:space:]]*:[[:space:]]*[-0-9.eE+]*" "$1" 2>/dev/null | head -1 | sed 's/.*:[[:space:]]*//'
}

# run_ours PORT TARGET CONNS PIPELINE SECONDS WARMUP OUT: `client bench`.
# Sets R_RATE, R_P50, R_P99 (µs), R_MSGS, or R_ERR; fails on any error,
# on a non-zero exit and on zero throughput.
run_ours() {
    local port="$1" target="$2" c="$3" p="$4" secs="$5" warm="$6" out="$7" rc errs
    R_RATE="" R_P50="" R_P99="" R_MSGS="" R_ERR=""
    local args=(--log-dir "$BENCH_DIR/client-logs" bench --server "127.0.0.1:$port" --target "$target"
        --connections "$c" --pipeline "$p" --duration "${secs}s" --message "$PAYLOAD" --json)
    [ "$warm" -gt 0 ] && args+=(--warmup "${warm}s")
    run_bounded $((secs + warm + 60)) "$out" "$out.err" "$CLIENT" "${args[@]}"
    rc=$?
    R_RATE="$(json_num "$out" msgs_per_sec)"
    R_P50="$(json_num "$out" p50_us)"
    R_P99="$(json_num "$out" p99_us)"
    R_MSGS="$(json_num "$out" messages)"
    errs="$(json_num "$out" errors)"
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        R_ERR="client bench timed out"; return 1
    fi
    if [ -z "$R_RATE" ]; then
        R_ERR="no JSON from client bench (exit $rc): $(tail -1 "$out.err")"; return 1
    fi
    if [ -n "$errs" ] && [ "$errs" != 0 ]; then
        R_ERR="$errs errors in $R_MSGS messages"; return 1
    fi
    if [ "$rc" != 0 ]; then
        R_ERR="client bench exited $rc: $(tail -1 "$out.err")"; return 1
    fi
    if ! awk -v r="$R_RATE" 'BEGIN { exit !(r > 0) }'; then
        R_ERR="zero throughput"; return 1
    fi
    R_RATE="$(awk -v r="$R_RATE" 'BEGIN { printf "%.0f", r }')"
    R_P50="$(awk -v v="$R_P50" 'BEGIN { printf "%.0f", v }')"
    R_P99="$(awk -v v="$R_P99" 'BEGIN { printf "%.0f", v }')"
    log "  ours $target ${c}x$p: $(fmt_int "$R_RATE") msgs/s, p50 ${R_P50} µs, p99 ${R_P99} µs ($R_MSGS messages)"
}

# ------------------------------------------------------------- readers ---

# The readers that run beside a write run: a follower, `client tail -f`
# from the first stored message (its lines are counted, at most
# READ_FOLLOW_MAX of them), and `client bench --target get` with
# READ_GET_CONNS connections of READ_GET_PIPELINE request in flight each:
# `get <id>` of the 1000 oldest messages in turn. The head node serves 8
# requests at once (--max-reads) and a reader's requests one after the
# other, so these take at most 5 of the 8, and a latency is one request's
# own (more in flight on one reader would only queue behind each other).
READ_FOLLOW_MAX=50000000
READ_GET_CONNS=4
READ_GET_PIPELINE=1

# start_readers PORT SECONDS WARMUP NAME: starts both readers for a write
# run of WARMUP + SECONDS that starts when this returns (1 s later: the read
# bench first reads its ids while the cluster is idle). Each stops by
# itself: the follower after READ_FOLLOW_MAX lines or its time limit, the
# read bench after its duration; stop_readers ends the follower at once.
start_readers() {
    local port="$1" secs="$2" warm="$3" name="$4" span
    span=$((secs + warm))
    RD_OUT="$BENCH_DIR/$name-get.json" RD_COUNT="$BENCH_DIR/$name-follow.count"
    rm -f "$RD_COUNT"
    # Its stdout goes through `head` to `wc`, not to a file that would
    # compete with the data nodes for the disk.
    timeout -k 5 $((span + 30)) "$CLIENT" --server "127.0.0.1:$port" tail -f --poll 200ms \
        2>"$RD_COUNT.err" </dev/null > >(head -n "$READ_FOLLOW_MAX" | wc -l >"$RD_COUNT") &
    RD_FOLLOW_PID=$!
    track "$RD_FOLLOW_PID"
    RD_START="$(date +%s.%N)"
    timeout -k 5 $((span + 60)) "$CLIENT" --log-dir "$BENCH_DIR/client-logs" bench \
        --server "127.0.0.1:$port" --target get --connections "$READ_GET_CONNS" \
        --pipeline "$READ_GET_PIPELINE" --warmup 1s --duration "${span}s" --json \
        >"$RD_OUT" 2>"$RD_OUT.err" </dev/null &
    RD_GET_PID=$!
    track "$RD_GET_PID"
    sleep 1
}

# stop_readers: ends the follower, waits for the read bench. Sets
# RD_TAIL_LINES and RD_TAIL_RATE (lines per second over the follower's
# life), RD_GET_RATE, RD_GET_P50, RD_GET_P99 (µs), or R_ERR.
stop_readers() {
    local i rc secs errs msgs
    R_ERR="" RD_TAIL_LINES="" RD_TAIL_RATE="" RD_GET_RATE="" RD_GET_P50="" RD_GET_P99=""
    secs="$(awk -v a="$RD_START" -v b="$(date +%s.%N)" 'BEGIN { print b - a }')"
    stop_pid "$RD_FOLLOW_PID" 5
    for ((i = 0; i < 100; i++)); do [ -s "$RD_COUNT" ] && break; sleep 0.1; done
    wait "$RD_GET_PID" 2>/dev/null
    rc=$?
    untrack "$RD_GET_PID"
    RD_TAIL_LINES="$(tr -d ' ' <"$RD_COUNT" 2>/dev/null)"
    if ! [[ "$RD_TAIL_LINES" =~ ^[0-9]+$ ]]; then
        R_ERR="the follower's lines were not counted: $(tail -1 "$RD_COUNT.err" 2>/dev/null)"; return 1
    fi
    if [ "$RD_TAIL_LINES" = 0 ]; then
        R_ERR="the follower printed nothing: $(tail -1 "$RD_COUNT.err" 2>/dev/null)"; return 1
    fi
    RD_TAIL_RATE="$(awk -v n="$RD_TAIL_LINES" -v s="$secs" 'BEGIN { printf "%.0f", n / s }')"
    RD_GET_RATE="$(json_num "$RD_OUT" msgs_per_sec)"
    RD_GET_P50="$(json_num "$RD_OUT" p50_us)"
    RD_GET_P99="$(json_num "$RD_OUT" p99_us)"
    errs="$(json_num "$RD_OUT" errors)" msgs="$(json_num "$RD_OUT" messages)"
    if [ -z "$RD_GET_RATE" ]; then
        R_ERR="no JSON from the read bench (exit $rc): $(tail -1 "$RD_OUT.err")"; return 1
    fi
    if [ -n "$errs" ] && [ "$errs" != 0 ]; then
        R_ERR="read bench: $errs errors in $msgs reads"; return 1
    fi
    if [ "$rc" != 0 ] || ! awk -v r="$RD_GET_RATE" 'BEGIN { exit !(r > 0) }'; then
        R_ERR="read bench exited $rc with $RD_GET_RATE reads/s: $(tail -1 "$RD_OUT.err")"; return 1
    fi
    log "  readers: follower $(fmt_int "$RD_TAIL_RATE") lines/s ($RD_TAIL_LINES lines), get $(fmt_int "$RD_GET_RATE")/s, p50 ${RD_GET_P50} µs, p99 ${RD_GET_P99} µs"
}

# Time of one synchronous 64-byte append on the temporary directory's file
# system (dd with O_DSYNC), in µs: how slow an fdatasync is right now.
fsync_probe_us() {
    local f="$BENCH_DIR/fsync-probe" secs
    secs="$(LC_ALL=C timeout 60 dd if=/dev/zero of="$f" bs=64 count=500 oflag=dsync 2>&1 \
        | sed -n 's/.* copied, \([0-9.]*\) s.*/\1/p')"
    rm -f "$f"
    [ -n "$secs" ] && awk -v s="$secs" 'BEGIN { printf "%.0f", s * 1e6 / 500 }'
}

# cpu_ticks PID: user + system CPU time of PID so far, in clock ticks.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{ print $12 + $13 }'; }

# cpu_snapshot NAME: "pid:ticks ..." for the head node and the data nodes of
# cluster NAME.
cpu_snapshot() {
    local hv="HN_PID_$1" dv="DN_PIDS_$1[@]" pid out=""
    for pid in "${!hv}" ${!dv}; do out+="$pid:$(cpu_ticks "$pid") "; done
    printf '%s' "$out"
}

# cpu_per_message BEFORE AFTER MESSAGES: "head X µs, data nodes Y µs (sum)"
# of CPU per message between two snapshots of one cluster.
cpu_per_message() {
    local before="$1" after="$2" msgs="$3" hz
    hz="$(getconf CLK_TCK 2>/dev/null || echo 100)"
    awk -v b="$before" -v a="$after" -v n="$msgs" -v hz="$hz" 'BEGIN {
        nb = split(b, bs, " "); split(a, as, " ")
        if (n <= 0) { print "-"; exit }
        for (i = 1; i <= nb; i++) {
            split(bs[i], x, ":"); split(as[i], y, ":")
            us = (y[2] - x[2]) * 1e6 / hz / n
            if (i == 1) head = us; else data += us
        }
        printf "head node %.1f µs, data nodes %.1f µs in all", head, data
    }'
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null; }

# measure_idle_rss PORT HEADNODE_PID N: RSS before, with N idle clients open,
# and after they closed. Sets RSS_BEFORE, RSS_AFTER, RSS_CLOSED (kB),
# RSS_OPEN (connections seen), or R_ERR.
measure_idle_rss() {
    local port="$1" hpid="$2" n="$3" out="$BENCH_DIR/idle.out" ipid i r max=0
    R_ERR=""
    if [ "$FD_LIMIT" != unlimited ] && [ "$FD_LIMIT" -lt $((n + 100)) ]; then
        R_ERR="open-file limit $FD_LIMIT is too low for $n connections"; return 1
    fi
    alive "$hpid" || { R_ERR="the head node is gone"; return 1; }
    RSS_BEFORE="$(rss_kb "$hpid")"
    "$CLIENT" --log-dir "$BENCH_DIR/client-logs" idle --server "127.0.0.1:$port" \
        --connections "$n" --hold 120s >"$out" 2>"$out.err" </dev/null &
    ipid=$!
    track "$ipid"
    for ((i = 0; i < 900; i++)); do
        grep -q '^READY' "$out" 2>/dev/null && break
        alive "$ipid" || break
        sleep 0.1
    done
    if ! grep -q '^READY' "$out" 2>/dev/null; then
        R_ERR="client idle did not report READY: $(tail -1 "$out.err")"
        stop_pid "$ipid" 5
        return 1
    fi
    sleep 2
    for ((i = 0; i < 5; i++)); do
        r="$(rss_kb "$hpid")"
        [ -n "$r" ] && [ "$r" -gt "$max" ] && max="$r"
        sleep 0.4
    done
    RSS_AFTER="$max"
    RSS_OPEN="$(ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l)"
    stop_pid "$ipid" 10
    sleep 2
    RSS_CLOSED="$(rss_kb "$hpid")"
    log "  RSS: ${RSS_BEFORE} kB before, ${RSS_AFTER} kB with $RSS_OPEN connections open, ${RSS_CLOSED} kB after closing"
}

# ---------------------------------------------------------------- report ---

fmt_int() {
    [ -n "$1" ] || { printf -- '-'; return; }
    printf '%s' "$(printf '%.0f' "$1")" | sed ':a;s/\([0-9]\)\([0-9]\{3\}\)\($\|,\)/\1,\2\3/;ta'
}
dashes() { printf '%*s' "$1" '' | tr ' ' -; }
or_dash() { [ -n "$1" ] && printf '%s' "$1" || printf -- '-'; }
mb() { awk -v k="$1" 'BEGIN { printf "%.1f MB", k / 1024 }'; }
ratio() {
    # Rounded down, so that a ratio shown as 1.00x is at least 1.
    if [ -n "$1" ] && [ -n "$2" ]; then awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", int(a / b * 100) / 100; else printf "-" }'
    else printf -- '-'; fi
}
# ge A B: A >= B as numbers (false when either is empty).
ge() { [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" 'BEGIN { exit !(a >= b) }'; }

print_report() {
    local cpu sc row note
    cpu="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
    [ -n "$cpu" ] || cpu="$(uname -m)"
    echo
    echo "Loopback benchmark, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "machine: nproc $(nproc), $cpu, Linux $(uname -r), load average at start $LOAD_AT_START"
    echo "ours: head node + 3 data nodes, --replicas 1 and --replicas 2 (--min-replicas all), --fsync batch (acknowledged after fdatasync), RUST_LOG=warn (per-message log lines off)"
    if [ "$REDIS_OK" = 1 ]; then
        echo "Redis $REDIS_VERSION: appendonly yes, appendfsync always, save \"\", auto-aof-rewrite-percentage 0; redis-benchmark XADD s * f <payload>"
    else
        echo "Redis: not run"
    fi
    echo "payload: \"$PAYLOAD\" (${#PAYLOAD} bytes); each run ~${DURATION} s (ours after a 1 s warm-up); latencies in µs"
    echo "ours and Redis alternate, $ROUNDS rounds per scenario, each side's best throughput shown; floor and --fsync never: lowest p50 of $ROUNDS rounds"
    echo "one synchronous 64-byte append (dd oflag=dsync) on the data's file system: $(or_dash "$FSYNC_AT_START") µs at the start, $(or_dash "$FSYNC_AT_END") µs at the end"
    echo
    printf '| %-9s | %6s | %12s | %7s | %7s | %12s | %7s | %7s | %10s |\n' \
        "scenario" "copies" "ours msgs/s" "p50" "p99" "Redis msgs/s" "p50" "p99" "ours/Redis"
    printf '|-----------|%s:|%s:|%s:|%s:|%s:|%s:|%s:|%s:|\n' "$(dashes 7)" "$(dashes 13)" "$(dashes 8)" "$(dashes 8)" \
        "$(dashes 13)" "$(dashes 8)" "$(dashes 8)" "$(dashes 11)"
    local pre copies
    for pre in O T; do
        local -n rate="${pre}_RATE" p50="${pre}_P50" p99="${pre}_P99"
        [ "$pre" = O ] && copies=1 || copies=2
        for sc in "${SCENARIOS[@]}"; do
            printf '| %-9s | %6s | %12s | %7s | %7s | %12s | %7s | %7s | %10s |\n' "$sc" "$copies" \
                "$(fmt_int "${rate[$sc]}")" "$(or_dash "${p50[$sc]}")" "$(or_dash "${p99[$sc]}")" \
                "$(fmt_int "${X_RATE[$sc]}")" "$(or_dash "${X_P50[$sc]}")" "$(or_dash "${X_P99[$sc]}")" \
                "$(ratio "${rate[$sc]}" "${X_RATE[$sc]}")"
        done
        unset -n rate p50 p99
    done
    for sc in "${SCENARIOS[@]}"; do
        [ -n "${O_NOTE[$sc]}" ] && echo "  ours $sc (1 copy) failed: ${O_NOTE[$sc]}"
        [ -n "${T_NOTE[$sc]}" ] && echo "  ours $sc (2 copies) failed: ${T_NOTE[$sc]}"
        [ -n "${X_NOTE[$sc]}" ] && [ "$REDIS_OK" = 1 ] && echo "  Redis $sc failed: ${X_NOTE[$sc]}"
    done
    echo "(scenario = connections x messages in flight per connection; copies = data nodes that fsync each"
    echo " message before it is answered; Redis keeps one copy; ours/Redis = ratio of msgs/s)"
    echo
    echo "data nodes during one 50x64 run (records written and fdatasyncs per second, per node):"
    echo "  1 copy:   $(or_dash "${PROFILE[1]}")"
    echo "  2 copies: $(or_dash "${PROFILE[2]}")"
    echo "CPU per message, best round (user + system time over the run, warm-up included):"
    for sc in "${SCENARIOS[@]}"; do
        echo "  $sc, 1 copy:   $(or_dash "${O_CPU[$sc]}")"
        echo "  $sc, 2 copies: $(or_dash "${T_CPU[$sc]}")"
    done
    echo
    echo "reads beside writes (1 copy, 50x64, best of $ROUNDS rounds each; readers: a client tail -f follower from the"
    echo " first stored message, and client bench --target get, $READ_GET_CONNS connections x $READ_GET_PIPELINE in flight; head node --max-reads 8):"
    if [ -n "$RW_BUSY" ]; then
        echo "  writes alone: $(fmt_int "$RW_ALONE") msgs/s (p99 $RW_ALONE_P99 µs); beside readers: $(fmt_int "$RW_BUSY") msgs/s (p99 $RW_BUSY_P99 µs); ratio $(ratio "$RW_BUSY" "$RW_ALONE")"
        echo "  reads meanwhile: get $(fmt_int "$RD_KEPT_GET") reads/s, p50 $RD_KEPT_P50 µs, p99 $RD_KEPT_P99 µs; follower $(fmt_int "$RD_KEPT_TAIL") messages/s"
    else
        echo "  failed: $RW_NOTE"
    fi
    echo
    if [ -n "$FLOOR_RATE" ]; then
        echo "loopback floor (echo server, 1x1): $(fmt_int "$FLOOR_RATE") msgs/s, p50 $FLOOR_P50 µs, p99 $FLOOR_P99 µs"
    else
        echo "loopback floor (echo server, 1x1): failed: $FLOOR_NOTE"
    fi
    if [ -n "$NEVER_RATE" ]; then
        echo "ours 1x1 with --fsync never: $(fmt_int "$NEVER_RATE") msgs/s, p50 $NEVER_P50 µs, p99 $NEVER_P99 µs; p50 = $(ratio "$NEVER_P50" "$FLOOR_P50") the floor's p50"
    else
        echo "ours 1x1 with --fsync never: failed: $NEVER_NOTE"
    fi
    if [ -n "$RSS_AFTER" ]; then
        echo "head node RSS (VmRSS) with $IDLE_CONNS idle clients: $(mb "$RSS_BEFORE") before, $(mb "$RSS_AFTER") with $RSS_OPEN connections established on its port ($(awk -v a="$RSS_AFTER" -v b="$RSS_BEFORE" -v n="$IDLE_CONNS" 'BEGIN { printf "%.1f kB per connection", (a - b) / n }')), $(mb "$RSS_CLOSED") after they closed"
        [ -z "${RSS_LOADED:-}" ] || echo "head node RSS after carrying the runs above (its deduplication window full): $(mb "$RSS_LOADED")"
    else
        echo "head node RSS with $IDLE_CONNS idle clients: failed: $RSS_NOTE"
    fi
    echo
    echo "targets:"
    target_line "1 copy, 50x64 >= 1.5x Redis always" "$(ratio_ge "${O_RATE[50x64]}" "${X_RATE[50x64]}" 1.5)" \
        "$(ratio "${O_RATE[50x64]}" "${X_RATE[50x64]}")"
    target_line "1 copy, 50x1 >= 1.0x Redis always" "$(ratio_ge "${O_RATE[50x1]}" "${X_RATE[50x1]}" 1)" \
        "$(ratio "${O_RATE[50x1]}" "${X_RATE[50x1]}")"
    target_line "2 copies, 50x64 >= 1.0x Redis always" "$(ratio_ge "${T_RATE[50x64]}" "${X_RATE[50x64]}" 1)" \
        "$(ratio "${T_RATE[50x64]}" "${X_RATE[50x64]}")"
    target_line "2 copies, 50x1 >= 0.7x Redis always" "$(ratio_ge "${T_RATE[50x1]}" "${X_RATE[50x1]}" 0.7)" \
        "$(ratio "${T_RATE[50x1]}" "${X_RATE[50x1]}")"
    target_line "1x1 --fsync never p50 <= 3x loopback echo p50" \
        "$([ -n "$NEVER_P50" ] && [ -n "$FLOOR_P50" ] && ge "$((FLOOR_P50 * 3))" "$NEVER_P50" && echo y)" \
        "$(ratio "$NEVER_P50" "$FLOOR_P50")"
    target_line "$IDLE_CONNS idle clients: head node RSS < 100 MB" \
        "$([ -n "$RSS_AFTER" ] && [ "$RSS_AFTER" -lt 102400 ] && echo y)" \
        "$([ -n "$RSS_AFTER" ] && mb "$RSS_AFTER" || echo -)"
}

# ratio_ge A B MIN: prints y when A / B >= MIN.
ratio_ge() {
    [ -n "$1" ] && [ -n "$2" ] && awk -v a="$1" -v b="$2" -v m="$3" 'BEGIN { exit !(b > 0 && a / b >= m) }' && echo y
}

target_line() { printf '  %-50s %-8s (%s)\n' "$1" "$([ "$2" = y ] && echo met || echo 'NOT met')" "$3"; }
