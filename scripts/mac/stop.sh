#!/bin/sh
# Stops the Agent started by start.sh: SIGTERM to the pid in log/agent.pid, then waits for
# in-flight streams to drain (at most IPAAS_STOP_TIMEOUT seconds, default 40).
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
PID_FILE="$ROOT/log/agent.pid"
TIMEOUT=${IPAAS_STOP_TIMEOUT:-40}

if [ ! -f "$PID_FILE" ]; then
    echo "The Agent is not running (no $PID_FILE)."
    exit 0
fi
PID=$(cat "$PID_FILE")
if ! kill -0 "$PID" 2>/dev/null; then
    rm -f "$PID_FILE"
    echo "The Agent is not running (stale pid file for $PID removed)."
    exit 0
fi
# The pid may have been reused by another program since start.sh ran.
if ! ps -p "$PID" -o command= 2>/dev/null | grep -q ipaas-agent; then
    rm -f "$PID_FILE"
    echo "error: pid $PID is not an ipaas-agent process; removed the stale pid file and stopped nothing" >&2
    exit 1
fi

kill -TERM "$PID"
printf 'Stopping the Agent (pid %s), waiting for streams to drain' "$PID"
WAITED=0
while kill -0 "$PID" 2>/dev/null; do
    if [ "$WAITED" -ge $((TIMEOUT * 10)) ]; then
        echo
        echo "error: the Agent (pid $PID) did not stop within ${TIMEOUT}s; it is still running" >&2
        exit 1
    fi
    sleep 0.1
    WAITED=$((WAITED + 1))
    if [ $((WAITED % 10)) -eq 0 ]; then printf '.'; fi
done
rm -f "$PID_FILE"
echo
echo "Agent stopped."
