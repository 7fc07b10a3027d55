#!/bin/sh
# Starts the Agent in the background. The pid goes to log/agent.pid; what the Agent writes
# to standard error before its logger starts goes to log/agent.console.log.
set -eu

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OS_DIR=${IPAAS_AGENT_OS_DIR:-Linux}
BIN="$ROOT/bin/$OS_DIR/ipaas-agent"
PID_FILE="$ROOT/log/agent.pid"
CONSOLE_LOG="$ROOT/log/agent.console.log"

if [ ! -x "$BIN" ]; then
    echo "error: $BIN is missing or not executable; unpack the whole Agent package again" >&2
    exit 1
fi
mkdir -p "$ROOT/log"
if [ -f "$PID_FILE" ]; then
    PID=$(cat "$PID_FILE")
    if kill -0 "$PID" 2>/dev/null; then
        echo "The Agent is already running (pid $PID). Stop it with stop.sh first." >&2
        exit 1
    fi
    rm -f "$PID_FILE"
fi

cd "$ROOT"
nohup "$BIN" --config "$ROOT/configs/config.yaml" --logger "$ROOT/configs/logger_config.yaml" \
    >>"$CONSOLE_LOG" 2>&1 </dev/null &
PID=$!
echo "$PID" >"$PID_FILE"

# A config or key problem makes the Agent exit at once; report it here instead of later.
sleep 1
if ! kill -0 "$PID" 2>/dev/null; then
    rm -f "$PID_FILE"
    echo "error: the Agent exited right after starting. Last lines of $CONSOLE_LOG:" >&2
    tail -n 20 "$CONSOLE_LOG" >&2
    exit 1
fi
echo "Agent started (pid $PID). Logs: $ROOT/log/"
