#!/usr/bin/env bash
# Builds the gateway and runs it end to end on this machine: creates a PKI and an RSA key,
# lays out an Agent package, starts a private HTTP service, the Server and the Agent, sends
# a request through the Server's entry port, and stops everything again.
#
# Everything lives under ./demo (recreated on each run) and listens on 127.0.0.1 only.
# Ports: IPAAS_DEMO_AGENT_PORT (default 17000), IPAAS_DEMO_ENTRY_PORT (30001) and
# IPAAS_DEMO_SERVICE_PORT (18080).
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
DEMO="$REPO/demo"
AGENT_PORT=${IPAAS_DEMO_AGENT_PORT:-17000}
ENTRY_PORT=${IPAAS_DEMO_ENTRY_PORT:-30001}
SERVICE_PORT=${IPAAS_DEMO_SERVICE_PORT:-18080}

step() { printf '\n==> %s\n' "$*"; }

stop_pid_file() {
    local file=$1
    [ -f "$file" ] || return 0
    local pid
    pid=$(cat "$file")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid"
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$file"
}

cleanup() {
    [ -d "$DEMO" ] || return 0
    [ -f "$DEMO/agent/log/agent.pid" ] && "$DEMO/agent/scripts/linux/stop.sh" >/dev/null 2>&1 || true
    stop_pid_file "$DEMO/server/server.pid"
    stop_pid_file "$DEMO/www.pid"
}
trap cleanup EXIT

for tool in cargo openssl python3 curl; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required; install it (for example: apt-get install $tool)" >&2; exit 1; }
done

step "Building (cargo build --release)"
cargo build --release --manifest-path "$REPO/Cargo.toml"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SERVER_BIN="$TARGET_DIR/release/ipaas-server"
AGENT_BIN="$TARGET_DIR/release/ipaas-agent"

cleanup
rm -rf "$DEMO"
mkdir -p "$DEMO/server/keys" "$DEMO/www"

step "Creating the Server's CA and certificate"
"$SERVER_BIN" pki init --dir "$DEMO/server/pki"

step "Laying out the Agent package in demo/agent"
PKG="$DEMO/agent"
mkdir -p "$PKG/bin/Linux" "$PKG/configs/secret" "$PKG/log" "$PKG/scripts"
cp "$AGENT_BIN" "$PKG/bin/Linux/"
cp -r "$REPO/scripts/linux" "$PKG/scripts/"
cp "$REPO/configs/logger_config.yaml" "$PKG/configs/"
"$SERVER_BIN" pki issue-agent --dir "$DEMO/server/pki" --gateway gw-demo --out "$PKG/configs/client"

step "Generating the Agent's RSA key pair with openssl"
openssl genrsa -out "$PKG/configs/secret/private.pem" 2048 2>/dev/null
chmod 600 "$PKG/configs/secret/private.pem"
openssl rsa -in "$PKG/configs/secret/private.pem" -RSAPublicKey_out -out "$DEMO/server/keys/gw-demo.pem" 2>/dev/null

cat >"$DEMO/server/server.yaml" <<YAML
listen: "127.0.0.1:$AGENT_PORT"
tls: {ca: pki/ca.pem, cert: pki/server.pem, key: pki/server.key}
runtime: {shards: 2}
drain_timeout: "5s"
log: {level: info, file: "server.log"}
gateways:
  - id: gw-demo
    public_keys: [keys/gw-demo.pem]
    allow: ["127.0.0.0/8"]
    services:
      - {name: web, listen: "127.0.0.1:$ENTRY_PORT"}
YAML
cat >"$PKG/configs/config.yaml" <<YAML
server: {address: "127.0.0.1:$AGENT_PORT", tls_name: localhost}
gateway_id: gw-demo
agent_name: demo-agent
services:
  - {name: web, target: "127.0.0.1:$SERVICE_PORT"}
runtime: {shards: 2}
YAML

step "Starting the private HTTP service on 127.0.0.1:$SERVICE_PORT"
echo "Hello from the private network, served at $(date -u +%FT%TZ)" >"$DEMO/www/hello.txt"
python3 -m http.server "$SERVICE_PORT" --bind 127.0.0.1 --directory "$DEMO/www" >"$DEMO/www.log" 2>&1 &
echo $! >"$DEMO/www.pid"

step "Starting the Server (Agent port $AGENT_PORT, entry port $ENTRY_PORT)"
(cd "$DEMO/server" && exec "$SERVER_BIN" run --config server.yaml) >"$DEMO/server/console.log" 2>&1 &
echo $! >"$DEMO/server/server.pid"

step "Starting the Agent with scripts/linux/start.sh"
"$PKG/scripts/linux/start.sh"

step "Fetching http://127.0.0.1:$ENTRY_PORT/hello.txt through Server and Agent"
for _ in $(seq 1 50); do
    if BODY=$(curl -sS --max-time 2 "http://127.0.0.1:$ENTRY_PORT/hello.txt" 2>/dev/null); then break; fi
    BODY=""
    sleep 0.2
done
if [ -z "$BODY" ]; then
    echo "error: no response through the gateway. Server log: demo/server/server.log, Agent log: demo/agent/log/agent.log" >&2
    exit 1
fi
echo "$BODY"

step "Log lines of the session"
grep -h "session established" "$DEMO/server/server.log" "$PKG/log/agent.log" | head -n 4

step "Stopping the Agent with scripts/linux/stop.sh, then the Server and the HTTP service"
"$PKG/scripts/linux/stop.sh"
stop_pid_file "$DEMO/server/server.pid"
stop_pid_file "$DEMO/www.pid"
echo
echo "Demo finished. Files and logs are in $DEMO"
