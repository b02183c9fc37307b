#!/usr/bin/env bash
# Chaos matrix of the compose stack, under load, in a compose project of its
# own (removed again at the end, also when a check fails).
#
# A client stores messages as fast as its pipeline allows (2 KB each, so a
# small disk fills quickly) through the head node to four data nodes, while
# each fault below is injected and healed in turn:
#
#   docker kill, docker stop, docker pause, docker network disconnect of a
#   data node; docker kill of the head node and its restart; a data node
#   whose file system fills up (a 2 MiB ext4 image, loop-mounted; SKIP
#   without root or loop devices); one data node killed and started 20
#   times in a row.
#
# After each fault, `datanode audit` compares every acknowledgement the
# client logged with every data node's data.txt (Jepsen-style: lost,
# duplicated, stored but unacknowledged). For each row the table gives
# lost messages, messages with fewer or more copies than wanted, messages
# written twice in one data file, client errors, the detection time (fault to
# eviction, or head kill to the next acknowledgement), and the head node's
# memory and open descriptors before and after. Any lost message fails the
# run, and so does a leak: more than 20 MB or 50 descriptors more after a
# fault than before it.
#
# Prints `SKIP: ...` and exits 0 when no Docker engine is reachable.
#
# Environment:
#   CHAOS_BUILD=1         0: use the images already built (docker/tests/e2e.sh builds them)
#   CHAOS_KEEP_LOGS=0     1: keep the log folder (its path is printed)
#   CHAOS_TIME_BUDGET=420 seconds the run may take after the build
#   CHAOS_FLAPS=20        kill/start cycles of the flapping node
#   REPLICAS=2            copies per message (the head node's --replicas and
#                         the audit's)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"

CHAOS_BUILD=${CHAOS_BUILD:-1}
CHAOS_KEEP_LOGS=${CHAOS_KEEP_LOGS:-0}
CHAOS_TIME_BUDGET=${CHAOS_TIME_BUDGET:-420}
CHAOS_FLAPS=${CHAOS_FLAPS:-20}
export REPLICAS=${REPLICAS:-2}
IMAGE_PREFIX=${IMAGE_PREFIX:-msgstore-}
IMAGE_TAG=${IMAGE_TAG:-latest}

NAME=chaos
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
require_docker_or_skip
setup_project

export PING_INTERVAL=1s PING_TIMEOUT=500ms HEARTBEAT_INTERVAL=250ms
export SUSPECT_AFTER=1s HUNG_GRACE=1s ACK_TIMEOUT=2s NO_NODE_WAIT=2s
export CLIENT_INTERVAL=1ms CLIENT_PIPELINE=8
CLIENT_MESSAGE=$(head -c 2000 /dev/zero | tr '\0' 'x')
ROWS=()
WATCHDOG=
FULL_DIR=
FULL_IMG=

cleanup() {
    local rc=$?
    set +e
    [[ -n $WATCHDOG ]] && kill "$WATCHDOG" 2>/dev/null
    docker rm -f "${P}datanode4" "${P}client" >/dev/null 2>&1
    teardown_project "$rc"
    if [[ -n $FULL_DIR ]]; then
        umount "$FULL_DIR" 2>/dev/null
        rm -f "$FULL_IMG"
    fi
    if [[ $CHAOS_KEEP_LOGS == 1 ]]; then
        echo "log files kept in $LOGS_DIR"
    else
        rm -rf "$LOGS_DIR"
    fi
    if ((rc == 0)); then
        echo "chaos: $PASSED passed, 0 failed"
    else
        echo "chaos: failed (exit $rc) after ${SECONDS}s"
        echo "chaos: $PASSED passed, 1 failed"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'fail "interrupted or over the time budget"' INT TERM

if [[ $CHAOS_BUILD == 1 ]]; then
    log "building static binaries and images"
    docker/build.sh all
fi
start_watchdog "$CHAOS_TIME_BUDGET"

# ------------------------------------------------------------------ helpers
DATANODE_IMAGE=$IMAGE_PREFIX"datanode:"$IMAGE_TAG
errors() { count 'Servidor recibio: ERROR' "$CLIENT_LOG"; }
acks() { count 'mensaje: recibido' "$CLIENT_LOG"; }

# The head node's resident memory (MB) and open descriptors, from /proc.
head_usage() {
    local pid
    pid=$(docker inspect --format '{{.State.Pid}}' "${P}headnode")
    local kb fds
    kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status")
    fds=$(find "/proc/$pid/fd" -mindepth 1 -maxdepth 1 | wc -l)
    awk -v kb="$kb" -v fds="$fds" 'BEGIN { printf "%.1f %d", kb / 1024, fds }'
}

# `datanode audit` over the client log and every data directory, run from
# the data node image so nothing else is needed on the host. Copies are
# counted by key against REPLICAS; too few copies are reported, not failed
# (a copy a failed node held is not made again).
audit() {
    docker run --rm --network none --user "$HOST_UID:$HOST_GID" -v "$LOGS_DIR:/logs:ro" \
        "$DATANODE_IMAGE" audit --replicas "$REPLICAS" --client-log /logs/client/registro_cliente.txt \
        /logs/datanode1 /logs/datanode2 /logs/datanode3 /logs/datanode4
}

field() { # KEY AUDIT_LINE
    sed -n "s/.*\\b$1=\\([0-9]*\\).*/\\1/p" <<<"$2"
}

wait_acks_grow() { # SECONDS: more acknowledgements than now within SECONDS
    local before deadline=$((SECONDS + $1))
    before=$(acks)
    while (($(acks) <= before + 10)); do
        ((SECONDS < deadline)) || return 1
        sleep 0.2
    done
}

LAST_LOST=0 LAST_UNDER=0 LAST_OVER=0 LAST_DUP=0 LAST_ERRORS=0
# row NAME DETECTION USAGE_BEFORE: audits, checks for loss and leaks, and
# adds a line to the table.
row() {
    local name=$1 detection=$2 before=$3 after line lost under over dup errors
    sleep 1
    after=$(head_usage)
    line=$(audit | head -n 1) || true
    [[ $line == acknowledged=* ]] || fail "$name: audit failed: $line"
    lost=$(field lost "$line")
    under=$(field under_replicated "$line")
    over=$(field over_replicated "$line")
    dup=$(field duplicated "$line")
    errors=$(errors)
    ((lost == 0)) || fail "$name: $lost acknowledged messages lost ($line)"
    (($(field phantom_holders "$line") == 0)) || fail "$name: answers naming nodes without their id ($line)"
    (($(field keys_with_two_ids "$line") == 0)) || fail "$name: keys stored under two ids ($line)"
    (($(field mismatched_copies "$line") == 0)) || fail "$name: copies of one id that differ ($line)"
    local rss_before fds_before rss_after fds_after
    read -r rss_before fds_before <<<"$before"
    read -r rss_after fds_after <<<"$after"
    if [[ $name != "head node killed and restarted" ]]; then
        awk -v a="$rss_after" -v b="$rss_before" 'BEGIN { exit !(a - b <= 20) }' \
            || fail "$name: head node memory grew from $rss_before to $rss_after MB"
        ((fds_after - fds_before <= 50)) \
            || fail "$name: head node descriptors grew from $fds_before to $fds_after"
    fi
    ROWS+=("| $name | $((lost - LAST_LOST)) | $((under - LAST_UNDER)) | $((over - LAST_OVER)) | $((dup - LAST_DUP)) | $((errors - LAST_ERRORS)) | $detection | $rss_before → $rss_after MB | $fds_before → $fds_after |")
    LAST_LOST=$lost LAST_UNDER=$under LAST_OVER=$over LAST_DUP=$dup LAST_ERRORS=$errors
    ok "$name: detection $detection; $line"
}

# evict NODE REGEX: waits for the eviction line of NODE after $SKIP, prints
# the time since $T0.
eviction_ms() {
    local line
    line=$(wait_for "$HB" " $1 .*$2" 30 "$SKIP") || fail "$1 was not evicted ($2) within 30 s"
    log "  $line" >&2
    echo "$(delay_ms "$T0" "$line") ms"
}

rejoin() { # NODE
    wait_for "$HB" " $1 .*joined" 30 "$SKIP" >/dev/null || fail "$1 did not rejoin within 30 s"
    wait_acks_grow 20 || fail "messages stopped flowing after $1 came back"
}

# ------------------------------------------------------------------ the stack
log "starting the head node, three data nodes and a loaded client"
"${DC[@]}" up -d headnode datanode1 datanode2 datanode3 \
    || fail "the head node did not become healthy, or a data node did not start"

for n in 1 2 3; do
    wait_for "$HB" " datanode$n .*joined" 30 >/dev/null || fail "datanode$n did not join"
done
CLIENT_IMAGE=$IMAGE_PREFIX"client:"$IMAGE_TAG
docker run -d --name "${P}client" --hostname client --network "$NETWORK_NAME" \
    --user "$HOST_UID:$HOST_GID" --cap-drop ALL --security-opt no-new-privileges:true \
    -e SERVER=headnode:5000 -e INTERVAL="$CLIENT_INTERVAL" -e PIPELINE="$CLIENT_PIPELINE" \
    -e MESSAGE="$CLIENT_MESSAGE" -e LOG_DIR=/logs/client -e RUST_LOG=info \
    -v "$LOGS_DIR:/logs" "$CLIENT_IMAGE" store >/dev/null
wait_for "$CLIENT_LOG" 'mensaje: recibido' 30 >/dev/null || fail "no acknowledged message within 30 s"
wait_acks_grow 20 || fail "the client is not getting acknowledgements"
ok "stack up under load ($(acks) acknowledged so far)"

# ------------------------------------------------------------------ faults
before=$(head_usage); SKIP=$(lines "$HB"); T0=$(now_ms)
docker kill "${P}datanode1" >/dev/null
detection=$(eviction_ms datanode1 'connection lost.*eliminado')
docker start "${P}datanode1" >/dev/null; rejoin datanode1
row "docker kill" "$detection" "$before"

before=$(head_usage); SKIP=$(lines "$HB"); T0=$(now_ms)
docker stop -t 10 "${P}datanode2" >/dev/null &
stopper=$!
detection=$(eviction_ms datanode2 'left the cluster, eliminado')
wait "$stopper"
docker start "${P}datanode2" >/dev/null; rejoin datanode2
row "docker stop (drained, left)" "$detection" "$before"

before=$(head_usage); SKIP=$(lines "$HB"); T0=$(now_ms)
docker pause "${P}datanode3" >/dev/null
detection=$(eviction_ms datanode3 'hung.*eliminado')
docker unpause "${P}datanode3" >/dev/null; rejoin datanode3
row "docker pause (hung)" "$detection" "$before"

before=$(head_usage); SKIP=$(lines "$HB"); T0=$(now_ms)
docker network disconnect "$NETWORK_NAME" "${P}datanode1"
detection=$(eviction_ms datanode1 'no disponible, eliminado')
docker network connect "$NETWORK_NAME" "${P}datanode1"; rejoin datanode1
row "network disconnect (unreachable)" "$detection" "$before"

before=$(head_usage); SKIP=$(lines "$HB"); T0=$(now_ms)
acked_before=$(acks)
docker kill "${P}headnode" >/dev/null
docker start "${P}headnode" >/dev/null
deadline=$((SECONDS + 60))
while (($(acks) <= acked_before)); do
    ((SECONDS < deadline)) || fail "no acknowledgement within 60 s of restarting the head node"
    sleep 0.1
done
detection="$(($(now_ms) - T0)) ms to the next ack"
for n in 1 2 3; do
    wait_for "$HB" " datanode$n .*joined" 30 "$SKIP" >/dev/null \
        || fail "datanode$n did not rejoin the restarted head node"
done
row "head node killed and restarted" "$detection" "$before"

# A fourth data node keeps its data on a 2 MiB file system of its own.
if [[ $(id -u) == 0 ]] && command -v mkfs.ext4 >/dev/null; then
    FULL_IMG=$(mktemp "${TMPDIR:-/tmp}/msgstore-full.XXXXXX")
    FULL_DIR=$LOGS_DIR/datanode4
    mkdir -p "$FULL_DIR"
    truncate -s 2M "$FULL_IMG"
    if mkfs.ext4 -q -F -O ^has_journal "$FULL_IMG" && mount -o loop "$FULL_IMG" "$FULL_DIR"; then
        chown "$HOST_UID:$HOST_GID" "$FULL_DIR"
    else
        log "cannot loop-mount a small file system here; the full-disk row is skipped"
        rm -f "$FULL_IMG"
        FULL_DIR= FULL_IMG=
    fi
fi
if [[ -n $FULL_DIR ]]; then
    before=$(head_usage); SKIP=$(lines "$HB"); T0=$(now_ms)
    docker run -d --name "${P}datanode4" --hostname datanode4 --network "$NETWORK_NAME" \
    --user "$HOST_UID:$HOST_GID" --cap-drop ALL --security-opt no-new-privileges:true \
    -e CLUSTER_TOKEN -e HEADNODE=headnode:5000 -e NODE_ID=datanode4 -e DATA_DIR=/logs/datanode4 \
    -e LOG_DIR=/logs/datanode4-log -v "$LOGS_DIR:/logs" "$DATANODE_IMAGE" >/dev/null
    wait_for "$HB" " datanode4 .*joined" 30 "$SKIP" >/dev/null || fail "datanode4 did not join"
    detection=$(eviction_ms datanode4 'storage failure.*eliminado')
    for _ in $(seq 50); do
        state=$(docker inspect --format '{{.State.Status}} {{.State.ExitCode}}' "${P}datanode4")
        [[ $state == exited* ]] && break
        sleep 0.2
    done
    [[ $state == "exited 1" ]] || fail "the data node with a full disk should exit 1, not: $state"
    grep -q "No space left on device" "$LOGS_DIR"/datanode4-log/*.txt \
        || fail "the full data node did not say why in its log"
    wait_acks_grow 20 || fail "messages stopped flowing after the disk filled"
    row "full disk (ENOSPC)" "$detection after it joined" "$before"
    docker rm -f "${P}datanode4" >/dev/null
else
    ROWS+=("| full disk | SKIP: needs root, mkfs.ext4 and a loop device | | | | | |")
fi

before=$(head_usage); SKIP=$(lines "$HB")
total=0
for ((i = 1; i <= CHAOS_FLAPS; i++)); do
    flap_skip=$(lines "$HB"); T0=$(now_ms)
    docker kill "${P}datanode2" >/dev/null
    line=$(wait_for "$HB" ' datanode2 .*eliminado' 30 "$flap_skip") || fail "flap $i: no eviction"
    total=$((total + $(delay_ms "$T0" "$line")))
    flap_skip=$(lines "$HB")
    docker start "${P}datanode2" >/dev/null
    wait_for "$HB" ' datanode2 .*joined' 30 "$flap_skip" >/dev/null || fail "flap $i: no rejoin"
done
wait_acks_grow 20 || fail "messages stopped flowing after the flapping"
row "a node flapping $CHAOS_FLAPS times" "mean $((total / CHAOS_FLAPS)) ms" "$before"

docker stop -t 5 "${P}client" >/dev/null 2>&1
final=$(audit) || fail "final audit: $final"
log "final audit: $(head -n 1 <<<"$final")"

echo "---- chaos matrix (client: pipeline $CLIENT_PIPELINE, 2 KB messages; 4 data nodes, $REPLICAS copies each)"
echo "| fault | lost | under-replicated | over-replicated | twice on one node | client errors | detection | head RSS | head fds |"
echo "|---|---|---|---|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"
