#!/usr/bin/env python3
"""Write results.md from the raw outputs that perf/run.sh leaves in its output folder.

Usage: report.py OUT_DIR

Reads OUT_DIR/runs.tsv (one line per measurement and path), the iperf3 JSON and
redis-benchmark CSV files it names, memory.tsv, processes.tsv and machine.txt.
"""

import csv
import json
import re
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


def read_tsv(path):
    with open(path, newline="") as file:
        return list(csv.DictReader(file, delimiter="\t"))


def parse_iperf(path):
    """Return sender and receiver Gbit/s and CPU use from iperf3 -J output."""
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


def relay_cost(run, value):
    """Return relay CPU per GB received (iperf3) or per request (redis), as text."""
    if run["path"] == "direct" or not isinstance(value, dict):
        return "-"
    cpu = float(run["relay_cpu_s"])
    if "bytes" in value:
        return f"{cpu / (value['bytes'] / 1e9):.2f} s/GB"
    requests = re.search(r" -n ([0-9]+)", run["command"])
    if requests is None:
        return "-"
    return f"{cpu / int(requests.group(1)) * 1e6:.1f} us/request"


def load_results(runs):
    """Map (measurement, path) to its parsed figures, or to an error string."""
    results = {}
    for run in runs:
        key = (run["measurement"], run["path"])
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


def figure(results, measurement, metric, path, measured_paths):
    if path not in measured_paths:
        return None, "not measured"
    value = results.get((measurement, path))
    if value is None:
        return None, "not measured"
    if isinstance(value, str):
        return None, value
    number = value[metric]
    text = f"{number:.2f}" if metric.endswith(("gbps", "_ms")) else f"{number:,.0f}"
    return number, text


def ratio(numerator, denominator):
    if numerator is None or denominator is None or denominator == 0:
        return None, "-"
    value = numerator / denominator
    return value, f"{value:.2f}"


def shorten(command, out):
    """Write paths under the output folder relative to the repository."""
    return command.replace(str(out.resolve()), "perf/out")


def main():
    out = Path(sys.argv[1])
    runs = read_tsv(out / "runs.tsv")
    memory = read_tsv(out / "memory.tsv")
    processes = read_tsv(out / "processes.tsv")
    machine = dict(
        line.split("=", 1) for line in (out / "machine.txt").read_text().splitlines() if "=" in line
    )
    results = load_results(runs)
    measured_paths = {run["path"] for run in runs}
    rathole_note = machine.get("rathole_reason") or ""

    lines = ["# Benchmark results", ""]
    lines += [
        "Written by `perf/run.sh`. Each measurement ran direct, through the gateway and through",
        "rathole back to back in the same run. All processes ran on one machine, so the load",
        "generator, the relays and the services shared its cores.",
        "",
        "## Machine",
        "",
        f"- CPU: {machine.get('cpu_model', '?')}, {machine.get('nproc', '?')} cores (nproc)",
        f"- Memory: {machine.get('memory', '?')}",
        f"- Kernel: {machine.get('kernel', '?')}",
        f"- Load average at the end: {machine.get('loadavg_end', '?')}",
        f"- {machine.get('rustc', '?')}; {machine.get('iperf3', '?')}; {machine.get('redis', '?')}",
        f"- rathole: {machine.get('rathole') or 'not measured: ' + rathole_note}",
        f"- Gateway threads pinned to a CPU: {machine.get('pinning') or 'none'}",
        f"- Gateway shards: {machine.get('shards', '?')} (Server and Agent each). Agent sessions per"
        f" Server shard: {machine.get('session_shards', '?')}",
        "",
        "## Figures",
        "",
        "Ratios are gateway/direct and gateway/rathole. For latency a ratio above 1 means the",
        "gateway is slower.",
        "",
        "| measurement | direct | gateway | rathole | gateway/direct | gateway/rathole |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for measurement, metric, label in ROWS:
        values = {path: figure(results, measurement, metric, path, measured_paths) for path in PATHS}
        _, to_direct = ratio(values["gateway"][0], values["direct"][0])
        _, to_rathole = ratio(values["gateway"][0], values["rathole"][0])
        cells = [values[path][1] for path in PATHS]
        lines.append(f"| {label} | {' | '.join(cells)} | {to_direct} | {to_rathole} |")

    lines += [
        "",
        "## Targets",
        "",
        "| target | ratio | met |",
        "|---|---:|---|",
    ]
    for label, measurement, metric, numerator, denominator, minimum in TARGETS:
        top = figure(results, measurement, metric, numerator, measured_paths)[0]
        bottom = figure(results, measurement, metric, denominator, measured_paths)[0]
        value, text = ratio(top, bottom)
        if value is None:
            met = "not measured"
        elif value >= minimum:
            met = "yes"
        else:
            met = "no"
        lines.append(f"| {label} | {text} | {met} |")

    lines += [
        "",
        "## CPU during each measurement",
        "",
        "Relay CPU is the user and system time of the relay processes (Server and Agent, or",
        "rathole's server and client) during the measurement, from /proc/PID/stat. Machine busy",
        "is the share of all cores not idle, from /proc/stat, so it includes other work on the",
        "machine. Relay cost is relay CPU per GB received or per request. iperf3 CPU is what",
        "iperf3 reports for its client and server.",
        "",
        "| measurement | path | wall (s) | relay CPU (s) | relay cost | machine busy (%) | iperf3 client / server CPU (%) |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for run in runs:
        value = results.get((run["measurement"], run["path"]))
        iperf_cpu = "-"
        if isinstance(value, dict) and value.get("client_cpu_pct") is not None:
            iperf_cpu = f"{value['client_cpu_pct']:.0f} / {value['server_cpu_pct']:.0f}"
        lines.append(
            f"| {run['measurement']} | {run['path']} | {run['wall_s']} | "
            f"{run['relay_cpu_s'] if run['path'] != 'direct' else '-'} | {relay_cost(run, value)} | "
            f"{run['machine_busy_pct']} | {iperf_cpu} |"
        )

    lines += [
        "",
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

    lines += ["", "## Commands", "", "Processes started (paths are under perf/out):", "", "```"]
    started = [f"{row['process']}: {shorten(row['command'], out)}" for row in processes]
    lines += list(dict.fromkeys(started))
    lines += ["```", "", "Measurements, in the order they ran:", "", "```"]
    lines += [shorten(run["command"], out) for run in runs]
    lines += ["```", ""]

    (out / "results.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
