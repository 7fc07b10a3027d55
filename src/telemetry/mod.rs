//! Logging setup and process-wide counters.
//!
//! Logs go through `tracing`: one span per session (`session.id`, `gateway.id`,
//! `agent.name`, `peer.addr`, `shard`) and one per stream (`stream.id`, `service`). Key
//! material never enters a span or event; types that hold keys print only public facts.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::LoggerConfig;

/// Installs the global subscriber: standard error, plus the log file when one is set.
///
/// Returns a guard that flushes the file writer when dropped; keep it until exit.
pub fn init(config: &LoggerConfig, to_stderr: bool) -> anyhow::Result<Option<WorkerGuard>> {
    let filter = || EnvFilter::try_new(&config.level).unwrap_or_else(|_| EnvFilter::new("info"));
    // Both layers share the formatted span fields, so colour codes from one would end up in
    // the other: colours only when standard error is the sole output and a terminal.
    let ansi = config.file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let stderr = to_stderr.then(|| {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_target(false)
            .with_filter(filter())
    });

    let mut guard = None;
    let file_layer = match &config.file {
        Some(path) => {
            let (writer, file_guard) = tracing_appender::non_blocking(open_log(path)?);
            guard = Some(file_guard);
            Some(
                fmt::layer()
                    .with_writer(writer)
                    .with_ansi(false)
                    .with_target(false)
                    .with_filter(filter()),
            )
        }
        None => None,
    };

    tracing_subscriber::registry()
        .with(stderr)
        .with(file_layer)
        .try_init()
        .map_err(|error| anyhow::anyhow!("cannot install the logger: {error}"))?;
    Ok(guard)
}

fn open_log(path: &Path) -> anyhow::Result<std::fs::File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|error| {
            anyhow::anyhow!("cannot create log folder {}: {error}", dir.display())
        })?;
    }
    // TODO: size- and age-based rotation with a backup count, set in logger_config.yaml.
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|error| anyhow::anyhow!("cannot open log file {}: {error}", path.display()))
}

/// A monotonically increasing counter shared by all shards.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds one and returns the new total.
    pub fn increment(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Current total.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}
