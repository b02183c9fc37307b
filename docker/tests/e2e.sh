#!/usr/bin/env bash
# End-to-end test of the compose stack, in a compose project of its own
# (own container names, network and log folder), removed again at the end,
# also when a check fails.
#
#   Activity 1 (echo): the echo client gets its echoes; 100 clients are
#     served and the 101st is refused with `ERROR server full (100
#     connections)`; a log folder that is not writable gives a one-line error.
#   Activity 2 (store): a client sends at a high rate through the head node
#     to three data nodes, then
#     - `docker kill` one data node: heartbeat_server.txt records its
#       eviction within 6 s of the kill, and the client saw no error;
#     - REPAIR_AFTER (2 s here) later, the head node's repair pass gives the
#       messages it held their second copy again;
#     - `docker start` it: it rejoins;
#     - `docker pause` another: evicted as hung within the configured
#       timings, while messages keep flowing;
#     - `docker network disconnect` the third: evicted as unreachable;
#     - every message the client logged as acknowledged is in the data.txt
#       of every node its answer names (`datanode1+datanode3 , mensaje:
#       recibido <id>`), and each of those is a known data node; and
#       `datanode audit` agrees by id and key (no lost id, no phantom
#       holder, no key with two ids, no mismatched copies; every count
#       printed).
#
# Prints `SKIP: ...` and exits 0 when no Docker engine is reachable.
#
# Environment:
#   E2E_PARTS="echo store"   which activities to test
#   E2E_BUILD=1              0: use the images already built
#   E2E_KEEP_LOGS=0          1: keep the log folder (its path is printed)
#   E2E_TIME_BUDGET=280      seconds the test may take after the build
#   E2E_PING_INTERVAL=1s E2E_PING_TIMEOUT=500ms E2E_HEARTBEAT_INTERVAL=250ms
#   E2E_SUSPECT_AFTER=1s E2E_HUNG_GRACE=1s E2E_ACK_TIMEOUT=2s
#   E2E_CLIENT_INTERVAL=1ms E2E_CLIENT_PIPELINE=16   the high-rate client
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

E2E_PARTS=${E2E_PARTS:-echo store}
E2E_BUILD=${E2E_BUILD:-1}
E2E_KEEP_LOGS=${E2E_KEEP_LOGS:-0}
E2E_TIME_BUDGET=${E2E_TIME_BUDGET:-280}

NAME=e2e
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"

# ------------------------------------------------------------------ skip?
require_docker_or_skip

# ------------------------------------------------------------------ setup
setup_project
command -v python3 >/dev/null || fail "python3 is needed for the connection-limit and acknowledgement checks"
export PING_INTERVAL=${E2E_PING_INTERVAL:-1s}
export PING_TIMEOUT=${E2E_PING_TIMEOUT:-500ms}
export HEARTBEAT_INTERVAL=${E2E_HEARTBEAT_INTERVAL:-250ms}
export SUSPECT_AFTER=${E2E_SUSPECT_AFTER:-1s}
export HUNG_GRACE=${E2E_HUNG_GRACE:-1s}
export ACK_TIMEOUT=${E2E_ACK_TIMEOUT:-2s}
export REPAIR_AFTER=${E2E_REPAIR_AFTER:-2s}
export CLIENT_INTERVAL=${E2E_CLIENT_INTERVAL:-1ms}
export CLIENT_PIPELINE=${E2E_CLIENT_PIPELINE:-16}
export ECHO_INTERVAL=200ms
export ECHO_MAX_CONNECTIONS=100
SUMMARY=()
WATCHDOG=

cleanup() {
    local rc=$?
    set +e
    [[ -n $WATCHDOG ]] && kill "$WATCHDOG" 2>/dev/null
    teardown_project "$rc"
    if [[ $E2E_KEEP_LOGS == 1 ]]; then
        echo "log files kept in $LOGS_DIR"
    else
        rm -rf "$LOGS_DIR"
    fi
    if ((rc == 0)); then
        echo "e2e: all checks passed in ${SECONDS}s"
        echo "e2e: $PASSED passed, 0 failed"
    else
        echo "e2e: failed (exit $rc) after ${SECONDS}s"
        echo "e2e: $PASSED passed, 1 failed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted or over the time budget"' INT TERM

# ------------------------------------------------------------------ helpers
acks() { count 'mensaje: recibido' "$CLIENT_LOG"; }
errors() { count 'Servidor recibio: ERROR' "$CLIENT_LOG"; }

wait_acks_above() { # N SECONDS
    local deadline=$((SECONDS + $2))
    while (($(acks) <= $1)); do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

# ------------------------------------------------------------------ build
if [[ $E2E_BUILD == 1 ]]; then
    log "building static binaries and images"
    docker/build.sh all
fi
BUILD_SECONDS=$SECONDS
for bin in echo-server client headnode datanode; do
    image=${IMAGE_PREFIX:-msgstore-}$bin:${IMAGE_TAG:-latest}
    size=$(docker image inspect --format '{{.Size}}' "$image") \
        || fail "image $image missing (run docker/build.sh)"
    ((size < 15000000)) || fail "image $image is $size bytes, over 15 MB"
    SUMMARY+=("$(awk -v i="$image" -v s="$size" 'BEGIN { printf "image %s: %.1f MB", i, s / 1e6 }')")
done

# Bounded from here on: a watchdog ends the test (cleanup included).
start_watchdog "$E2E_TIME_BUDGET"

# ------------------------------------------------------------------ Activity 1
test_echo() {
    log "Activity 1: echo server and echo client"
    "${DC[@]}" up -d echo-server echo-client
    local echo_log=$LOGS_DIR/echo-client/registro_cliente.txt deadline=$((SECONDS + 30))
    while (($(count 'Servidor recibio: numero random' "$echo_log") < 3)); do
        ((SECONDS < deadline)) || fail "echo client logged fewer than 3 echoes within 30 s"
        sleep 0.2
    done
    ok "echo client got its echoes: $(grep -m1 'Servidor recibio' "$echo_log")"

    local owner
    owner=$(stat -c %u "$echo_log")
    [[ $owner == "$HOST_UID" ]] || fail "log file owned by uid $owner, expected $HOST_UID"
    ok "log files land in the host folder, owned by uid $HOST_UID"

    # The echo client holds a connection; stop it so the server's 100 are free.
    "${DC[@]}" stop -t 3 echo-client >/dev/null 2>&1
    local ip
    ip=$(ip_of "${P}echo-server")
    [[ -n $ip ]] || fail "no IP address for ${P}echo-server"
    python3 docker/tests/conn_limit.py "$ip" 5000 100 | sed 's/^/    /' \
        || fail "connection-limit check failed"
    ok "101st connection refused with 'ERROR server full (100 connections)'"

    # A log folder the process cannot write: one clear line, exit code 1.
    local out rc=0
    out=$(docker run --rm --network none --user "$HOST_UID:$HOST_GID" \
        -v "$LOGS_DIR:/logs:ro" "${IMAGE_PREFIX:-msgstore-}echo-server:${IMAGE_TAG:-latest}" \
        --log-dir /logs/readonly 2>&1) || rc=$?
    [[ $rc == 1 && $out == *"cannot write logs"* && $out != *panicked* ]] \
        || fail "read-only log folder: expected exit 1 and 'cannot write logs', got exit $rc: $out"
    ok "read-only log folder gives: $out"
    "${DC[@]}" stop -t 3 echo-server >/dev/null 2>&1
}

# ------------------------------------------------------------------ Activity 2
test_store() {
    log "Activity 2: head node and three data nodes (ping ${PING_INTERVAL}, suspect after ${SUSPECT_AFTER}, hung grace ${HUNG_GRACE})"
    "${DC[@]}" up -d headnode datanode1 datanode2 datanode3 \
        || fail "the head node did not become healthy, or a data node did not start"
    local n
    for n in 1 2 3; do
        wait_for "$HB" " datanode$n .*joined" 20 >/dev/null \
            || fail "datanode$n did not join within 20 s"
    done
    ok "datanode1..3 joined"

    local t0 first
    t0=$(now_ms)
    "${DC[@]}" up -d --no-deps client
    first=$(wait_for "$CLIENT_LOG" 'mensaje: recibido' 20) || fail "no acknowledged message within 20 s"
    SUMMARY+=("client start -> first acknowledged message: $(delay_ms "$t0" "$first") ms")
    wait_acks_above 200 30 || fail "fewer than 200 acknowledged messages after 30 s"
    ok "client running at a high rate ($(acks) acknowledged so far, ${CLIENT_INTERVAL} interval, pipeline ${CLIENT_PIPELINE})"
    (($(errors) == 0)) || fail "client logged $(errors) ERROR replies before any failure was injected"

    # --- kill -> eviction within 6 s, no error for the client
    local skip t line ms before rskip
    skip=$(lines "$HB")
    t=$(now_ms)
    rskip=$(lines "$LOGS_DIR/headnode/registro_server.txt")
    docker kill "${P}datanode1" >/dev/null
    line=$(wait_for "$HB" ' datanode1 .*eliminado' 10 "$skip") \
        || fail "no eviction of datanode1 in heartbeat_server.txt within 10 s of docker kill"
    ms=$(delay_ms "$t" "$line")
    log "evicted: $line"
    ((ms <= 6000)) || fail "datanode1 evicted ${ms} ms after the kill (limit 6000 ms)"
    SUMMARY+=("docker kill -> eviction: $ms ms")
    before=$(acks)
    wait_acks_above $((before + 20)) 10 || fail "messages stopped flowing after datanode1 was killed"
    (($(errors) == 0)) || fail "client logged $(errors) ERROR replies around the kill: $(grep -m3 'Servidor recibio: ERROR' "$CLIENT_LOG")"
    ok "eviction after $ms ms; messages keep flowing; the client saw no error"

    # --- REPAIR_AFTER later, the messages datanode1 held get their copy again
    local head_log=$LOGS_DIR/headnode/registro_server.txt
    line=$(wait_for "$head_log" 'repair started [(]dataNode datanode1 gone' $(($(dur_ms "$REPAIR_AFTER") / 1000 + 15)) "$rskip") \
        || fail "no repair pass for datanode1 within REPAIR_AFTER ($REPAIR_AFTER) + 15 s of its eviction"
    # Passes run one at a time, and the one the head node runs
    # REPAIR_AFTER after its own start may end after the kill: the end
    # wanted is the first after this pass's start.
    rskip=$(awk -v skip="$rskip" 'NR > skip && /repair started [(]dataNode datanode1 gone/ { print NR; exit }' "$head_log")
    # A pass checks only messages below the tail's floor (the lowest id
    # still on its way) while clients write; what it leaves goes to a follow-up
    # pass REPAIR_AFTER later ("the rest ... in 2s"). A client that started
    # just before the kill leaves it all to the follow-up.
    local passes=0
    while :; do
        line=$(wait_for "$head_log" 'repair (done|stopped)' 30 "$rskip") || fail "the repair pass did not end within 30 s"
        rskip=$(awk -v skip="$rskip" 'NR > skip && /repair (done|stopped)/ { print NR; exit }' "$head_log")
        passes=$((passes + 1))
        line=${line#*INFO }
        line=${line%% checked=*}
        log "repair: $line"
        [[ $line =~ repair\ done.*\ ([0-9]+)\ copied ]] && ((BASH_REMATCH[1] > 0)) && break
        [[ $line == *"the rest (after"* ]] && ((passes < 4)) \
            || fail "the repair pass copied nothing: $line"
    done
    ok "repair gave ${BASH_REMATCH[1]} messages their second copy again after datanode1's loss ($passes passes)"
    SUMMARY+=("docker kill -> repair pass: $line")

    # --- start -> rejoin
    skip=$(lines "$HB")
    t=$(now_ms)
    docker start "${P}datanode1" >/dev/null
    line=$(wait_for "$HB" ' datanode1 .*joined' 20 "$skip") || fail "datanode1 did not rejoin within 20 s of docker start"
    ok "rejoined after $(delay_ms "$t" "$line") ms: $line"
    SUMMARY+=("docker start -> rejoin: $(delay_ms "$t" "$line") ms")

    # --- pause -> evicted as hung within the configured timings
    local limit errors_before
    limit=$(($(dur_ms "$SUSPECT_AFTER") + $(dur_ms "$HUNG_GRACE") + $(dur_ms "$PING_INTERVAL") + 1000))
    errors_before=$(errors)
    skip=$(lines "$HB")
    t=$(now_ms)
    docker pause "${P}datanode2" >/dev/null
    line=$(wait_for "$HB" ' datanode2 .*eliminado' $((limit / 1000 + 10)) "$skip") \
        || fail "paused datanode2 was not evicted"
    ms=$(delay_ms "$t" "$line")
    log "evicted: $line"
    [[ $line == *hung* ]] || fail "paused datanode2 was evicted, but not as hung: $line"
    ((ms <= limit)) || fail "paused datanode2 evicted as hung after $ms ms; limit suspect-after + hung-grace + ping-interval + 1 s = $limit ms"
    before=$(acks)
    wait_acks_above $((before + 20)) 10 || fail "messages stopped flowing while datanode2 was paused"
    ok "hung after $ms ms (limit $limit ms); messages keep flowing; client errors meanwhile: $(($(errors) - errors_before))"
    SUMMARY+=("docker pause -> eviction as hung: $ms ms (client errors meanwhile: $(($(errors) - errors_before)))")
    docker unpause "${P}datanode2" >/dev/null

    # --- network disconnect -> evicted as unreachable
    limit=$((2 * $(dur_ms "$PING_INTERVAL") + $(dur_ms "$PING_TIMEOUT") + 1000))
    errors_before=$(errors)
    skip=$(lines "$HB")
    t=$(now_ms)
    docker network disconnect "$NETWORK_NAME" "${P}datanode3"
    line=$(wait_for "$HB" ' datanode3 .*eliminado' $((limit / 1000 + 10)) "$skip") \
        || fail "disconnected datanode3 was not evicted"
    ms=$(delay_ms "$t" "$line")
    log "evicted: $line"
    [[ $line == *"no disponible"* ]] || fail "disconnected datanode3 was evicted, but not as unreachable: $line"
    ((ms <= limit)) || fail "disconnected datanode3 evicted after $ms ms; limit 2 x ping-interval + ping-timeout + 1 s = $limit ms"
    before=$(acks)
    wait_acks_above $((before + 20)) 10 || fail "messages stopped flowing after datanode3 was disconnected"
    ok "unreachable after $ms ms (limit $limit ms); messages keep flowing; client errors meanwhile: $(($(errors) - errors_before))"
    SUMMARY+=("docker network disconnect -> eviction as unreachable: $ms ms (client errors meanwhile: $(($(errors) - errors_before)))")
    docker network connect "$NETWORK_NAME" "${P}datanode3"

    # --- every acknowledged message is stored, by every node that acknowledged it
    "${DC[@]}" stop -t 5 client >/dev/null 2>&1
    python3 - "$CLIENT_LOG" "$LOGS_DIR" datanode1 datanode2 datanode3 <<'EOF' || fail "acknowledged messages missing from data.txt (see above)"
import glob, os, re, sys
client_log, logs, known = sys.argv[1], sys.argv[2], set(sys.argv[3:])
# `<node>[+<node>...] , mensaje: recibido <id>`, then ` key=<client>/<seq>`.
ack = re.compile(r"Servidor recibio: (\S+) , mensaje: recibido (\S+)")
acked = {}
unknown = []
for line in open(client_log, errors="replace"):
    m = ack.search(line)
    if m:
        holders = m.group(1).split("+")
        unknown += [(m.group(2), h) for h in holders if h not in known]
        acked[m.group(2)] = holders
stored = {}
for path in glob.glob(os.path.join(logs, "*", "data.txt")):
    node = os.path.basename(os.path.dirname(path))
    for line in open(path, errors="replace"):
        # `[<id>] mensaje:` (older records) or `[<id>] crc32c=<hex> mensaje:`,
        # with any other `key=value` fields before `mensaje:`.
        m = re.match(r"[^\[]* - \[([^\]]+)\] (?:[a-z0-9_]+=\S* )*mensaje: ", line)
        if m:
            stored.setdefault(m.group(1), set()).add(node)
missing = [i for i in acked if i not in stored]
elsewhere = [i for i in acked if i in stored and not set(acked[i]) <= stored[i]]
print(f"    {len(acked)} acknowledged, {len(stored)} stored message ids, "
      f"{len(missing)} acknowledged but not stored, {len(elsewhere)} not stored by every node named in the ack, "
      f"{len(unknown)} acks naming an unknown node")
for i in (missing + elsewhere)[:5]:
    print(f"    e.g. {i} (acknowledged by {'+'.join(acked[i])}, stored by {sorted(stored.get(i, []))})")
for i, h in unknown[:5]:
    print(f"    e.g. {i} acknowledged by {h!r}, not one of {sorted(known)}")
if not acked:
    print("    no acknowledged message found in the client log")
sys.exit(1 if missing or elsewhere or unknown or not acked else 0)
EOF
    ok "every acknowledged message is in the data.txt of every node that acknowledged it"
    # The same by key as well as by id, with every count printed: each
    # answer's id under its key on every node it names, one id per key,
    # copies that agree (fails on lost, phantom holders, two ids,
    # mismatched copies).
    audit_clean "datanode audit by id" -v "$LOGS_DIR:/c:ro" -- /c/datanode1 /c/datanode2 /c/datanode3
}

for part in $E2E_PARTS; do
    case $part in
        echo) test_echo ;;
        store) test_store ;;
        *) fail "unknown part '$part' in E2E_PARTS (use echo, store)" ;;
    esac
done

echo "---- summary (build ${BUILD_SECONDS}s, tests $((SECONDS - BUILD_SECONDS))s)"
printf '  %s\n' "${SUMMARY[@]}"
