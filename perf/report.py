#!/usr/bin/env python3
"""Write results.md from the raw outputs that perf/run.sh leaves in its output folder.

Usage: report.py OUT_DIR

Reads OUT_DIR/runs.tsv (one line per round, measurement and path), the iperf3 JSON and
redis-benchmark CSV files it names, memory.tsv, processes.tsv and machine.txt. Figures are
medians over the rounds. Ratios are computed within each round, because the paths of one
round ran back to back, and the median of those per-round ratios is reported.
"""

import csv
import json
import re
import statistics
import sys
from pathlib import Path

PATHS = ("direct", "gateway", "rathole")

# Targets: (label, measurement, metric, numerator path, denominator path, minimum ratio).
TARGETS = (
    ("iperf3 1 stream: gateway >= 2x rathole", "iperf-1", "receiver_gbps", "gateway", "rathole", 2.0),
    ("iperf3 8 streams: gateway >= 2x rathole", "iperf-8", "receiver_gbps", "gateway", "rathole", 2.0),
    ("GET keep-alive: gateway >= 85% of direct", "redis-keepalive", "rps", "gateway", "direct", 0.85),
    ("GET new connection: gateway >= 10x rathole", "redis-newconn", "rps", "gateway", "rathole", 10.0),
)

# Rows of the main table: (measurement, metric, label).
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


class Figures:
    """Parsed figures of every round, with per-round ratios."""

    def __init__(self, runs):
        self.results = load_results(runs)
        self.rounds = sorted({run["round"] for run in runs}, key=int)

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
        if not ratios:
            return "-"
        return summarize(ratios, [], len(self.rounds), lambda n: f"{n:.2f}")


def relay_cost(run, value):
    """Return relay CPU per GB received (iperf3) or per request (redis), or None."""
    if run["path"] == "direct" or not isinstance(value, dict):
        return None
    cpu = float(run["relay_cpu_s"])
    if "bytes" in value:
        return cpu / (value["bytes"] / 1e9)
    requests = re.search(r" -n ([0-9]+)", run["command"])
    if requests is None:
        return None
    return cpu / int(requests.group(1)) * 1e6


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
    return [
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu_model', '?')}, {machine.get('nproc', '?')} cores (nproc)",
        f"- Memory: {machine.get('memory', '?')}",
        f"- Kernel: {machine.get('kernel', '?')}",
        f"- Load average at the end: {machine.get('loadavg_end', '?')}",
        f"- {machine.get('rustc', '?')}; {machine.get('iperf3', '?')}; {machine.get('redis', '?')}",
        f"- rathole: {rathole}",
        f"- Gateway shards: {machine.get('shards', '?')} (Server and Agent each). Agent sessions"
        f" per Server shard: {machine.get('session_shards', '?')}",
        f"- Gateway threads pinned to a CPU: {machine.get('pinning') or 'none'}",
        f"- Rounds: {machine.get('rounds', '?')}; iperf3 seconds per measurement:"
        f" {machine.get('duration', '?')}; redis-benchmark clients: {machine.get('redis_clients', '?')}",
        "",
    ]


def figure_lines(figures):
    lines = [
        "## Figures",
        "",
        "Each cell is the median over the rounds, with the lowest and highest round in",
        "brackets. Ratios are taken within each round and then the median is shown. For",
        "latency a ratio above 1 means the gateway is slower.",
        "",
        "| measurement | direct | gateway | rathole | gateway/direct | gateway/rathole |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for measurement, metric, label in ROWS:
        cells = [figures.cell(measurement, metric, path) for path in PATHS]
        cells.append(figures.ratio_cell(measurement, metric, "gateway", "direct"))
        cells.append(figures.ratio_cell(measurement, metric, "gateway", "rathole"))
        lines.append(f"| {label} | {' | '.join(cells)} |")

    lines += ["", "## Targets", "", "| target | ratio (median of rounds) | met |", "|---|---:|---|"]
    for label, measurement, metric, numerator, denominator, minimum in TARGETS:
        ratios = figures.ratios(measurement, metric, numerator, denominator)
        if not ratios:
            text, met = "-", "not measured"
        else:
            value = statistics.median(ratios)
            text = figures.ratio_cell(measurement, metric, numerator, denominator)
            met = "yes" if value >= minimum else "no"
        lines.append(f"| {label} | {text} | {met} |")

    lines += [
        "",
        "## Per round",
        "",
        "| measurement | path | " + " | ".join(f"round {r}" for r in figures.rounds) + " |",
        "|---|---|" + "---:|" * len(figures.rounds),
    ]
    for measurement, (metric, unit) in MAIN_METRIC.items():
        for path in PATHS:
            cells = []
            for round_ in figures.rounds:
                value = figures.results.get((round_, measurement, path))
                if isinstance(value, dict):
                    cells.append(format_number(metric, value[metric]))
                else:
                    cells.append(value or "not measured")
            lines.append(f"| {measurement} ({unit}) | {path} | {' | '.join(cells)} |")
    lines.append("")
    return lines


def cpu_lines(runs, figures):
    lines = [
        "## CPU during each measurement",
        "",
        "Medians over the rounds. Relay CPU is the user and system time of the relay processes",
        "(Server and Agent, or rathole's server and client) during the measurement, from",
        "/proc/PID/stat. Relay cost is relay CPU per GB received or per request. Machine busy is",
        "the share of all cores not idle, from /proc/stat, so it includes other work on the",
        "machine. iperf3 CPU is what iperf3 reports for its client and server.",
        "",
        "| measurement | path | wall (s) | relay CPU (s) | relay cost | machine busy (%) | iperf3 client / server CPU (%) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    groups = {}
    for run in runs:
        groups.setdefault((run["measurement"], run["path"]), []).append(run)
    for (measurement, path), group in groups.items():
        values = [figures.results.get((run["round"], measurement, path)) for run in group]
        parsed = [value for value in values if isinstance(value, dict)]
        costs = [relay_cost(run, value) for run, value in zip(group, values)]
        unit = " s/GB" if measurement.startswith("iperf") else " us/request"
        cost = median_text(costs, 2 if unit == " s/GB" else 1)
        relay_cpu = "-"
        if path != "direct":
            relay_cpu = median_text([float(run["relay_cpu_s"]) for run in group])
        iperf_cpu = "-"
        if parsed and parsed[0].get("client_cpu_pct") is not None:
            client = median_text([value["client_cpu_pct"] for value in parsed], 0)
            server = median_text([value["server_cpu_pct"] for value in parsed], 0)
            iperf_cpu = f"{client} / {server}"
        wall = median_text([float(run["wall_s"]) for run in group])
        busy = median_text([float(run["machine_busy_pct"]) for run in group], 0)
        cost_text = "-" if cost == "-" else cost + unit
        lines.append(
            f"| {measurement} | {path} | {wall} | {relay_cpu} | {cost_text} | {busy} | {iperf_cpu} |"
        )
    lines.append("")
    return lines


def memory_lines(memory):
    lines = [
        "## Memory",
        "",
        "From /proc/PID/status: VmRSS after start-up (idle), VmHWM (peak) and VmRSS after the",
        "last measurement (final).",
        "",
        "| process | idle RSS (MiB) | peak RSS (MiB) | final RSS (MiB) |",
        "|---|---:|---:|---:|",
    ]
    by_process = {}
    for row in memory:
        by_process.setdefault(row["process"], {})[row["phase"]] = row
    for process, phases in by_process.items():
        idle = phases.get("idle", {}).get("vm_rss_kib")
        peak = phases.get("end", {}).get("vm_hwm_kib")
        final = phases.get("end", {}).get("vm_rss_kib")
        cells = [f"{int(kib) / 1024:.1f}" if kib else "-" for kib in (idle, peak, final)]
        lines.append(f"| {process} | {' | '.join(cells)} |")
    lines.append("")
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
        "gateway and through rathole back to back. All processes ran on one machine, so the",
        "load generator, the relays and the services shared its cores.",
        "",
    ]
    lines += machine_lines(machine)
    lines += figure_lines(figures)
    lines += cpu_lines(runs, figures)
    lines += memory_lines(memory)
    lines += command_lines(runs, processes, out)
    (out / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
