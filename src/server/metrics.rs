//! Prometheus metrics of the Server, served by the admin API at `GET /metrics` in the text
//! exposition format.
//!
//! The counters are the ones the shards update anyway ([`ServerStats`]). A scrape reads
//! them and computes the gauges, so metrics add no work to the relay.

use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use super::{ServerShared, ServerStats};

/// Durations of successful Agent handshakes, from 1 ms to about 16 s.
#[derive(Debug)]
pub struct HandshakeTimes(Histogram);

impl Default for HandshakeTimes {
    fn default() -> Self {
        Self(Histogram::new(exponential_buckets(0.001, 2.0, 15)))
    }
}

impl HandshakeTimes {
    pub fn observe(&self, duration: Duration) {
        self.0.observe(duration.as_secs_f64());
    }
}

/// Labels of the per-gateway gauges.
type GatewayLabel = Vec<(&'static str, String)>;

/// The metrics registry and the gauges a scrape refreshes.
pub struct Metrics {
    registry: Registry,
    sessions: Family<GatewayLabel, Gauge>,
    handshakes_in_progress: Gauge,
}

impl Metrics {
    /// Registers every counter of `stats` and the gauges.
    pub fn new(stats: &ServerStats) -> Self {
        let mut registry = Registry::with_prefix("ipaas_server");
        let counters = [
            ("sessions", "Agent sessions established", &stats.sessions),
            (
                "rejections",
                "Agent logins rejected, by any reason",
                &stats.rejections,
            ),
            (
                "handshake_failures",
                "Agent connections that failed or timed out before authentication",
                &stats.handshake_failures,
            ),
            (
                "unauthenticated_dropped",
                "Agent connections closed on accept because the handshake cap was reached",
                &stats.unauthenticated_dropped,
            ),
            (
                "unauthenticated_evicted",
                "Handshakes closed early to make room for a new connection",
                &stats.unauthenticated_evicted,
            ),
            (
                "rate_limited",
                "Agent connections closed by the per-source rate limit",
                &stats.rate_limited,
            ),
            ("streams", "Streams opened to Agents", &stats.streams),
            (
                "handoffs",
                "Entry connections handed to another shard",
                &stats.handoffs,
            ),
            (
                "no_agent",
                "Entry connections closed because no Agent of the gateway was connected",
                &stats.no_agent,
            ),
            (
                "revoked",
                "Sessions closed because a registry change no longer admits their Agent",
                &stats.revoked,
            ),
            (
                "replaced",
                "Sessions closed because their Agent instance logged in again",
                &stats.replaced,
            ),
            (
                "sessions_moved",
                "Sessions moved to another shard after authentication",
                &stats.sessions_moved,
            ),
            (
                "entry_received_bytes",
                "Bytes read from entry connections and relayed to Agents",
                &stats.entry_bytes_received,
            ),
            (
                "entry_sent_bytes",
                "Bytes relayed from Agents and written to entry connections",
                &stats.entry_bytes_sent,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.metric());
        }
        registry.register(
            "handshake_seconds",
            "Time from accepting an Agent connection to its Welcome",
            stats.handshake_seconds.0.clone(),
        );

        let sessions = Family::<GatewayLabel, Gauge>::default();
        registry.register(
            "live_sessions",
            "Authenticated Agent sessions, by gateway",
            sessions.clone(),
        );
        let handshakes_in_progress = Gauge::default();
        registry.register(
            "handshakes_in_progress",
            "Agent connections that have not finished authentication",
            handshakes_in_progress.clone(),
        );
        Self {
            registry,
            sessions,
            handshakes_in_progress,
        }
    }

    /// Refreshes the gauges from `shared` and returns every metric in the text format.
    pub fn render(&self, shared: &ServerShared) -> String {
        self.sessions.clear();
        for (id, gateway) in &shared.snapshot().gateways {
            let live: usize = gateway
                .live
                .per_shard
                .iter()
                .map(|count| count.load(Ordering::Relaxed))
                .sum();
            self.sessions
                .get_or_create(&vec![("gateway", id.clone())])
                .set(live as i64);
        }
        self.handshakes_in_progress
            .set(shared.pending_handshakes.load(Ordering::Relaxed) as i64);

        let mut text = String::new();
        // `fmt::Write` for `String` never returns an error, so neither does the encoder.
        let _ = encode(&mut text, &self.registry);
        text
    }
}
