#!/usr/bin/env bash
# The stack on a swarm of three Docker engines on this machine: this one
# (the manager) and two more, each in a network namespace of its own
# (`ip netns`, a veth pair on a bridge of this test's own) with its own
# data root and host name. Images move with `docker save | docker load`;
# nothing is pulled. Then:
#
#   1. the three data nodes land on three distinct engines, so each
#      message's two copies are on two engines;
#   2. cutting engine3's link evicts its data node (unreachable), and
#      writes go on;
#   3. bringing the link back brings a data node back in slot 3;
#   4. stopping engine2's daemon reschedules its data node on another
#      engine, and every acknowledged message is still on the other
#      engines' disks (`datanode audit` with engine2's volume as lost).
#
# Needs root, iproute2, nsenter/unshare and dockerd; a Docker engine that
# is in no swarm (it creates one advertised on the bridge and leaves it at
# the end); the images (docker/build.sh). SKIPs otherwise. Every wait is
# bounded; the engines, namespaces, bridge and files go on exit.
set -uo pipefail

NAME=swarm-hosts
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=docker/lib.sh
source "$ROOT/docker/lib.sh"
cd "$ROOT"

skip() { echo "SKIP: $NAME: $*"; exit 0; }
[[ $(id -u) == 0 ]] || skip "needs root (network namespaces and more Docker engines)"
for tool in ip nsenter unshare dockerd docker python3; do
    command -v "$tool" >/dev/null || skip "no $tool"
done
timeout 20 docker info >/dev/null 2>&1 || skip "no Docker engine reachable"
[[ $(docker info --format '{{.Swarm.LocalNodeState}}') == inactive ]] ||
    skip "this engine is already in a swarm; the test makes a swarm of its own"
for image in headnode datanode client echo-server; do
    docker image inspect "msgstore-$image:latest" >/dev/null 2>&1 || skip "image msgstore-$image:latest missing (docker/build.sh)"
done

ID=$$
BR=msbr$ID
NET=10.$((80 + ID % 100)).$((ID / 100 % 250)).0
PREFIX=${NET%.0}
WORK=/var/lib/msgstore-hosts-$ID
RUNDIR=/run/msgstore-hosts-$ID
export STACK=mshosts$ID
export VOLUME_PREFIX=$STACK TOKEN_SECRET=${STACK}_token
export DATANODES=3 MAX_DATANODES_PER_HOST=2 REPLICAS=2 CLIENT_INTERVAL=50ms CLIENT_PIPELINE=4
# The head node and the client on this engine: their log volumes (the
# heartbeat log, the acknowledgements to audit) stay readable here.
export HEADNODE_CONSTRAINT=node.role==manager CLIENT_CONSTRAINT=node.role==manager
export HEAD_PORT HEAD_HTTP_PORT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
HEAD_PORT=$(free_port)
HEAD_HTTP_PORT=$(free_port)
SWARM=0
declare -A DPID

engine() { docker -H "unix://$RUNDIR/engine$1/docker.sock" "${@:2}"; }

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n ${WATCHDOG:-} ]] && kill "$WATCHDOG" 2>/dev/null
    if ((rc != 0)); then
        log "diagnostics:"
        docker stack ps --no-trunc "$STACK" 2>/dev/null | head -20
        [[ -n $HB && -f $HB ]] && tail -n 25 "$HB"
    fi
    docker stack rm "$STACK" >/dev/null 2>&1
    local n i
    wait_stack_gone "$STACK" 30
    for n in 2 3; do
        [[ -n ${DPID[$n]:-} ]] || continue
        engine "$n" swarm leave --force >/dev/null 2>&1
        kill -TERM "${DPID[$n]}" 2>/dev/null
    done
    ((SWARM)) && docker swarm leave --force >/dev/null 2>&1
    for n in 2 3; do
        [[ -n ${DPID[$n]:-} ]] || continue
        for ((i = 0; i < 100; i++)); do kill -0 "${DPID[$n]}" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "${DPID[$n]}" 2>/dev/null
    done
    docker secret rm "$TOKEN_SECRET" >/dev/null 2>&1
    docker volume ls -q | grep -E "^$VOLUME_PREFIX-" | xargs -r docker volume rm >/dev/null 2>&1
    for n in 2 3; do ip netns del "mshost$ID-$n" 2>/dev/null; done
    ip link del "$BR" 2>/dev/null
    # The engines' mounts (image layers, shm, netns files) go before the files.
    grep -E " ($WORK|$RUNDIR)[/ ]" /proc/mounts | awk '{ print $2 }' | sort -r | xargs -r -n1 umount -l 2>/dev/null
    rm -rf "$WORK" "$RUNDIR"
    log "cleaned up (stack, engines 2 and 3, namespaces, bridge $BR, $WORK)"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
start_watchdog "${SWARM_HOSTS_LIMIT:-600}"

# ---------------------------------------------------------------- hosts ---
ip link add "$BR" type bridge && ip addr add "$PREFIX.1/24" dev "$BR" && ip link set "$BR" up ||
    fail "cannot create the bridge $BR"
driver=$(docker info --format '{{.Driver}}')
mtu=$(ip -o link show "$(ip -o route get 1.1.1.1 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") print $(i + 1) }')" 2>/dev/null | sed -n 's/.* mtu \([0-9]*\).*/\1/p')
for n in 2 3; do
    ns=mshost$ID-$n
    ip netns add "$ns" && ip link add "ms$ID-$n" type veth peer name "ms$ID-${n}p" &&
        ip link set "ms$ID-$n" master "$BR" up && ip link set "ms$ID-${n}p" netns "$ns" &&
        ip -n "$ns" addr add "$PREFIX.$n/24" dev "ms$ID-${n}p" && ip -n "$ns" link set "ms$ID-${n}p" up &&
        ip -n "$ns" link set lo up || fail "cannot create the namespace $ns"
    mkdir -p "$WORK/engine$n" "$RUNDIR/engine$n"
    cat >"$RUNDIR/engine$n/daemon.json" <<EOF
{"data-root": "$WORK/engine$n", "exec-root": "$RUNDIR/engine$n/exec", "pidfile": "$RUNDIR/engine$n/docker.pid",
 "hosts": ["unix://$RUNDIR/engine$n/docker.sock"], "storage-driver": "$driver", "mtu": ${mtu:-1500},
 "bip": "172.31.$((200 + n)).1/24"}
EOF
    # nsenter, not `ip netns exec`: that one remounts /sys, hiding the
    # cgroup mounts dockerd needs. unshare --uts: a host name of its own,
    # so the swarm node (and the data node's zone) is engine<n>.
    nsenter --net="/run/netns/$ns" unshare --uts sh -c \
        "hostname engine$n; exec dockerd --config-file $RUNDIR/engine$n/daemon.json" \
        >"$WORK/engine$n.log" 2>&1 &
    DPID[$n]=$!
done
for n in 2 3; do
    for ((i = 0; i < 300; i++)); do engine "$n" info >/dev/null 2>&1 && break; sleep 0.1; done
    engine "$n" info >/dev/null 2>&1 || fail "engine$n did not start: $(tail -3 "$WORK/engine$n.log")"
done
ok "engines 2 and 3 run in network namespaces at $PREFIX.2 and $PREFIX.3"

docker swarm init --advertise-addr "$PREFIX.1" >/dev/null || fail "docker swarm init failed"
SWARM=1
token=$(docker swarm join-token -q worker)
for n in 2 3; do
    engine "$n" swarm join --token "$token" --advertise-addr "$PREFIX.$n" "$PREFIX.1:2377" >/dev/null ||
        fail "engine$n could not join the swarm"
    docker save msgstore-headnode:latest msgstore-datanode:latest msgstore-client:latest msgstore-echo-server:latest |
        engine "$n" load >/dev/null || fail "docker load into engine$n failed"
done
ok "a swarm of 3 engines: $(docker node ls --format '{{.Hostname}}' | sort | tr '\n' ' ')(images moved with docker save | docker load)"

od -An -tx1 -N24 /dev/urandom | tr -d ' \n' | docker secret create "$TOKEN_SECRET" - >/dev/null
docker stack deploy --resolve-image never -c docker/stack.yml "$STACK" >/dev/null 2>&1 || fail "docker stack deploy failed"

# Where each data-node slot runs: "slot node" lines, running tasks only.
placement() {
    docker stack ps --filter desired-state=running --format '{{.Name}} {{.Node}} {{.CurrentState}}' "$STACK" |
        awk -v s="${STACK}_datanode." 'index($1, s) == 1 && $3 == "Running" { sub(s, "", $1); print $1, $2 }' | sort
}
HB=""
hb() { [[ -n $HB ]] || HB="$(docker volume inspect --format '{{.Mountpoint}}' "$VOLUME_PREFIX-headnode-logs" 2>/dev/null)/headnode/heartbeat_server.txt"; echo "$HB"; }
acks() { count 'mensaje: recibido' "$(docker volume inspect --format '{{.Mountpoint}}' "$VOLUME_PREFIX-client-logs" 2>/dev/null)/client/registro_cliente.txt"; }

# 1. One data node per engine, and copies on two engines.
for ((i = 0; i < 180; i++)); do [[ $(placement | awk '{ print $2 }' | sort -u | wc -l) == 3 ]] && break; sleep 1; done
[[ $(placement | awk '{ print $2 }' | sort -u | wc -l) == 3 ]] || fail "data nodes not on 3 engines: $(placement | tr '\n' ';')"
ok "data nodes on distinct engines: $(placement | tr '\n' ';')"
for ((i = 0; i < 600; i++)); do (($(acks) >= 50)) && break; sleep 0.2; done
(($(acks) >= 50)) || fail "fewer than 50 acknowledgements within 120 s"
on_engine3=$(placement | awk '$2 == "engine3" { print "dn-" $1 }')
on_engine2=$(placement | awk '$2 == "engine2" { print "dn-" $1 }')
copies=$(docker service logs --raw "${STACK}_client" 2>/dev/null | grep -o '[a-z0-9+-]* , mensaje: recibido' | awk '{ print $1 }' | sort | uniq -c | tr '\n' ' ')
ok "$(acks) acknowledged; holders per message (two nodes, so two engines): $copies"

# 2. Cut engine3 off the network.
skip_hb=$(lines "$(hb)")
before=$(acks)
cut=$(now_ms)
ip link set "ms$ID-3" down
line=$(wait_for "$(hb)" " $on_engine3 .*eliminado" 30 "$skip_hb") || fail "$on_engine3 (on engine3) was not evicted within 30 s of the cut"
ok "$on_engine3 on engine3 evicted $(delay_ms "$cut" "$line") ms after its link was cut: ${line:0:140}"
for ((i = 0; i < 100; i++)); do (($(acks) > before + 20)) && break; sleep 0.2; done
(($(acks) > before + 20)) || fail "writes stopped while engine3 was cut off"
ok "writes went on while engine3 was cut off: $(($(acks) - before)) more acknowledged"

# 3. Reconnect it.
skip_hb=$(lines "$(hb)")
back=$(now_ms)
ip link set "ms$ID-3" up
# The data node retries every second or so (each attempt bounded at 3 s),
# but `headnode` is reachable from engine3 again only once the engines'
# gossip has taken engine3 back and resynchronised the overlay network:
# measured from 1.6 s to 77 s after the link came back.
line=$(wait_for "$(hb)" " $on_engine3 .*(joined|rejoined)" 150 "$skip_hb") || fail "$on_engine3 did not come back within 150 s of the reconnection"
ok "$on_engine3 back $(delay_ms "$back" "$line") ms after the link came back: ${line:0:120}"
# While engine3 was cut off, Swarm may have moved its slot to another
# engine: it then came back with a new, empty data directory (its join line
# names another store), and what it held is on engine3's old volume, read
# by no process. Until repair has given the new directory its share, the
# messages it held have one live copy, and step 4 may stop that copy's
# engine. So step 4 waits for that repair (the head node logs it).
store_of() { sed -n 's/.*store \([0-9a-f]\{16\}\).*/\1/p' <<<"$1"; }
first=$(grep -m1 -E " $on_engine3 .*(joined|rejoined)" "$(hb)")
if [[ $(store_of "$line") != "$(store_of "$first")" ]]; then
    line=$(wait_for "$(hb)" "repair gave .*$on_engine3.* their share" 180 "$skip_hb") ||
        fail "$on_engine3 came back with a new data directory and repair did not give it its share within 180 s"
    ok "$on_engine3 came back with a new data directory; repair gave it its share $(delay_ms "$back" "$line") ms after the link came back"
fi

# 4. Stop engine2: its data node is rescheduled elsewhere.
slot2=${on_engine2#dn-}
skip_hb=$(lines "$(hb)")
lost_vol="$WORK/engine2/volumes/$VOLUME_PREFIX-dn-$slot2/_data"
[[ -f $lost_vol/data.txt ]] || fail "no data.txt in engine2's volume ($lost_vol)"
stopped=$(now_ms)
kill -TERM "${DPID[2]}"
# Its data node is gone either way: evicted when its container stops, or
# replaced when Swarm has started the slot elsewhere first (the manager
# may see the engine as down before the daemon has stopped its tasks).
line=$(wait_for "$(hb)" " $on_engine2 .*(eliminado|joined)" 90 "$skip_hb") || fail "$on_engine2 was neither evicted nor replaced within 90 s of engine2's stop"
ok "engine2 stopping: $on_engine2 out $(delay_ms "$stopped" "$line") ms later: ${line:24:100}"
for ((i = 0; i < 300; i++)); do kill -0 "${DPID[2]}" 2>/dev/null || break; sleep 0.1; done
for ((i = 0; i < 120; i++)); do
    placement | grep -q "^$slot2 \(engine3\|$(hostname)\)" && break
    sleep 1
done
placement | grep -q "^$slot2 " || fail "slot $slot2 was not rescheduled within 120 s: $(placement | tr '\n' ';')"
ok "Swarm rescheduled slot $slot2 on $(placement | awk -v s="$slot2" '$1 == s { print $2 }') $(($(now_ms) - stopped)) ms after engine2 stopped"
# What engine2 held can be read back from the other copies, through the
# head node (`client get` on the stack's network). A get is definite or
# says it is not: exit 0 found, 1 not found (every data node that could
# hold it answered: a failure at once), 3 unavailable (a data node that
# could hold it did not answer, or is the slot back with an empty
# directory that repair has not yet given its share: asked again, for at
# most 60 s).
# The ids asked for are ones whose other copy is on a volume a running
# data node serves: a message whose two copies were both on engine2 (the
# slot cut off in step 2 may have been moved there and repaired) has no
# live copy left, and what the promise says of it is the audit below.
ids_of() { sed -n 's/^.* - \[\([0-9]*-[0-9]*\)\].*/\1/p' "$1" | sort -u; }
served=$(mktemp)
while read -r slot engine; do
    [[ $slot == "$slot2" ]] && continue
    if [[ $engine == engine3 ]]; then
        v=$WORK/engine3/volumes/$VOLUME_PREFIX-dn-$slot/_data
    elif [[ $engine == "$(hostname)" ]]; then
        v=$(docker volume inspect --format '{{.Mountpoint}}' "$VOLUME_PREFIX-dn-$slot" 2>/dev/null)
    else
        continue
    fi
    [[ -f $v/data.txt ]] && ids_of "$v/data.txt" >>"$served"
done < <(placement)
readable=$(comm -12 <(ids_of "$lost_vol/data.txt") <(sort -u "$served") | sort -t- -k1,1n -k2,2n | head -n 3)
rm -f "$served"
n=0
for id in $readable; do
    asked=$(now_ms)
    for ((i = 0; i < 60; i++)); do
        out=$(timeout 30 docker run --rm --network "${STACK}_msgstore" msgstore-client:latest \
            --server headnode:5000 get "$id" 2>&1)
        code=$?
        ((code == 3)) || break
        sleep 1
    done
    ((code == 0)) || fail "client get $id (held on engine2) exited $code after $(($(now_ms) - asked)) ms: $out"
    grep -q "$id" <<<"$out" || fail "client get $id: $out"
    n=$((n + 1))
done
((n == 3)) || fail "fewer than 3 ids of engine2's data.txt have a copy a running data node serves"
ok "3 messages engine2 held read back from the other engines: $(tr '\n' ' ' <<<"$out" | cut -c1-160)"

# Quiesce the client, then audit every acknowledgement against the disks
# of the engines still up, engine2's volume counted as lost.
docker service scale --detach "${STACK}_client=0" >/dev/null 2>&1
sleep 5
# A directory's name is its node's id for the audit: the surviving slots'
# volumes (on this engine and engine3) as data, engine2's as lost. The
# slot rescheduled from engine2 starts empty and is left out: everything
# acknowledged since names another holder too.
mounts=(-v "$(docker volume inspect --format '{{.Mountpoint}}' "$VOLUME_PREFIX-client-logs"):/c:ro" -v "$lost_vol:/lost/dn-$slot2:ro")
dirs=(--lost-dir "/lost/dn-$slot2")
for slot in 1 2 3; do
    [[ $slot == "$slot2" ]] && continue
    v=$WORK/engine3/volumes/$VOLUME_PREFIX-dn-$slot/_data
    [[ -f $v/data.txt ]] || v=$(docker volume inspect --format '{{.Mountpoint}}' "$VOLUME_PREFIX-dn-$slot" 2>/dev/null)
    [[ -f $v/data.txt ]] || fail "no data.txt for dn-$slot on engine3 or this engine"
    mounts+=(-v "$v:/d/dn-$slot:ro")
    dirs+=("/d/dn-$slot")
done
audit_clean "every acknowledged message is on the engines still up (engine2's disk counted as lost)" \
    "${mounts[@]}" -- "${dirs[@]}"
log "PASS ($PASSED checks)"
