#!/usr/bin/env python3
"""Write results.md from the raw outputs that perf/run.sh leaves in its output folder.

Usage: report.py OUT_DIR

Reads OUT_DIR/runs.tsv (one line per round, measurement and path), the iperf3 JSON and
redis-benchmark CSV files it names, memory.tsv, processes.tsv and machine.txt. Figures are
medians over the rounds. Ratios are computed within each round, because the paths of one
round ran back to back, and the median of those per-round ratios is reported.

The paths are "direct", "gateway-io_uring" and "gateway-tokio" (the gateway's Server and
Agent on that runtime backend) and "rathole".
"""

import csv
import json
import re
import statistics
import sys
from pathlib import Path

GATEWAY_PREFIX = "gateway-"
IO_URING = "gateway-io_uring"
TOKIO = "gateway-tokio"

# Targets: (label, measurement, metric, denominator path, minimum ratio). Each gateway
# path is the numerator.
TARGETS = (
    ("iperf3 1 stream: gateway >= 2x rathole", "iperf-1", "receiver_gbps", "rathole", 2.0),
    ("iperf3 8 streams: gateway >= 2x rathole", "iperf-8", "receiver_gbps", "rathole", 2.0),
    ("GET keep-alive: gateway >= 85% of direct", "redis-keepalive", "rps", "direct", 0.85),
    ("GET new connection: gateway >= 10x rathole", "redis-newconn", "rps", "rathole", 10.0),
)

# Rows of the main tables: (measurement, metric, label).
ROWS = (
    ("iperf-1", "sender_gbps", "iperf3 -P 1, sender (Gbit/s)"),
    ("iperf-1", "receiver_gbps", "iperf3 -P 1, receiver (Gbit/s)"),
    ("iperf-8", "sender_gbps", "iperf3 -P 8, sender (Gbit/s)"),
    ("iperf-8", "receiver_gbps", "iperf3 -P 8, receiver (Gbit/s)"),
    ("iperf-1-reverse", "sender_gbps", "iperf3 -P 1 -R, sender (Gbit/s)"),
    ("iperf-1-reverse", "receiver_gbps", "iperf3 -P 1 -R, receiver (Gbit/s)"),
    ("redis-keepalive", "rps", "GET -k 1 (requests/s)"),
    ("redis-keepalive", "p50_ms", "GET -k 1, p50 latency (ms)"),
    ("redis-keepalive", "p99_ms", "GET -k 1, p99 latency (ms)"),
    ("redis-newconn", "rps", "GET -k 0 (requests/s)"),
    ("redis-newconn", "p50_ms", "GET -k 0, p50 latency (ms)"),
    ("redis-newconn", "p99_ms", "GET -k 0, p99 latency (ms)"),
)

# Main metric of each measurement, for the per-round table.
MAIN_METRIC = {
    "iperf-1": ("receiver_gbps", "Gbit/s"),
    "iperf-8": ("receiver_gbps", "Gbit/s"),
    "iperf-1-reverse": ("receiver_gbps", "Gbit/s"),
    "redis-keepalive": ("rps", "requests/s"),
    "redis-newconn": ("rps", "requests/s"),
}


def read_tsv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def is_gateway(path):
    return path.startswith(GATEWAY_PREFIX)


def column_label(path):
    """Return the table heading of a path: "gateway io_uring" for "gateway-io_uring"."""
    return path.replace("-", " ", 1) if is_gateway(path) else path


def short_label(path):
    """Return the name of a path in ratio headings: the backend for a gateway path."""
    return path[len(GATEWAY_PREFIX):] if is_gateway(path) else path


def parse_iperf(path):
    """Return sender and receiver Gbit/s, bytes received and CPU use from iperf3 -J output."""
    data = json.loads(Path(path).read_text())
    if "error" in data:
        raise ValueError(f"iperf3: {data['error']}")
    end = data["end"]
    cpu = end.get("cpu_utilization_percent", {})
    return {
        "sender_gbps": end["sum_sent"]["bits_per_second"] / 1e9,
        "receiver_gbps": end["sum_received"]["bits_per_second"] / 1e9,
        "bytes": end["sum_received"]["bytes"],
        "client_cpu_pct": cpu.get("host_total"),
        "server_cpu_pct": cpu.get("remote_total"),
    }


def parse_redis(path):
    """Return requests/s and p50/p99 latency of the GET row of redis-benchmark --csv."""
    with open(path, newline="") as file:
        rows = [row for row in csv.DictReader(file) if row.get("test") == "GET"]
    if not rows:
        raise ValueError("redis-benchmark printed no GET row")
    row = rows[0]
    return {
        "rps": float(row["rps"]),
        "p50_ms": float(row["p50_latency_ms"]),
        "p99_ms": float(row["p99_latency_ms"]),
    }


def load_results(runs):
    """Map (round, measurement, path) to its parsed figures, or to an error string."""
    results = {}
    for run in runs:
        key = (run["round"], run["measurement"], run["path"])
        raw = run["raw"]
        try:
            if run["status"] != "0":
                stderr = Path(raw + ".stderr").read_text(errors="replace").strip()
                raise ValueError(f"exit status {run['status']}: {stderr[-200:]}")
            parse = parse_iperf if raw.endswith(".json") else parse_redis
            results[key] = parse(raw)
        except (OSError, ValueError, KeyError) as error:
            results[key] = f"failed ({error})".replace("|", "/").replace("\n", " ")
    return results


def format_number(metric, number):
    if metric.endswith(("gbps", "_ms")):
        return f"{number:.2f}"
    return f"{number:,.0f}"


def summarize(numbers, errors, rounds, digits):
    """Format the median of `numbers` with their range, and how many rounds failed."""
    if not numbers:
        return errors[0] if errors else "not measured"
    text = digits(statistics.median(numbers))
    if len(numbers) > 1:
        text += f" ({digits(min(numbers))}-{digits(max(numbers))})"
    if errors:
        text += f", {len(errors)} of {rounds} rounds failed"
    return text


def ratio_text(ratios, rounds):
    if not ratios:
        return "-"
    return summarize(ratios, [], rounds, lambda n: f"{n:.2f}")


class Figures:
    """Parsed figures of every round, with per-round ratios."""

    def __init__(self, runs):
        self.results = load_results(runs)
        self.rounds = sorted({run["round"] for run in runs}, key=int)
        measured = list(dict.fromkeys(run["path"] for run in runs))
        self.gateways = [path for path in measured if is_gateway(path)]
        # rathole keeps its column when it was not measured, to show why.
        self.paths = ["direct", *self.gateways, "rathole"]

    def ratio_pairs(self):
        """Return the (numerator, denominator) paths of the ratio columns: each gateway
        against direct, each gateway against rathole, then tokio against io_uring."""
        pairs = [(gateway, "direct") for gateway in self.gateways]
        pairs += [(gateway, "rathole") for gateway in self.gateways]
        if IO_URING in self.gateways and TOKIO in self.gateways:
            pairs.append((TOKIO, IO_URING))
        return pairs

    def values(self, measurement, metric, path):
        """Return the numbers of all rounds that succeeded, and the errors of the others."""
        numbers, errors = [], []
        for round_ in self.rounds:
            value = self.results.get((round_, measurement, path))
            if isinstance(value, dict):
                numbers.append(value[metric])
            elif isinstance(value, str):
                errors.append(value)
        return numbers, errors

    def ratios(self, measurement, metric, numerator, denominator):
        """Return numerator/denominator of each round in which both paths succeeded."""
        ratios = []
        for round_ in self.rounds:
            top = self.results.get((round_, measurement, numerator))
            bottom = self.results.get((round_, measurement, denominator))
            if isinstance(top, dict) and isinstance(bottom, dict) and bottom[metric]:
                ratios.append(top[metric] / bottom[metric])
        return ratios

    def cell(self, measurement, metric, path):
        numbers, errors = self.values(measurement, metric, path)
        return summarize(numbers, errors, len(self.rounds), lambda n: format_number(metric, n))

    def ratio_cell(self, measurement, metric, numerator, denominator):
        ratios = self.ratios(measurement, metric, numerator, denominator)
        return ratio_text(ratios, len(self.rounds))


def relay_cost(run, value):
    """Return relay CPU per GB received (iperf3) or per request (redis), or None."""
    return per_unit(run, value, float(run["relay_cpu_s"]), 1e9, 1e6)


def relay_switches(run, value):
    """Return relay context switches per MB received (iperf3) or per request (redis)."""
    switches = int(run["relay_voluntary_switches"]) + int(run["relay_involuntary_switches"])
    return per_unit(run, value, switches, 1e6, 1)


def per_unit(run, value, amount, bytes_per_unit, request_scale):
    """Divide `amount` by the units of data the run moved (`bytes_per_unit` bytes each) or
    by its requests, then multiply by `request_scale`. Return None for direct and failed
    runs."""
    if run["path"] == "direct" or not isinstance(value, dict):
        return None
    if "bytes" in value:
        return amount / (value["bytes"] / bytes_per_unit)
    requests = re.search(r" -n ([0-9]+)", run["command"])
    if requests is None:
        return None
    return amount / int(requests.group(1)) * request_scale


def median_text(numbers, digits=2):
    numbers = [n for n in numbers if n is not None]
    if not numbers:
        return "-"
    return f"{statistics.median(numbers):.{digits}f}"


def shorten(command, out):
    """Write paths under the output folder relative to the repository."""
    return command.replace(str(out.resolve()), "perf/out")


def machine_lines(machine):
    rathole = machine.get("rathole") or "not measured: " + machine.get("rathole_reason", "")
    lines = [
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu_model', '?')}, {machine.get('nproc', '?')} cores (nproc)",
        f"- Memory: {machine.get('memory', '?')}",
        f"- Kernel: {machine.get('kernel', '?')}",
        f"- Load average at the end: {machine.get('loadavg_end', '?')}",
        f"- Gateway built from: {machine.get('source', '?')}",
        f"- {machine.get('rustc', '?')}; {machine.get('iperf3', '?')}; {machine.get('redis', '?')}",
        f"- rathole: {rathole}",
        f"- Gateway shards: {machine.get('shards', '?')} (Server and Agent each)",
    ]
    for backend in machine.get("backends", "").split():
        lines.append(
            f"- {backend} gateway: Agent sessions per Server shard:"
            f" {machine.get('session_shards_' + backend) or '?'}; threads pinned to a CPU:"
            f" {machine.get('pinning_' + backend) or 'none'}"
        )
    lines += [
        f"- Rounds: {machine.get('rounds', '?')}; iperf3 seconds per measurement:"
        f" {machine.get('duration', '?')}; redis-benchmark clients: {machine.get('redis_clients', '?')}",
        "",
    ]
    return lines


def figure_lines(figures):
    rounds = len(figures.rounds)
    pairs = figures.ratio_pairs()
    lines = [
        "## Figures",
        "",
        "Each cell is the median over the rounds, with the lowest and highest round in",
        "brackets. \"gateway io_uring\" and \"gateway tokio\" are the same Server and Agent on",
        "the two runtime backends.",
        "",
        "| measurement | " + " | ".join(column_label(path) for path in figures.paths) + " |",
        "|---|" + "---:|" * len(figures.paths),
    ]
    for measurement, metric, label in ROWS:
        cells = [figures.cell(measurement, metric, path) for path in figures.paths]
        lines.append(f"| {label} | {' | '.join(cells)} |")

    lines += [
        "",
        "## Ratios",
        "",
        "Ratios are taken within each round and then the median is shown, with the lowest",
        "and highest round in brackets. io_uring and tokio stand for the gateway on that",
        "backend. For latency a ratio above 1 means the numerator is slower.",
        "",
        "| measurement | "
        + " | ".join(f"{short_label(top)}/{short_label(bottom)}" for top, bottom in pairs)
        + " |",
        "|---|" + "---:|" * len(pairs),
    ]
    for measurement, metric, label in ROWS:
        cells = [figures.ratio_cell(measurement, metric, top, bottom) for top, bottom in pairs]
        lines.append(f"| {label} | {' | '.join(cells)} |")

    lines += [
        "",
        "## Targets",
        "",
        "| target | " + " | ".join(f"{column_label(g)} | met" for g in figures.gateways) + " |",
        "|---|" + "---:|---|" * len(figures.gateways),
    ]
    for label, measurement, metric, denominator, minimum in TARGETS:
        cells = []
        for gateway in figures.gateways:
            ratios = figures.ratios(measurement, metric, gateway, denominator)
            if not ratios:
                cells += ["-", "not measured"]
                continue
            met = "yes" if statistics.median(ratios) >= minimum else "no"
            cells += [ratio_text(ratios, rounds), met]
        lines.append(f"| {label} | {' | '.join(cells)} |")

    lines += [
        "",
        "## Per round",
        "",
        "| measurement | path | " + " | ".join(f"round {r}" for r in figures.rounds) + " |",
        "|---|---|" + "---:|" * rounds,
    ]
    for measurement, (metric, unit) in MAIN_METRIC.items():
        for path in figures.paths:
            cells = []
            for round_ in figures.rounds:
                value = figures.results.get((round_, measurement, path))
                if isinstance(value, dict):
                    cells.append(format_number(metric, value[metric]))
                else:
                    cells.append(value or "not measured")
            lines.append(f"| {measurement} ({unit}) | {column_label(path)} | {' | '.join(cells)} |")
    lines.append("")
    return lines


def cpu_lines(runs, figures):
    lines = [
        "## CPU and scheduling during each measurement",
        "",
        "Medians over the rounds. Relay CPU is the user and system time of the relay processes",
        "(Server and Agent, or rathole's server and client) during the measurement, from",
        "/proc/PID/stat. Relay cost is relay CPU per GB received or per request. Run-queue wait",
        "is the time the relay threads were runnable but waited for a CPU, summed over the",
        "threads (/proc/PID/task/TID/schedstat). Context switches are voluntary plus",
        "involuntary ones of the relay threads (/proc/PID/task/TID/status), per MB received",
        "or per request. Machine busy is the share of all cores not idle, from /proc/stat, so",
        "it includes other work on the machine. iperf3 CPU is what iperf3 reports for its",
        "client and server.",
        "",
        "| measurement | path | wall (s) | relay CPU (s) | relay cost | run-queue wait (s)"
        " | context switches | machine busy (%) | iperf3 client / server CPU (%) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    groups = {}
    for run in runs:
        groups.setdefault((run["measurement"], run["path"]), []).append(run)
    for (measurement, path), group in groups.items():
        values = [figures.results.get((run["round"], measurement, path)) for run in group]
        parsed = [value for value in values if isinstance(value, dict)]
        throughput = measurement.startswith("iperf")
        cost = median_text([relay_cost(run, value) for run, value in zip(group, values)],
                           2 if throughput else 1)
        switches = median_text([relay_switches(run, value) for run, value in zip(group, values)],
                               1 if throughput else 2)
        relay_cpu = wait = "-"
        if path != "direct":
            relay_cpu = median_text([float(run["relay_cpu_s"]) for run in group])
            wait = median_text([float(run["relay_runqueue_wait_s"]) for run in group])
        iperf_cpu = "-"
        if parsed and parsed[0].get("client_cpu_pct") is not None:
            client = median_text([value["client_cpu_pct"] for value in parsed], 0)
            server = median_text([value["server_cpu_pct"] for value in parsed], 0)
            iperf_cpu = f"{client} / {server}"
        wall = median_text([float(run["wall_s"]) for run in group])
        busy = median_text([float(run["machine_busy_pct"]) for run in group], 0)
        cost_unit, switches_unit = (" s/GB", " /MB") if throughput else (" us/request", " /request")
        cost_text = cost if cost == "-" else cost + cost_unit
        switches_text = switches if switches == "-" else switches + switches_unit
        lines.append(
            f"| {measurement} | {column_label(path)} | {wall} | {relay_cpu} | {cost_text} | {wait}"
            f" | {switches_text} | {busy} | {iperf_cpu} |"
        )
    lines.append("")
    lines += backend_cpu_lines(runs, figures)
    return lines


def backend_cpu_lines(runs, figures):
    """Return the lines of a table with the per-round ratios tokio/io_uring of relay cost,
    context switches and run-queue wait, or no lines unless both backends were measured."""
    if not (IO_URING in figures.gateways and TOKIO in figures.gateways):
        return []
    by_key = {(run["round"], run["measurement"], run["path"]): run for run in runs}

    def ratios(measurement, figure):
        numbers = []
        for round_ in figures.rounds:
            pair = []
            for path in (TOKIO, IO_URING):
                run = by_key.get((round_, measurement, path))
                value = figures.results.get((round_, measurement, path))
                pair.append(figure(run, value) if run else None)
            if None not in pair and pair[1]:
                numbers.append(pair[0] / pair[1])
        return ratio_text(numbers, len(figures.rounds))

    def wait(run, value):
        return float(run["relay_runqueue_wait_s"]) if isinstance(value, dict) else None

    lines = [
        "Relay figures of the tokio gateway divided by those of the io_uring gateway, within",
        "each round (median, lowest and highest round):",
        "",
        "| measurement | relay cost tokio/io_uring | context switches tokio/io_uring"
        " | run-queue wait tokio/io_uring |",
        "|---|---:|---:|---:|",
    ]
    for measurement in MAIN_METRIC:
        cells = [ratios(measurement, figure) for figure in (relay_cost, relay_switches, wait)]
        lines.append(f"| {measurement} | {' | '.join(cells)} |")
    lines.append("")
    return lines


def memory_lines(memory, figures):
    by_process = {}
    for row in memory:
        by_process.setdefault(row["process"], {})[row["phase"]] = row

    def kib(process, phase, field):
        value = by_process.get(process, {}).get(phase, {}).get(field)
        return int(value) if value else None

    # Columns: each gateway, then rathole. Each row is a label and the value of each column,
    # read from the column's Server-side or Agent-side process.
    columns = [*figures.gateways, "rathole"]
    server_side = {path: "ipaas-server-" + short_label(path) for path in figures.gateways}
    agent_side = {path: "ipaas-agent-" + short_label(path) for path in figures.gateways}
    server_side["rathole"], agent_side["rathole"] = "rathole-server", "rathole-client"
    phases = (("idle", "vm_rss_kib", "idle RSS"), ("end", "vm_hwm_kib", "peak RSS"),
              ("end", "vm_rss_kib", "final RSS"))
    rows = []
    for side, processes in (("Server", server_side), ("Agent", agent_side)):
        for phase, field, name in phases:
            rows.append((f"{side}, {name}", {c: kib(processes[c], phase, field) for c in columns}))
    for phase, field, name in phases:
        total = {}
        for column in columns:
            parts = (kib(server_side[column], phase, field), kib(agent_side[column], phase, field))
            total[column] = None if None in parts else sum(parts)
        rows.append((f"Server + Agent, {name}", total))

    pairs = [(gateway, "rathole") for gateway in figures.gateways]
    if IO_URING in figures.gateways and TOKIO in figures.gateways:
        pairs.append((TOKIO, IO_URING))
    lines = [
        "## Memory",
        "",
        "From /proc/PID/status: VmRSS after start-up (idle), VmHWM (peak) and VmRSS after the",
        "last measurement (final), in MiB. In the rathole column the Server rows are rathole's",
        "server and the Agent rows its client. Memory is read once per run, so a ratio here is",
        "a single value.",
        "",
        "| figure | " + " | ".join(column_label(c) for c in columns) + " | "
        + " | ".join(f"{short_label(top)}/{short_label(bottom)}" for top, bottom in pairs) + " |",
        "|---|" + "---:|" * (len(columns) + len(pairs)),
    ]
    for label, values in rows:
        cells = [f"{values[c] / 1024:.1f}" if values[c] else "-" for c in columns]
        for top, bottom in pairs:
            ok = values[top] and values[bottom]
            cells.append(f"{values[top] / values[bottom]:.2f}" if ok else "-")
        lines.append(f"| {label} | {' | '.join(cells)} |")

    threads = []
    for process, phases_of_process in by_process.items():
        count = phases_of_process.get("end", phases_of_process.get("idle", {})).get("threads")
        threads.append(f"{process} {count or '?'}")
    lines += ["", "Threads at the end: " + ", ".join(threads) + ".", ""]
    return lines


def command_lines(runs, processes, out):
    started = [f"{row['process']}: {shorten(row['command'], out)}" for row in processes]
    measured = [shorten(run["command"], out) for run in runs]
    lines = ["## Commands", "", "Processes started (paths are under perf/out):", "", "```"]
    lines += list(dict.fromkeys(started))
    lines += ["```", "", "Measurements of one round, in the order they ran:", "", "```"]
    lines += list(dict.fromkeys(measured))
    lines += ["```", ""]
    return lines


def main():
    out = Path(sys.argv[1])
    runs = read_tsv(out / "runs.tsv")
    memory = read_tsv(out / "memory.tsv")
    processes = read_tsv(out / "processes.tsv")
    machine_text = (out / "machine.txt").read_text()
    machine = dict(line.split("=", 1) for line in machine_text.splitlines() if "=" in line)
    figures = Figures(runs)

    lines = [
        "# Benchmark results",
        "",
        "Written by `perf/run.sh`. In every round each measurement ran direct, through the",
        "gateway on each backend and through rathole back to back. All processes ran on one",
        "machine, so the load generator, the relays and the services shared its cores.",
        "",
    ]
    lines += machine_lines(machine)
    lines += figure_lines(figures)
    lines += cpu_lines(runs, figures)
    lines += memory_lines(memory, figures)
    lines += command_lines(runs, processes, out)
    (out / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
