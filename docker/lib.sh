# Shell pieces the container tests in docker/tests/ share, and
# docker/stack.sh with them: skipping without Docker, a compose project of
# the test's own, log-file waits and timings.
#
# The sourcing script sets NAME (used in log lines and the project name)
# and ROOT before sourcing.

log() { printf '[%s %3ds] %s\n' "$NAME" "$SECONDS" "$*"; }
PASSED=0
ok() {
    PASSED=$((PASSED + 1))
    log "ok: $*"
}
fail() {
    printf '[%s %3ds] FAIL: %s\n' "$NAME" "$SECONDS" "$*" >&2
    exit 1
}

# Exits 0 with `SKIP: ...` when no Docker engine or compose tool is there;
# sets COMPOSE otherwise.
require_docker_or_skip() {
    if ! command -v docker >/dev/null 2>&1; then
        echo "SKIP: $NAME: no docker command, so no Docker engine to test against"
        exit 0
    fi
    if ! timeout 20 docker info >/dev/null 2>&1; then
        echo "SKIP: $NAME: no Docker engine reachable (docker info failed)"
        exit 0
    fi
    if docker compose version >/dev/null 2>&1; then
        COMPOSE=(docker compose)
    elif command -v docker-compose >/dev/null 2>&1; then
        COMPOSE=(docker-compose)
    else
        echo "SKIP: $NAME: a Docker engine is reachable but neither 'docker compose' nor 'docker-compose' is installed"
        exit 0
    fi
}

# A compose project, network and log folder of this test's own; a cluster
# token of its own (in the environment only). Sets PROJECT, P (container
# name prefix), LOGS_DIR, DC (the compose command), HB and CLIENT_LOG.
setup_project() {
    PROJECT=msgstore-$NAME-$$
    P=$PROJECT-
    export CONTAINER_PREFIX=$P NETWORK_NAME=$PROJECT
    # Empty: Docker publishes the head node's HTTP port on a free host
    # port, so this stack never collides with another one's 8080.
    export HEAD_HTTP_PORT=
    LOGS_DIR=$(mktemp -d "${TMPDIR:-/tmp}/msgstore-$NAME.XXXXXX")
    chmod 755 "$LOGS_DIR"
    export LOGS_DIR
    # Containers run as the invoking user, or as 10001 when that is root.
    HOST_UID=$(id -u)
    HOST_GID=$(id -g)
    if [[ $HOST_UID == 0 ]]; then
        HOST_UID=10001 HOST_GID=10001
        chown "$HOST_UID:$HOST_GID" "$LOGS_DIR"
    fi
    export HOST_UID HOST_GID
    CLUSTER_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
    export CLUSTER_TOKEN
    DC=("${COMPOSE[@]}" -p "$PROJECT" --profile scale -f "$ROOT/docker-compose.yml")
    HB=$LOGS_DIR/headnode/heartbeat_server.txt
    CLIENT_LOG=$LOGS_DIR/client/registro_cliente.txt
}

# Ends this script (cleanup included) after $1 seconds.
start_watchdog() {
    (
        sleep "$1" &
        trap 'kill $! 2>/dev/null; exit 0' TERM
        wait $!
        kill -TERM $$
    ) >/dev/null 2>&1 </dev/null &
    WATCHDOG=$!
}

# Removes the project's containers and network; prints diagnostics first
# when $1 (the exit status) is not 0.
teardown_project() {
    local rc=$1
    if ((rc != 0)); then
        echo "---- diagnostics (project $PROJECT) ----"
        docker ps -a --filter "label=com.docker.compose.project=$PROJECT" \
            --format 'table {{.Names}}\t{{.Status}}'
        local f
        for f in "$LOGS_DIR"/*/*.txt; do
            [[ -f $f ]] || continue
            echo "---- last lines of ${f#"$LOGS_DIR"/}"
            tail -n 15 "$f"
        done
        echo "---- container output"
        timeout 30 "${DC[@]}" logs --no-color --tail 10 2>&1 | tail -n 80
    fi
    docker ps -q --filter "label=com.docker.compose.project=$PROJECT" --filter status=paused \
        | xargs -r docker unpause >/dev/null 2>&1
    timeout 60 "${DC[@]}" down --remove-orphans --timeout 3 >/dev/null 2>&1
    docker network rm "$NETWORK_NAME" >/dev/null 2>&1
}

now_ms() { date +%s%3N; }

# Milliseconds in a duration such as 250ms, 1s, 1.5s.
dur_ms() {
    awk -v d="$1" 'BEGIN {
        if (d ~ /ms$/) { sub(/ms$/, "", d); printf "%d", d }
        else { sub(/s$/, "", d); printf "%d", d * 1000 } }'
}

# Epoch milliseconds of a log line's leading `YYYY-MM-DD HH:MM:SS,mmm` (UTC).
line_ms() {
    local stamp=${1:0:23}
    [[ $stamp =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}\ [0-9]{2}:[0-9]{2}:[0-9]{2},[0-9]{3}$ ]] || return 1
    echo $(($(date -u -d "${stamp:0:19}" +%s) * 1000 + 10#${stamp:20:3}))
}

lines() { if [[ -f $1 ]]; then wc -l <"$1"; else echo 0; fi; }

# wait_for FILE REGEX SECONDS [SKIP_LINES]: prints the first line after
# SKIP_LINES that matches; fails (returns 1) after SECONDS.
wait_for() {
    local file=$1 regex=$2 deadline=$(($(now_ms) + $3 * 1000)) skip=${4:-0}
    while (($(now_ms) < deadline)); do
        if [[ -f $file ]] && awk -v skip="$skip" -v re="$regex" '
            NR > skip && $0 ~ re { print; found = 1; exit }
            END { exit !found }' "$file"; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

count() { if [[ -f $2 ]]; then grep -c -E -- "$1" "$2" || true; else echo 0; fi; }

# Time from $1 (epoch ms) to the log line $2, or to now if it has no stamp.
delay_ms() {
    local at
    at=$(line_ms "$2") || at=$(now_ms)
    echo $((at - $1))
}

# audit_clean LABEL DOCKER_RUN_ARGS... -- AUDIT_ARGS...: `datanode audit`
# (2 copies) in the data node's image over the client log mounted at /c,
# by message id; fails unless no answered id is lost, no answer names a
# node that lacks its id (phantom holders), no key has two ids, the copies
# of each id agree and none is twice on one node; else `ok LABEL:
# <summary>` (every count, under- and over-replicated included).
audit_clean() {
    local label=$1 run=() out summary field value
    shift
    while [[ $# -gt 0 && $1 != -- ]]; do run+=("$1"); shift; done
    shift
    out=$(docker run --rm --network none --user 0 "${run[@]}" msgstore-datanode:latest \
        audit --replicas 2 --client-log /c/client/registro_cliente.txt "$@" 2>&1)
    summary=$(head -n1 <<<"$out")
    [[ $summary == acknowledged=* ]] || fail "audit failed: $out"
    for field in lost phantom_holders keys_with_two_ids mismatched_copies duplicated; do
        value=$(tr ' ' '\n' <<<"$summary" | sed -n "s/^$field=//p")
        [[ -z $value || $value == 0 ]] || fail "audit: $field=$value: $out"
    done
    ok "$label: $summary"
}

ip_of() {
    docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}' "$1" | awk '{ print $1 }'
}

# wait_stack_gone STACK SECONDS: waits, at most SECONDS, until no container
# of the Swarm stack STACK is left and its network is gone. `docker stack rm`
# returns at once; the tasks' containers, then the network, volumes and
# secrets they hold, go after it. Carries on either way.
wait_stack_gone() {
    local i
    for ((i = 0; i < $2; i++)); do
        [[ -z $(docker ps -aq --filter "label=com.docker.stack.namespace=$1") ]] &&
            ! docker network inspect "$1_msgstore" >/dev/null 2>&1 && return 0
        sleep 1
    done
    return 0
}
