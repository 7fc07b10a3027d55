//! Throughput of a live stream while unauthenticated connections flood the Server's Agent
//! port, as a ratio of the same stream's throughput without the flood, on each backend.
//!
//! Each round measures the stream for a window without the flood, then for a window with
//! it, back to back, so both figures come from the same minute of a shared machine. The
//! flood comes from the test harness's generator (`tests/common/flood.rs`): 100 loopback
//! source addresses, rotating over idle connections, junk and TLS handshakes without a
//! client certificate. It also reports how long a new Agent takes to log in during a flood.
//!
//! Run with `cargo bench --bench flood`. Settings (environment variables):
//! `FLOOD_RATE` new connections per second [1000], `FLOOD_ROUNDS` [3], `FLOOD_WINDOW`
//! seconds per measurement [3].

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::flood::{Flood, FloodCounts, SinkGateway};
use common::*;

const LIMIT: Duration = Duration::from_secs(30);

fn setting(name: &str, default: u64, range: std::ops::RangeInclusive<u64>) -> u64 {
    let Ok(text) = std::env::var(name) else {
        return default;
    };
    match text.parse() {
        Ok(value) if range.contains(&value) => value,
        _ => panic!(
            "{name}={text} is invalid; use an integer from {} to {}",
            range.start(),
            range.end()
        ),
    }
}

/// Figures of one backend.
struct Outcome {
    backend: &'static str,
    before: Vec<f64>,
    during: Vec<f64>,
    login: Duration,
    counts: FloodCounts,
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn measure(backends: Backends, rate: u32, rounds: usize, window: Duration) -> Outcome {
    let mut gateway = SinkGateway::start(backends);
    let settings = gateway.flood(rate, window * 3 + LIMIT);
    let stream = gateway.bulk_stream((window * 3 + LIMIT) * rounds as u32);
    let mut outcome = Outcome {
        backend: backends.server,
        before: Vec::new(),
        during: Vec::new(),
        login: Duration::ZERO,
        counts: FloodCounts::default(),
    };
    for round in 0..rounds {
        outcome.before.push(stream.rate(window));
        let flood = Flood::start(&settings);
        // The flood reaches its steady state once the idle connections fill the cap.
        std::thread::sleep(Duration::from_secs(3));
        if round == 0 {
            let started = Instant::now();
            let root = gateway.start_agent("agent-2");
            wait_for("both shards of the new Agent", LIMIT, || {
                count_in_log(&root.join("log/agent.log"), "session established") >= 2
            });
            outcome.login = started.elapsed();
        }
        outcome.during.push(stream.rate(window));
        outcome.counts += flood.stop();
        // The workers closed their idle connections when they stopped. The pause lets the
        // Server finish with them before the next measurement without the flood.
        std::thread::sleep(Duration::from_secs(1));
    }
    outcome
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument is not supported.
    let rate = setting("FLOOD_RATE", 1000, 1..=20_000) as u32;
    let rounds = setting("FLOOD_ROUNDS", 3, 1..=10) as usize;
    let window = Duration::from_secs(setting("FLOOD_WINDOW", 3, 1..=60));

    let outcomes: Vec<Outcome> = [Backends::IO_URING, Backends::TOKIO]
        .into_iter()
        .map(|backends| measure(backends, rate, rounds, window))
        .collect();

    println!(
        "\nflood: {rate} new connections/s from 100 addresses, {rounds} rounds of {window:?}\n"
    );
    println!("| Server and Agent backend | stream without flood, MiB/s | with flood, MiB/s | ratio (median of rounds) | new Agent login during flood | flood connections (TLS completed) |");
    println!("|---|---|---|---|---|---|");
    for outcome in &outcomes {
        let ratios: Vec<f64> = outcome
            .before
            .iter()
            .zip(&outcome.during)
            .map(|(before, during)| during / before)
            .collect();
        println!(
            "| {} | {:.0} | {:.0} | {:.2} | {:.0?} | {} ({}) |",
            outcome.backend,
            median(&outcome.before) / 1048576.0,
            median(&outcome.during) / 1048576.0,
            median(&ratios),
            outcome.login,
            outcome.counts.connected,
            outcome.counts.tls_completed
        );
    }
}
