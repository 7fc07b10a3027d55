#!/usr/bin/env bash
# Measures throughput, request rate and memory of the gateway on each runtime backend
# against a direct connection and, when `rathole` is on PATH, against rathole's TLS
# transport, all in one run.
#
# It builds the release binaries, then starts on 127.0.0.1: an iperf3 server (a new
# `iperf3 -s -1` per measurement), a redis-server, one Server and Agent pair per backend
# (`--backend io_uring` and `--backend tokio`), and rathole's server and client. Each
# measurement runs direct, through each gateway and through rathole back to back, so the
# ratios come from the same minutes of the same run. The report is written to
# perf/out/results.md and every raw output to perf/out/raw/.
#
# Settings (environment variables, defaults in brackets):
#   PERF_BACKENDS           gateway backends to measure, in this order: "io_uring",
#                           "tokio" or both, separated by spaces [io_uring tokio]
#   PERF_SHARDS             shards of each Server and each Agent [2]
#   PERF_DURATION           seconds per iperf3 measurement, 1 to 60 [5]
#   PERF_ROUNDS             rounds of all measurements, 1 to 10, reported as medians [3]
#   PERF_BASE_PORT          first of 11 consecutive 127.0.0.1 ports [25100]
#   PERF_REDIS_CLIENTS      redis-benchmark clients (-c), 1 to 1000 [50]
#   PERF_REDIS_REQUESTS_KA  GET requests with keep-alive (-k 1) [100000]
#   PERF_REDIS_REQUESTS_NEW GET requests with a new connection each (-k 0) [20000]
#   PERF_RATHOLE            "auto" measures rathole when it is on PATH, "off" skips it [auto]
#
# Every process it starts, load generators included, is recorded in perf/out/pids/ with
# its pid and start time, and stopped by that pid on exit, on Ctrl-C and on SIGTERM or
# SIGHUP. SIGKILL leaves them running; the next run then stops them first, after checking
# that the pid still belongs to the recorded process.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT="$REPO/perf/out"
RAW="$OUT/raw"
PIDS="$OUT/pids"
RUNS="$OUT/runs.tsv"
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
SERVER_BIN="$TARGET_DIR/release/ipaas-server"
AGENT_BIN="$TARGET_DIR/release/ipaas-agent"

BACKENDS_SETTING=${PERF_BACKENDS:-io_uring tokio}
SHARDS=${PERF_SHARDS:-2}
DURATION=${PERF_DURATION:-5}
ROUNDS=${PERF_ROUNDS:-3}
BASE_PORT=${PERF_BASE_PORT:-25100}
REDIS_CLIENTS=${PERF_REDIS_CLIENTS:-50}
REDIS_REQUESTS_KA=${PERF_REDIS_REQUESTS_KA:-100000}
REDIS_REQUESTS_NEW=${PERF_REDIS_REQUESTS_NEW:-20000}
RATHOLE_MODE=${PERF_RATHOLE:-auto}

# Ports: the services, then three per relay (control or Agent port, iperf3 entry, redis
# entry). The io_uring gateway and rathole keep the ports of earlier versions of this script.
PORT_COUNT=11
IPERF_PORT=$BASE_PORT
REDIS_PORT=$((BASE_PORT + 1))
RATHOLE_PORT=$((BASE_PORT + 5))
RATHOLE_IPERF_PORT=$((BASE_PORT + 6))
RATHOLE_REDIS_PORT=$((BASE_PORT + 7))

# Upper bounds on the time one client command may take, in seconds.
IPERF_LIMIT=$((DURATION + 30))
REDIS_LIMIT=300

step() { printf '\n==> %s\n' "$*"; }
fail() { echo "error: $*" >&2; exit 1; }

# Checks that $2 is an integer from $3 to $4. $1 names the variable in the message.
check_int() {
    local name=$1 value=$2 min=$3 max=$4
    if ! [[ $value =~ ^[0-9]+$ ]] || ((10#$value < min || 10#$value > max)); then
        fail "$name=$value is invalid. Use an integer from $min to $max"
    fi
}

# Prints port $2 (agent, iperf or redis) of the gateway on backend $1.
gateway_port() {
    local first
    case $1 in
        io_uring) first=$((BASE_PORT + 2)) ;;
        tokio) first=$((BASE_PORT + 8)) ;;
    esac
    case $2 in
        agent) echo "$first" ;;
        iperf) echo $((first + 1)) ;;
        redis) echo $((first + 2)) ;;
    esac
}

# Prints the start time of process $1 in clock ticks after boot (field 22 of
# /proc/PID/stat), or nothing when it has exited. With the pid it identifies the process,
# because the kernel can reuse a pid only for a process that starts later.
start_time() {
    local fields
    [ -r "/proc/$1/stat" ] || return 0
    read -r -a fields <<<"$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null)" || return 0
    echo "${fields[19]:-}"
}

# Records pid $2 under name $1 in $PIDS/$1.pid, with its start time.
record_pid() {
    echo "$2 $(start_time "$2")" >"$PIDS/$1.pid"
}

# Starts a command in the background with stdout and stderr in $2 and records its pid
# under name $1. The remaining arguments are the command.
start_process() {
    local name=$1 log=$2
    shift 2
    # Descriptor 9 holds the run lock. The child closes it, so that the lock is released
    # when this script ends, even if the child outlives it.
    "$@" >"$log" 2>&1 9<&- &
    record_pid "$name" $!
    printf '%s\t%s\n' "$name" "$(quote_command "$@")" >>"$OUT/processes.tsv"
}

pid_of() { cut -d' ' -f1 "$PIDS/$1.pid"; }

# Succeeds while the process recorded under name $1 runs: its pid exists and has the
# recorded start time.
is_running() {
    local file="$PIDS/$1.pid" pid recorded
    [ -f "$file" ] || return 1
    read -r pid recorded <"$file"
    [ -n "$recorded" ] && [ "$(start_time "$pid")" = "$recorded" ]
}

# Prints the arguments as one shell-quoted command line.
quote_command() {
    local quoted
    printf -v quoted '%q ' "$@"
    echo "${quoted% }"
}

# Sends SIGTERM to the process recorded under name $1, waits up to 5 s, then sends
# SIGKILL. A pid that now belongs to another process is left alone.
stop_process() {
    local file="$PIDS/$1.pid"
    [ -f "$file" ] || return 0
    local pid
    pid=$(pid_of "$1")
    if is_running "$1"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            is_running "$1" || break
            sleep 0.1
        done
        if is_running "$1"; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    rm -f "$file"
}

# Stops every process recorded in $PIDS, including those of an earlier run that was
# killed with SIGKILL.
stop_all() {
    [ -d "$PIDS" ] || return 0
    local file
    for file in "$PIDS"/*.pid; do
        [ -e "$file" ] || continue
        stop_process "$(basename "$file" .pid)"
    done
}
# Fails unless nothing listens on 127.0.0.1:$1.
check_port_free() {
    if [ -n "$(ss -Hltn "src 127.0.0.1:$1")" ]; then
        fail "127.0.0.1:$1 is already in use. Stop its listener or set PERF_BASE_PORT"
    fi
}

# Waits up to $2 seconds until something listens on 127.0.0.1:$1.
wait_listening() {
    local port=$1 limit=$2
    for _ in $(seq 1 $((limit * 10))); do
        [ -n "$(ss -Hltn "src 127.0.0.1:$port")" ] && return 0
        sleep 0.1
    done
    fail "nothing listens on 127.0.0.1:$port after ${limit}s"
}

# Waits up to $2 seconds until `redis-cli PING` on 127.0.0.1:$1 returns PONG.
wait_redis() {
    local port=$1 limit=$2
    for _ in $(seq 1 $((limit * 5))); do
        [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.2
    done
    return 1
}

# Waits up to $3 seconds until file $1 contains at least $4 lines matching $2.
wait_log() {
    local file=$1 pattern=$2 limit=$3 count=$4
    for _ in $(seq 1 $((limit * 10))); do
        [ "$(grep -c -- "$pattern" "$file" 2>/dev/null || true)" -ge "$count" ] && return 0
        sleep 0.1
    done
    return 1
}

# Waits up to 20 s for the start-up line ("... starting on the BACKEND backend: reason")
# of the recorded process $1 in log file $2, and fails unless it names backend $3. $4 is
# the file with the process's stderr, for the message.
check_backend() {
    local name=$1 log=$2 backend=$3 console=$4 line=""
    for _ in $(seq 1 200); do
        line=$(grep -m 1 -- "starting on the" "$log" 2>/dev/null || true)
        [ -n "$line" ] && break
        is_running "$name" || break
        sleep 0.1
    done
    [ -n "$line" ] ||
        fail "$name exited or logged no start-up line within 20 s; see $console and $log"
    case $line in
        *"starting on the $backend backend"*) ;;
        *) fail "$name was started with --backend $backend but logged: $line" ;;
    esac
}

# Prints the CPU seconds (user + system) used so far by the recorded processes named in
# the arguments, from /proc/PID/stat. A process that has exited counts as 0.
cpu_seconds() {
    local ticks=0 name pid fields
    for name in "$@"; do
        pid=$(pid_of "$name")
        [ -r "/proc/$pid/stat" ] || continue
        # Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
        read -r -a fields <<<"$(sed 's/^.*) //' "/proc/$pid/stat")"
        ticks=$((ticks + fields[11] + fields[12]))
    done
    python3 -c "import sys; print(f'{int(sys.argv[1]) / int(sys.argv[2]):.2f}')" "$ticks" "$(getconf CLK_TCK)"
}

# Prints, summed over the live threads of the recorded processes named in the arguments:
# nanoseconds spent waiting in a run queue (/proc/PID/task/TID/schedstat), then voluntary
# and involuntary context switches (/proc/PID/task/TID/status). Threads that have exited
# are missing from the sums; the shard threads live as long as their process.
scheduler_counters() {
    local name pid files=()
    for name in "$@"; do
        pid=$(pid_of "$name")
        [ -d "/proc/$pid/task" ] || continue
        files+=("/proc/$pid"/task/*/schedstat "/proc/$pid"/task/*/status)
    done
    if [ "${#files[@]}" -eq 0 ]; then
        echo "0 0 0"
        return
    fi
    # A schedstat file is one line of three numbers: run time, run-queue wait and time slices.
    { cat "${files[@]}" 2>/dev/null || true; } | awk '
        NF == 3 && $1 ~ /^[0-9]+$/ { wait += $2 }
        /^voluntary_ctxt_switches:/ { voluntary += $2 }
        /^nonvoluntary_ctxt_switches:/ { involuntary += $2 }
        END { printf "%.0f %.0f %.0f\n", wait, voluntary, involuntary }
    '
}

# Prints the busy and total jiffies of all CPUs from the first line of /proc/stat.
machine_jiffies() {
    local label user nice system idle iowait irq softirq steal
    read -r label user nice system idle iowait irq softirq steal _ </proc/stat
    echo "$((user + nice + system + irq + softirq + steal)) $((user + nice + system + idle + iowait + irq + softirq + steal))"
}

# Relay processes of each path, for the CPU columns of the report.
relay_processes() {
    case $1 in
        direct) ;;
        gateway-*) echo "ipaas-server-${1#gateway-} ipaas-agent-${1#gateway-}" ;;
        rathole) echo "rathole-server rathole-client" ;;
    esac
}

# Runs one measurement and appends a line to $RUNS: round, measurement, path, raw output
# file, exit status, wall seconds, relay CPU seconds, relay run-queue wait seconds, relay
# voluntary and involuntary context switches, machine busy percent and the command. The
# round is the global $round. Arguments: measurement, path, raw output file, command...
#
# The command runs in the background and is recorded as "client", so that a signal stops
# it at once instead of after its `timeout`.
measure() {
    local measurement=$1 path=$2 raw=$3
    shift 3
    local relays cpu_before cpu_after sched_before sched_after jiffies_before jiffies_after
    local start end status=0
    read -r -a relays <<<"$(relay_processes "$path")"
    cpu_before=$(cpu_seconds "${relays[@]}")
    sched_before=$(scheduler_counters "${relays[@]}")
    jiffies_before=$(machine_jiffies)
    start=$(date +%s.%N)

    "$@" >"$raw" 2>"$raw.stderr" 9<&- &
    record_pid client $!
    wait "$(pid_of client)" || status=$?
    rm -f "$PIDS/client.pid"

    end=$(date +%s.%N)
    jiffies_after=$(machine_jiffies)
    sched_after=$(scheduler_counters "${relays[@]}")
    cpu_after=$(cpu_seconds "${relays[@]}")
    python3 - "$round" "$measurement" "$path" "$raw" "$status" "$start" "$end" "$cpu_before" "$cpu_after" \
        "$sched_before" "$sched_after" "$jiffies_before" "$jiffies_after" "$(quote_command "$@")" \
        >>"$RUNS" <<'PY'
import sys
(round_, measurement, path, raw, status, start, end, cpu_before, cpu_after,
 sched_before, sched_after, jiffies_before, jiffies_after, command) = sys.argv[1:]
busy_before, total_before = map(int, jiffies_before.split())
busy_after, total_after = map(int, jiffies_after.split())
busy = 100 * (busy_after - busy_before) / max(total_after - total_before, 1)
wait_ns, voluntary, involuntary = (
    after - before
    for before, after in zip(map(int, sched_before.split()), map(int, sched_after.split()))
)
wall = float(end) - float(start)
cpu = float(cpu_after) - float(cpu_before)
fields = [round_, measurement, path, raw, status, f"{wall:.2f}", f"{cpu:.2f}",
          f"{wait_ns / 1e9:.2f}", str(voluntary), str(involuntary), f"{busy:.0f}", command]
print("\t".join(fields))
PY
    [ "$status" -eq 0 ] || echo "    $measurement via $path failed with status $status, see $raw.stderr" >&2
}

# Runs iperf3 once against a fresh `iperf3 -s -1`.
# Arguments: measurement, path, entry port, then extra iperf3 client options.
measure_iperf() {
    local measurement=$1 path=$2 port=$3
    shift 3
    start_process iperf3-server "$RAW/iperf3-server-$measurement-$path-$round.log" \
        iperf3 -s -1 -B 127.0.0.1 -p "$IPERF_PORT"
    wait_listening "$IPERF_PORT" 10
    measure "$measurement" "$path" "$RAW/$measurement-$path-$round.json" \
        timeout "$IPERF_LIMIT" iperf3 -c 127.0.0.1 -p "$port" -t "$DURATION" -J \
        --connect-timeout 5000 "$@"

    # The server exits after one test. It is stopped by pid if the test broke off.
    for _ in $(seq 1 50); do
        is_running iperf3-server || break
        sleep 0.1
    done
    stop_process iperf3-server
}

# Runs redis-benchmark GET. Arguments: measurement, path, entry port, keep-alive (0 or 1),
# number of requests.
measure_redis() {
    local measurement=$1 path=$2 port=$3 keepalive=$4 requests=$5
    measure "$measurement" "$path" "$RAW/$measurement-$path-$round.csv" \
        timeout "$REDIS_LIMIT" redis-benchmark -h 127.0.0.1 -p "$port" -t get \
        -c "$REDIS_CLIENTS" -n "$requests" -k "$keepalive" --csv
}

# Appends VmHWM, VmRSS and the thread count of the recorded process $2 to
# $OUT/memory.tsv under label $1.
record_memory() {
    local label=$1 name=$2 pid
    pid=$(pid_of "$name")
    awk -v label="$label" -v name="$name" '
        /^VmHWM:/ { hwm = $2 }
        /^VmRSS:/ { rss = $2 }
        /^Threads:/ { threads = $2 }
        END { print label "\t" name "\t" hwm "\t" rss "\t" threads }
    ' "/proc/$pid/status" >>"$OUT/memory.tsv"
}

# Prints one line "thread name: CPU list" for every thread of the recorded processes named
# in the arguments that is pinned to fewer CPUs than the machine has.
pinned_threads() {
    local name pid task comm cpus
    for name in "$@"; do
        pid=$(pid_of "$name")
        for task in /proc/"$pid"/task/*; do
            comm=$(cat "$task/comm")
            cpus=$(awk '/^Cpus_allowed_list:/ { print $2 }' "$task/status")
            [ "$cpus" = "0-$(($(nproc) - 1))" ] || printf '%s: CPU %s\n' "$comm" "$cpus"
        done
    done
}

# Creates a PKI, an Agent RSA key and the configs of the gateway on backend $1 under
# $OUT/gateway-$1, starts its Server and Agent with `--backend $1`, checks that both
# logged that backend, and waits until redis replies to PING through the gateway.
start_gateway() {
    local backend=$1 agent_port iperf_port redis_port dir server_dir agent_dir
    agent_port=$(gateway_port "$backend" agent)
    iperf_port=$(gateway_port "$backend" iperf)
    redis_port=$(gateway_port "$backend" redis)
    dir="$OUT/gateway-$backend"
    server_dir="$dir/server"
    agent_dir="$dir/agent"

    step "Creating the PKI, the Agent's RSA key and the configs of the $backend gateway"
    mkdir -p "$server_dir/keys" "$agent_dir/configs/secret" "$agent_dir/log"
    "$SERVER_BIN" pki init --dir "$server_dir/pki" >"$RAW/pki-$backend.log"
    "$SERVER_BIN" pki issue-agent --dir "$server_dir/pki" --gateway gw-perf \
        --out "$agent_dir/configs/client" >>"$RAW/pki-$backend.log"
    openssl genrsa -out "$agent_dir/configs/secret/private.pem" 2048 2>/dev/null
    chmod 600 "$agent_dir/configs/secret/private.pem"
    openssl rsa -in "$agent_dir/configs/secret/private.pem" -RSAPublicKey_out \
        -out "$server_dir/keys/gw-perf.pem" 2>/dev/null

    cat >"$server_dir/server.yaml" <<YAML
listen: "127.0.0.1:$agent_port"
tls: {ca: pki/ca.pem, cert: pki/server.pem, key: pki/server.key}
runtime: {shards: $SHARDS}
drain_timeout: "2s"
log: {level: info, file: server.log}
gateways:
  - id: gw-perf
    public_keys: [keys/gw-perf.pem]
    allow: ["127.0.0.0/8"]
    services:
      - {name: iperf, listen: "127.0.0.1:$iperf_port"}
      - {name: redis, listen: "127.0.0.1:$redis_port"}
YAML
    cat >"$agent_dir/configs/config.yaml" <<YAML
server: {address: "127.0.0.1:$agent_port", tls_name: localhost}
gateway_id: gw-perf
agent_name: perf-agent
services:
  - {name: iperf, target: "127.0.0.1:$IPERF_PORT"}
  - {name: redis, target: "127.0.0.1:$REDIS_PORT"}
runtime: {shards: $SHARDS}
YAML
    cat >"$agent_dir/configs/logger_config.yaml" <<YAML
level: info
file: log/agent.log
YAML

    step "Starting the $backend Server (Agent port $agent_port) and Agent, $SHARDS shards each"
    start_process "ipaas-server-$backend" "$server_dir/console.log" \
        "$SERVER_BIN" run --config "$server_dir/server.yaml" --backend "$backend"
    check_backend "ipaas-server-$backend" "$server_dir/server.log" "$backend" "$server_dir/console.log"
    wait_listening "$agent_port" 20
    start_process "ipaas-agent-$backend" "$agent_dir/console.log" \
        "$AGENT_BIN" --config "$agent_dir/configs/config.yaml" --backend "$backend"
    check_backend "ipaas-agent-$backend" "$agent_dir/log/agent.log" "$backend" "$agent_dir/console.log"
    wait_log "$server_dir/server.log" "Agent session established" 30 "$SHARDS" ||
        fail "the $backend Agent did not establish $SHARDS sessions; see $server_dir/server.log and $agent_dir/log/agent.log"
    wait_redis "$redis_port" 20 ||
        fail "redis does not answer through the $backend gateway; see $server_dir/server.log and $agent_dir/log/agent.log"
    record_memory idle "ipaas-server-$backend"
    record_memory idle "ipaas-agent-$backend"
}

# Prints "N on shard S" for the Server shards of the Agent sessions of the gateway on
# backend $1. SO_REUSEPORT picks the shard from the connection's address hash, so it can
# differ between runs.
session_shards() {
    grep "Agent session established" "$OUT/gateway-$1/server/server.log" |
        sed -n 's/.*[{ ]shard=\([0-9]*\)[ }].*/\1/p' | sort | uniq -c |
        awk '{ printf "%s%s on shard %s", sep, $1, $2; sep = ", " }'
}

# Prints the commit checked out, and whether src/, Cargo.toml or Cargo.lock differ from it.
# Called right after the build, so that it describes what was built.
source_version() {
    if ! command -v git >/dev/null || ! git -C "$REPO" rev-parse --git-dir >/dev/null 2>&1; then
        echo "unknown (not a git checkout)"
        return
    fi
    local commit
    commit=$(git -C "$REPO" rev-parse --short HEAD)
    if [ -n "$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock)" ]; then
        echo "$commit with uncommitted changes in src/, Cargo.toml or Cargo.lock"
    else
        echo "$commit"
    fi
}

# --- Checks -----------------------------------------------------------------------------

read -r -a BACKENDS <<<"$BACKENDS_SETTING"
[ "${#BACKENDS[@]}" -gt 0 ] || fail "PERF_BACKENDS is empty. Use io_uring, tokio or \"io_uring tokio\""
for backend in "${BACKENDS[@]}"; do
    case $backend in
        io_uring | tokio) ;;
        *) fail "PERF_BACKENDS contains \"$backend\", which is invalid. Use io_uring, tokio or both" ;;
    esac
done
[ "$(printf '%s\n' "${BACKENDS[@]}" | sort -u | wc -l)" -eq "${#BACKENDS[@]}" ] ||
    fail "PERF_BACKENDS=\"$BACKENDS_SETTING\" names a backend twice"
check_int PERF_SHARDS "$SHARDS" 1 64
check_int PERF_DURATION "$DURATION" 1 60
check_int PERF_ROUNDS "$ROUNDS" 1 10
check_int PERF_BASE_PORT "$BASE_PORT" 1024 $((65536 - PORT_COUNT))
check_int PERF_REDIS_CLIENTS "$REDIS_CLIENTS" 1 1000
check_int PERF_REDIS_REQUESTS_KA "$REDIS_REQUESTS_KA" 1 10000000
check_int PERF_REDIS_REQUESTS_NEW "$REDIS_REQUESTS_NEW" 1 1000000
case $RATHOLE_MODE in
    auto | off) ;;
    *) fail "PERF_RATHOLE=$RATHOLE_MODE is invalid. Use auto or off" ;;
esac

for tool in cargo openssl python3 iperf3 redis-server redis-cli redis-benchmark ss timeout flock; do
    command -v "$tool" >/dev/null ||
        fail "$tool is required (Debian: apt-get install iperf3 redis-server redis-tools iproute2 openssl python3 util-linux)"
done

# One run at a time: a second run would stop the first one's processes below.
exec 9<"${BASH_SOURCE[0]}"
flock -n 9 || fail "another perf/run.sh is running"
trap stop_all EXIT
trap 'exit 130' INT TERM HUP

RATHOLE_BIN=""
RATHOLE_REASON="PERF_RATHOLE=off"
if [ "$RATHOLE_MODE" = auto ]; then
    if RATHOLE_BIN=$(command -v rathole); then
        RATHOLE_REASON=""
    else
        RATHOLE_BIN=""
        RATHOLE_REASON="rathole is not on PATH"
    fi
fi

if compgen -G "$PIDS/*.pid" >/dev/null; then
    step "Stopping the processes that an earlier, killed run left running"
    stop_all
fi

for port in $(seq "$BASE_PORT" $((BASE_PORT + PORT_COUNT - 1))); do
    check_port_free "$port"
done

# --- Build and layout -------------------------------------------------------------------

step "Building (cargo build --release)"
cargo build --release --manifest-path "$REPO/Cargo.toml"
SOURCE=$(source_version)

rm -rf "$OUT"
mkdir -p "$RAW" "$PIDS"
printf 'round\tmeasurement\tpath\traw\tstatus\twall_s\trelay_cpu_s\trelay_runqueue_wait_s\trelay_voluntary_switches\trelay_involuntary_switches\tmachine_busy_pct\tcommand\n' >"$RUNS"
printf 'phase\tprocess\tvm_hwm_kib\tvm_rss_kib\tthreads\n' >"$OUT/memory.tsv"
printf 'process\tcommand\n' >"$OUT/processes.tsv"

# --- Services and relays ----------------------------------------------------------------

step "Starting redis-server on 127.0.0.1:$REDIS_PORT"
start_process redis-server "$RAW/redis-server.log" \
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no
wait_redis "$REDIS_PORT" 10 || fail "redis-server does not answer; see $RAW/redis-server.log"
# redis-benchmark GET reads this literal key. The value has 3 bytes, like the values that
# redis-benchmark writes by default (-d 3).
redis-cli -h 127.0.0.1 -p "$REDIS_PORT" set 'key:__rand_int__' xxx >/dev/null

declare -A PINNING
for backend in "${BACKENDS[@]}"; do
    start_gateway "$backend"
    PINNING[$backend]=$(pinned_threads "ipaas-server-$backend" "ipaas-agent-$backend" |
        sort -u | paste -sd ',' | sed 's/,/, /g')
done

if [ -n "$RATHOLE_BIN" ]; then
    step "Starting rathole with its TLS transport (control port $RATHOLE_PORT)"
    RH="$OUT/rathole"
    mkdir -p "$RH"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=perf-ca" \
        -keyout "$RH/ca.key" -out "$RH/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$RH/server.key" -out "$RH/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$RH/san.ext"
    openssl x509 -req -in "$RH/server.csr" -CA "$RH/ca.pem" -CAkey "$RH/ca.key" \
        -CAcreateserial -days 2 -extfile "$RH/san.ext" -out "$RH/server.pem" 2>/dev/null
    PFX_PASSWORD=$(openssl rand -hex 16)
    PFX_PASSWORD=$PFX_PASSWORD openssl pkcs12 -export -out "$RH/identity.pfx" \
        -inkey "$RH/server.key" -in "$RH/server.pem" -certfile "$RH/ca.pem" \
        -passout env:PFX_PASSWORD
    RATHOLE_TOKEN=$(openssl rand -hex 16)

    cat >"$RH/server.toml" <<TOML
[server]
bind_addr = "127.0.0.1:$RATHOLE_PORT"
default_token = "$RATHOLE_TOKEN"

[server.transport]
type = "tls"

[server.transport.tls]
pkcs12 = "$RH/identity.pfx"
pkcs12_password = "$PFX_PASSWORD"

[server.services.iperf]
bind_addr = "127.0.0.1:$RATHOLE_IPERF_PORT"

[server.services.redis]
bind_addr = "127.0.0.1:$RATHOLE_REDIS_PORT"
TOML
    cat >"$RH/client.toml" <<TOML
[client]
remote_addr = "127.0.0.1:$RATHOLE_PORT"
default_token = "$RATHOLE_TOKEN"

[client.transport]
type = "tls"

[client.transport.tls]
trusted_root = "$RH/ca.pem"
hostname = "localhost"

[client.services.iperf]
local_addr = "127.0.0.1:$IPERF_PORT"

[client.services.redis]
local_addr = "127.0.0.1:$REDIS_PORT"
TOML
    chmod 600 "$RH/server.toml" "$RH/client.toml"

    start_process rathole-server "$RH/server.log" "$RATHOLE_BIN" --server "$RH/server.toml"
    wait_listening "$RATHOLE_PORT" 20
    start_process rathole-client "$RH/client.log" "$RATHOLE_BIN" --client "$RH/client.toml"
    if wait_redis "$RATHOLE_REDIS_PORT" 30; then
        record_memory idle rathole-server
        record_memory idle rathole-client
    else
        RATHOLE_REASON="rathole did not relay redis within 30 s (see perf/out/rathole/*.log)"
        echo "warning: $RATHOLE_REASON, so rathole is not measured" >&2
        stop_process rathole-client
        stop_process rathole-server
        RATHOLE_BIN=""
    fi
fi

PATHS=(direct)
for backend in "${BACKENDS[@]}"; do
    PATHS+=("gateway-$backend")
done
[ -n "$RATHOLE_BIN" ] && PATHS+=(rathole)

# Prints the port a client uses to reach service $2 (iperf or redis) over path $1.
entry_port() {
    case $1/$2 in
        direct/iperf) echo "$IPERF_PORT" ;;
        direct/redis) echo "$REDIS_PORT" ;;
        gateway-*/*) gateway_port "${1#gateway-}" "$2" ;;
        rathole/iperf) echo "$RATHOLE_IPERF_PORT" ;;
        rathole/redis) echo "$RATHOLE_REDIS_PORT" ;;
    esac
}

# --- Measurements -----------------------------------------------------------------------

for round in $(seq 1 "$ROUNDS"); do
    step "Round $round of $ROUNDS"
    for path in "${PATHS[@]}"; do
        echo "    iperf3, 1 stream, ${DURATION}s, $path"
        measure_iperf iperf-1 "$path" "$(entry_port "$path" iperf)" -P 1
    done
    for path in "${PATHS[@]}"; do
        echo "    iperf3, 8 streams, ${DURATION}s, $path"
        measure_iperf iperf-8 "$path" "$(entry_port "$path" iperf)" -P 8
    done
    for path in "${PATHS[@]}"; do
        echo "    iperf3, 1 stream reverse (-R), ${DURATION}s, $path"
        measure_iperf iperf-1-reverse "$path" "$(entry_port "$path" iperf)" -P 1 -R
    done
    for path in "${PATHS[@]}"; do
        echo "    redis-benchmark GET, keep-alive, $REDIS_REQUESTS_KA requests, $path"
        measure_redis redis-keepalive "$path" "$(entry_port "$path" redis)" 1 "$REDIS_REQUESTS_KA"
    done
    for path in "${PATHS[@]}"; do
        echo "    redis-benchmark GET, new connection per request, $REDIS_REQUESTS_NEW requests, $path"
        measure_redis redis-newconn "$path" "$(entry_port "$path" redis)" 0 "$REDIS_REQUESTS_NEW"
    done
done

# --- Memory, logs and report ------------------------------------------------------------

step "Recording memory and stopping the relays"
for backend in "${BACKENDS[@]}"; do
    record_memory end "ipaas-server-$backend"
    record_memory end "ipaas-agent-$backend"
done
if [ -n "$RATHOLE_BIN" ]; then
    record_memory end rathole-server
    record_memory end rathole-client
fi
for backend in "${BACKENDS[@]}"; do
    stop_process "ipaas-agent-$backend"
    stop_process "ipaas-server-$backend"
done
stop_process rathole-client
stop_process rathole-server
stop_process redis-server

{
    echo "cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
    echo "nproc=$(nproc)"
    echo "kernel=$(uname -r)"
    echo "memory=$(awk '/^MemTotal:/ { printf "%.1f GiB", $2 / 1048576 }' /proc/meminfo)"
    echo "loadavg_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "source=$SOURCE"
    echo "rustc=$(rustc --version)"
    echo "iperf3=$(iperf3 --version | head -n 1)"
    echo "redis=$(redis-server --version)"
    echo "rathole=${RATHOLE_BIN:+$("$RATHOLE_BIN" --version 2>&1 | awk '/Build Version/ { print "rathole " $3 }')}"
    echo "rathole_reason=$RATHOLE_REASON"
    echo "backends=${BACKENDS[*]}"
    echo "shards=$SHARDS"
    for backend in "${BACKENDS[@]}"; do
        echo "pinning_$backend=${PINNING[$backend]}"
        echo "session_shards_$backend=$(session_shards "$backend")"
    done
    echo "duration=$DURATION"
    echo "rounds=$ROUNDS"
    echo "redis_clients=$REDIS_CLIENTS"
} >"$OUT/machine.txt"

step "Writing perf/out/results.md"
python3 "$REPO/perf/report.py" "$OUT"
echo
echo "Report: $OUT/results.md"
for backend in "${BACKENDS[@]}"; do
    echo "Logs of the $backend gateway: $OUT/gateway-$backend/server/server.log, $OUT/gateway-$backend/agent/log/agent.log"
done
