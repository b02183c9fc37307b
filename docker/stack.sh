#!/usr/bin/env bash
# The message store on Docker Swarm.
#
#   docker/stack.sh up      a single-node swarm if none is active, the
#                           images, the token secret, `docker stack deploy`,
#                           then waits for the first acknowledged message
#   docker/stack.sh down    removes the stack, its secret, and the swarm if
#                           `up` created it (its volumes stay: the data)
#   docker/stack.sh purge   `down`, then removes the stack's volumes too
#
# Environment: STACK (default msgstore), BUILD=0 to skip building the
# images, WAIT_FOR_ACK (seconds, default 90), and every variable that
# docker/stack.yml reads (DATANODES, REPLICAS, HEAD_HTTP_PORT, ...).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
STACK=${STACK:-msgstore}
export VOLUME_PREFIX=${VOLUME_PREFIX:-$STACK}
export TOKEN_SECRET=${TOKEN_SECRET:-${STACK}_cluster_token}
# `up` leaves this file when it initialised the swarm, so `down` knows it
# may leave it again (a swarm that was there before is never left).
MARKER=$ROOT/.stack-created-swarm
WAIT_FOR_ACK=${WAIT_FOR_ACK:-90}

say() { printf '==> %s\n' "$*"; }
die() { printf 'stack.sh: %s\n' "$*" >&2; exit 1; }

swarm_state() { docker info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null || echo unreachable; }

ensure_swarm() {
    case $(swarm_state) in
        active) say "using the active swarm ($(docker info --format '{{.Swarm.Nodes}}') nodes)" ;;
        inactive)
            say "docker swarm init (single node, advertised on 127.0.0.1)"
            docker swarm init --advertise-addr "${SWARM_ADDR:-127.0.0.1}" >/dev/null
            touch "$MARKER"
            ;;
        unreachable) die "no Docker engine answers (is the daemon running, may this user use it?)" ;;
        *) die "this engine's swarm is $(swarm_state); fix it first (docker info)" ;;
    esac
    if [[ $(docker info --format '{{.Swarm.ControlAvailable}}') != true ]]; then
        die "this engine is a swarm worker; run this on a manager"
    fi
}

# The cluster token: from CLUSTER_TOKEN or .env (as for compose), else a
# new random one written to .env; stored as a Docker secret.
ensure_secret() {
    if docker secret inspect "$TOKEN_SECRET" >/dev/null 2>&1; then
        say "using the secret $TOKEN_SECRET"
        return
    fi
    local token=${CLUSTER_TOKEN:-}
    if [[ -z $token && -f .env ]]; then
        token=$(sed -n 's/^CLUSTER_TOKEN=//p' .env | tail -1)
    fi
    if [[ -z $token ]]; then
        token=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
        (umask 077; printf 'CLUSTER_TOKEN=%s\n' "$token" >>.env)
        say "wrote a new random cluster token to .env"
    fi
    printf '%s' "$token" | docker secret create "$TOKEN_SECRET" - >/dev/null
    say "created the secret $TOKEN_SECRET"
}

# The first `recibido` in the client service's output since START.
first_ack() {
    docker service logs --raw --since "$1" "${STACK}_client" 2>/dev/null | grep -m1 'mensaje: recibido'
}

up() {
    local start
    start=$(date +%s)
    ensure_swarm
    if [[ ${BUILD:-1} != 0 ]]; then docker/build.sh; fi
    ensure_secret
    say "docker stack deploy $STACK"
    docker stack deploy --resolve-image never --prune -c docker/stack.yml "$STACK"
    cat <<EOF

The stack $STACK is deploying. Where to look:
  docker stack ps $STACK                  tasks, the node each runs on, restarts
  docker service logs -f ${STACK}_headnode   head node (joins, evictions, forwarding)
  docker service logs -f ${STACK}_datanode   data nodes dn-1..dn-${DATANODES:-3} (one service)
  docker service logs -f ${STACK}_client     client: one line per acknowledgement
  http://127.0.0.1:${HEAD_HTTP_PORT:-8080}/            status page (on the head node's machine)
  docker volume inspect $VOLUME_PREFIX-dn-1     where dn-1's data.txt and log are on its host
Kill a data node:  docker kill \$(docker ps -qf label=com.docker.swarm.service.name=${STACK}_datanode | head -1)
Stop it all:       make stack-down
EOF
    printf '\nWaiting for the first acknowledged message'
    local deadline=$((SECONDS + WAIT_FOR_ACK)) line
    while ((SECONDS < deadline)); do
        if line=$(first_ack "$start"); then
            printf ' ... after %s s:\n  %s\n' "$(($(date +%s) - start))" "$line"
            return 0
        fi
        printf '.'
        sleep 1
    done
    printf '\n' >&2
    docker stack ps --no-trunc "$STACK" >&2 || true
    die "no acknowledged message within $WAIT_FOR_ACK s; see 'docker service logs ${STACK}_headnode'"
}

down() {
    if [[ $(swarm_state) != active ]]; then
        say "no active swarm: nothing to remove"
        rm -f "$MARKER"
        return 0
    fi
    if docker stack ls --format '{{.Name}}' | grep -qx "$STACK"; then
        say "docker stack rm $STACK"
        docker stack rm "$STACK" >/dev/null
    fi
    # Removal is asynchronous: the network and the secret go once the tasks
    # are gone.
    wait_stack_gone "$STACK" 60
    docker secret rm "$TOKEN_SECRET" >/dev/null 2>&1 || true
    if [[ -f $MARKER ]]; then
        say "docker swarm leave (stack-up created this swarm)"
        docker swarm leave --force >/dev/null
        rm -f "$MARKER"
    fi
    say "removed; the data volumes stay (docker volume ls | grep $VOLUME_PREFIX-; 'docker/stack.sh purge' removes them)"
}

purge() {
    down
    local v
    # Volumes are removed once no container holds them: wait for the tasks'
    # containers to go.
    wait_stack_gone "$STACK" 30
    for v in $(docker volume ls -q | grep -E "^$VOLUME_PREFIX-(dn-[0-9]+|headnode-logs|client-logs|echo-logs)\$" || true); do
        docker volume rm "$v" >/dev/null && say "removed volume $v"
    done
}

case ${1:-} in
    up) up ;;
    down) down ;;
    purge) purge ;;
    *) die "usage: $0 up|down|purge" ;;
esac
