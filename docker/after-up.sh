#!/usr/bin/env bash
# Run by `make up` once the containers are started: says where the log files
# are and how to follow them, then waits (at most WAIT_FOR_ACK seconds) for
# the client's first acknowledged message and reports how long it took.
#
# Environment: LOGS_DIR (default ./logs), START (epoch seconds when the
# command began, for the timing), WAIT_FOR_ACK (default 60).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOGS_DIR=${LOGS_DIR:-$ROOT/logs}
START=${START:-$(date +%s.%N)}
WAIT_FOR_ACK=${WAIT_FOR_ACK:-60}
CLIENT_LOG=$LOGS_DIR/client/registro_cliente.txt
shown=${LOGS_DIR#"$PWD"/}
prefix=${CONTAINER_PREFIX:-}
network=${NETWORK_NAME:-msgstore}
client_image=${IMAGE_PREFIX:-msgstore-}client:${IMAGE_TAG:-latest}

# Where the head node's HTTP port is published: Docker knows (HEAD_HTTP_PORT
# may be set in .env, or empty for a port Docker picks).
http=$(docker port "${prefix}headnode" 8080/tcp 2>/dev/null | head -n 1)
http=${http:-127.0.0.1:${HEAD_HTTP_PORT:-8080}}
http_flag=
[[ $http == 127.0.0.1:8080 ]] || http_flag=" --http $http"

# The client docker/build.sh built for the images (same target directory and
# triple), so the command printed runs as printed; without it, the image.
static_dir=${CARGO_TARGET_DIR:-$ROOT/target/static}
triple=${TARGET:-$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')}
client=$static_dir/$triple/release/client
if [[ -n $triple && -x $client ]]; then
    status_cmd="${client#"$PWD"/} status$http_flag --watch"
else
    status_cmd="docker run --rm -it --network $network $client_image status --http headnode:8080 --watch"
fi

cat <<EOF

The stack is up. Each container writes to $shown/<container-name>/:
  $shown/echo-server/log.txt                 echo server
  $shown/echo-client/registro_cliente.txt    echo client
  $shown/headnode/registro_server.txt        head node: connections, forwarding
  $shown/headnode/heartbeat_server.txt       head node: pings, joins, evictions
  $shown/datanode1/data.txt                  stored messages (datanode1..3)
  $shown/datanode1/registro_datanode.txt     data node log
  $shown/client/registro_cliente.txt         client: one line per acknowledgement

Status page:        http://$http/
Metrics:            http://$http/metrics
Status table:       $status_cmd
Follow everything:  make tail      (tail -F $shown/*/*.txt)
Just evictions:     tail -F $shown/headnode/heartbeat_server.txt
Read back:          docker run --rm --network $network $client_image --server headnode:5000 tail
Watch an eviction:  docker kill ${prefix}datanode1   ... then: docker start ${prefix}datanode1
Stop it all:        make down
EOF

# The log file may hold lines of earlier runs: only lines stamped (UTC,
# `YYYY-MM-DD HH:MM:SS,mmm`) since START count.
since=$(date -u -d "@${START%.*}" '+%Y-%m-%d %H:%M:%S')
first_ack() {
    [[ -f $CLIENT_LOG ]] && awk -v since="$since" '
        substr($0, 1, 19) >= since && /mensaje: recibido/ { print; found = 1; exit }
        END { exit !found }' "$CLIENT_LOG"
}

printf '\nWaiting for the first acknowledged message'
deadline=$((SECONDS + WAIT_FOR_ACK))
while ((SECONDS < deadline)); do
    if line=$(first_ack); then
        elapsed=$(awk -v s="$START" -v n="$(date +%s.%N)" 'BEGIN { printf "%.1f", n - s }')
        printf ' ... after %s s (counted from the start of the command):\n  %s\n' "$elapsed" "$line"
        exit 0
    fi
    printf '.'
    sleep 0.5
done
printf '\nNo acknowledged message within %s s; look at %s and %s.\n' \
    "$WAIT_FOR_ACK" "$shown/client/registro_cliente.txt" "'docker ps -a'" >&2
exit 1
