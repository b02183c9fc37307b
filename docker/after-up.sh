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

cat <<EOF

The stack is up. Each container writes to $shown/<container-name>/:
  $shown/echo-server/log.txt                 echo server
  $shown/echo-client/registro_cliente.txt    echo client
  $shown/headnode/registro_server.txt        head node: connections, forwarding
  $shown/headnode/heartbeat_server.txt       head node: pings, joins, evictions
  $shown/datanode1/data.txt                  stored messages (datanode1..3)
  $shown/datanode1/registro_datanode.txt     data node log
  $shown/client/registro_cliente.txt         client: one line per acknowledgement

Status page:        http://127.0.0.1:${HEAD_HTTP_PORT:-8080}/    (also: target/release/client status --watch)
Metrics:            http://127.0.0.1:${HEAD_HTTP_PORT:-8080}/metrics
Follow everything:  make tail      (tail -F $shown/*/*.txt)
Just evictions:     tail -F $shown/headnode/heartbeat_server.txt
Watch an eviction:  docker kill datanode1   ... then: docker start datanode1
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
