#!/usr/bin/env bash
# End-to-end test of docker/stack.yml on a single-node Docker Swarm:
#
#   1. deploy (a stack, secret and volumes of this test's own) and wait for
#      the first acknowledged message;
#   2. kill a data-node task's container: the head node evicts dn-1, Swarm
#      starts a new task in slot 1, and it rejoins as dn-1 with its old
#      data.txt;
#   3. kill the head node's container: Swarm restarts it, the data nodes
#      and the client find it again by name, and acknowledgements resume;
#   4. `datanode audit` over the client's log and every data node's
#      volume: nothing acknowledged lost, no key under two ids, no key
#      twice on one node.
#
# Uses the active swarm if there is one (its own stack name), or creates a
# single-node swarm and leaves it at the end. Everything it created is
# removed on exit, pass or fail. SKIPs without a Docker engine. Needs the
# images (docker/build.sh; BUILD=1 builds them first).
set -uo pipefail

NAME=stack-e2e
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
cd "$ROOT"

if ! command -v docker >/dev/null 2>&1 || ! timeout 20 docker info >/dev/null 2>&1; then
    echo "SKIP: $NAME: no Docker engine reachable"
    exit 0
fi
case $(docker info --format '{{.Swarm.LocalNodeState}}') in
    active | inactive) ;;
    *) echo "SKIP: $NAME: this engine's swarm state is $(docker info --format '{{.Swarm.LocalNodeState}}')"; exit 0 ;;
esac
for image in headnode datanode client echo-server; do
    if ! docker image inspect "msgstore-$image:latest" >/dev/null 2>&1; then
        if [[ ${BUILD:-0} == 1 ]]; then docker/build.sh || fail "docker/build.sh failed"; break; fi
        fail "image msgstore-$image:latest missing: run docker/build.sh (or BUILD=1 $0)"
    fi
done

export STACK=mse2e$$
export VOLUME_PREFIX=$STACK TOKEN_SECRET=${STACK}_token
# Host ports of the head node's task, free ones.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
export HEAD_PORT HEAD_HTTP_PORT
HEAD_PORT=$(free_port)
HEAD_HTTP_PORT=$(free_port)
# A busy client (so kills land mid-traffic) and quick failure detection.
export CLIENT_INTERVAL=50ms CLIENT_PIPELINE=4 DATANODES=3 REPLICAS=2
export CLUSTER_TOKEN
CLUSTER_TOKEN=$(od -An -tx1 -N24 /dev/urandom | tr -d ' \n')
CREATED_SWARM=0

vol() { docker volume inspect --format '{{.Mountpoint}}' "$VOLUME_PREFIX-$1" 2>/dev/null; }
HB() { echo "$(vol headnode-logs)/headnode/heartbeat_server.txt"; }
CLIENT_LOG() { echo "$(vol client-logs)/client/registro_cliente.txt"; }
task_container() { # service slot -> the running container of that task
    docker ps --filter "label=com.docker.swarm.service.name=${STACK}_$1" \
        --format '{{.ID}} {{.Label "com.docker.swarm.task.name"}}' |
        awk -v t="${STACK}_$1.$2." 'index($2, t) == 1 { print $1; exit }'
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n ${WATCHDOG:-} ]] && kill "$WATCHDOG" 2>/dev/null
    if ((rc != 0)); then
        log "diagnostics:"
        docker stack ps --no-trunc "$STACK" 2>/dev/null | head -20
        docker service logs --tail 15 "${STACK}_headnode" 2>/dev/null
    fi
    docker stack rm "$STACK" >/dev/null 2>&1
    wait_stack_gone "$STACK" 60
    docker secret rm "$TOKEN_SECRET" >/dev/null 2>&1
    docker volume ls -q | grep -E "^$VOLUME_PREFIX-" | xargs -r docker volume rm >/dev/null 2>&1
    if ((CREATED_SWARM)); then docker swarm leave --force >/dev/null 2>&1; fi
    log "cleaned up (stack, secret, volumes$( ((CREATED_SWARM)) && echo ', swarm'))"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
start_watchdog "${STACK_E2E_LIMIT:-420}"

if [[ $(docker info --format '{{.Swarm.LocalNodeState}}') == inactive ]]; then
    docker swarm init --advertise-addr 127.0.0.1 >/dev/null || fail "docker swarm init failed"
    CREATED_SWARM=1
    log "created a single-node swarm"
fi
printf '%s' "$CLUSTER_TOKEN" | docker secret create "$TOKEN_SECRET" - >/dev/null || fail "docker secret create failed"
docker stack deploy --resolve-image never -c docker/stack.yml "$STACK" >/dev/null 2>&1 ||
    fail "docker stack deploy failed: $(docker stack deploy --resolve-image never -c docker/stack.yml "$STACK" 2>&1 | tail -3)"
deployed=$(now_ms)
log "deployed stack $STACK (head node on host ports $HEAD_PORT and $HEAD_HTTP_PORT)"

# 1. The first acknowledged message, and every data node joined.
for ((i = 0; i < 90; i++)); do [[ -n $(vol client-logs) && -f $(CLIENT_LOG) ]] && break; sleep 1; done
line=$(wait_for "$(CLIENT_LOG)" 'mensaje: recibido' 90) || fail "no acknowledged message within 90 s of the deploy"
ok "first acknowledged message $(($(now_ms) - deployed)) ms after the deploy: ${line:0:120}"
for n in 1 2 3; do
    wait_for "$(HB)" " dn-$n .*joined" 30 >/dev/null || fail "dn-$n did not join"
done
ok "dn-1, dn-2 and dn-3 joined (zone: this swarm node)"
head=$(task_container headnode 1)
caps=$(docker inspect --format '{{.HostConfig.CapDrop}} {{index .HostConfig.Sysctls "net.ipv4.ping_group_range"}} {{.Config.User}}' "$head")
[[ $caps == "[ALL] 0 2147483647 "* ]] || fail "head node task: capabilities dropped, ICMP sysctl, user: $caps"
# A round of ICMP echo every PING_INTERVAL (5 s).
icmp=$(wait_for "$(HB)" ' disponible ' 20) || fail "no ICMP round trip in the heartbeat log within 20 s"
ok "head node task: every capability dropped, ping_group_range set, user ${caps##* }, ICMP answered: ${icmp:0:90}"

echo_log="$(vol echo-logs)/echo-client/registro_cliente.txt"
line=$(wait_for "$echo_log" 'Servidor recibio' 30) || fail "the echo client got no echo within 30 s"
ok "the echo pair runs: ${line:0:100}"

# 2. Kill the container of the data-node task in slot 1, once it holds a
# few dozen messages.
dn1_data="$(vol dn-1)/data.txt"
for ((i = 0; i < 300; i++)); do (($(lines "$dn1_data") >= 30)) && break; sleep 0.1; done
(($(lines "$dn1_data") >= 30)) || fail "dn-1 stored fewer than 30 messages in 30 s"
old=$(task_container datanode 1) || true
[[ -n $old ]] || fail "no running container for the data-node task in slot 1"
before=$(lines "$dn1_data")
skip=$(lines "$(HB)")
killed=$(now_ms)
docker kill "$old" >/dev/null || fail "docker kill $old failed"
line=$(wait_for "$(HB)" ' dn-1 .*eliminado' 30 "$skip") || fail "dn-1 was not evicted within 30 s of the kill"
ok "dn-1 evicted $(delay_ms "$killed" "$line") ms after docker kill: ${line:0:160}"
line=$(wait_for "$(HB)" ' dn-1 .*joined' 60 "$skip") || fail "dn-1 did not rejoin within 60 s (Swarm restart)"
new=$(task_container datanode 1)
[[ -n $new && $new != "$old" ]] || fail "slot 1 is not a new container (old $old, now ${new:-none})"
ok "Swarm started a new task in slot 1 ($new); it rejoined as dn-1 $(delay_ms "$killed" "$line") ms after the kill"
after_restart=$(lines "$dn1_data")
((after_restart >= before)) || fail "dn-1's data.txt shrank from $before to $after_restart lines"
hostname=$(docker inspect --format '{{.Config.Hostname}}' "$new")
[[ $hostname == dn-1 ]] || fail "the new task's host name is $hostname"
ok "the new dn-1 kept its data: $after_restart lines in data.txt (had $before before the kill)"

# 3. Kill the head node's container.
acks() { count 'mensaje: recibido' "$(CLIENT_LOG)"; }
old=$(task_container headnode 1)
[[ -n $old ]] || fail "no running head node container"
skip_acks=$(acks)
skip=$(lines "$(HB)")
killed=$(now_ms)
docker kill "$old" >/dev/null || fail "docker kill of the head node failed"
for ((i = 0; i < 600; i++)); do
    new=$(task_container headnode 1)
    [[ -n $new && $new != "$old" ]] && break
    sleep 0.1
done
[[ -n $new && $new != "$old" ]] || fail "Swarm did not restart the head node within 60 s"
ok "Swarm restarted the head node ($new) $(($(now_ms) - killed)) ms after the kill"
for ((i = 0; i < 600; i++)); do
    (($(acks) > skip_acks + 5)) && break
    sleep 0.1
done
(($(acks) > skip_acks + 5)) || fail "no acknowledgement within 60 s of the head node's restart"
ok "acknowledgements resumed $(($(now_ms) - killed)) ms after the head node was killed"
for n in 1 2 3; do
    wait_for "$(HB)" " dn-$n .*joined" 30 "$skip" >/dev/null || fail "dn-$n did not join the new head node"
done
ok "dn-1, dn-2 and dn-3 joined the new head node"

# 4. Quiesce the client, then audit everything it was told.
docker service scale --detach "${STACK}_client=0" >/dev/null 2>&1
for ((i = 0; i < 30; i++)); do [[ -z $(task_container client 1) ]] && break; sleep 1; done
sleep 3 # the copies beyond the answer complete in the background
mounts=(-v "$(vol client-logs):/c:ro")
dirs=()
for n in 1 2 3; do
    mounts+=(-v "$(vol dn-$n):/d$n:ro")
    dirs+=("/d$n")
done
audit_clean audit "${mounts[@]}" -- "${dirs[@]}"
log "PASS ($PASSED checks)"
