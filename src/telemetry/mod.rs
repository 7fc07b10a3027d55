//! Logging setup and process-wide counters.
//!
//! Logs go through `tracing`: one span per session (`session.id`, `gateway.id`,
//! `agent.name`, `peer.addr`, `shard`) and one per stream (`stream.id`, `service`). Key
//! material never enters a span or event; types that hold keys print only public facts.

mod log_file;

use std::path::Path;

use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

use crate::config::LoggerConfig;

pub(crate) use log_file::{check_log_path, LogPathError};

/// Installs the global subscriber: standard error, plus the log file when one is set,
/// rotated as `config.backups` sets.
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
    let mut cleanup = None;
    let file_layer = match &config.file {
        Some(path) => {
            let log_file =
                log_file::open(path, &config.backups).map_err(|error| config.file_error(&error))?;
            cleanup = Some((path, log_file.cleanup));
            // The rotating writer runs on the non-blocking writer's own thread, so shards
            // only queue formatted lines. When the queue is full (128,000 lines, the default
            // of tracing-appender 0.2), lines are dropped instead of blocking a shard.
            let (writer, file_guard) = tracing_appender::non_blocking(log_file.writer);
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

    if let Some((path, cleanup)) = cleanup {
        log_cleanup(path, cleanup);
    }
    Ok(guard)
}

/// Logs what opening the log file `path` changed among its backups.
fn log_cleanup(path: &Path, cleanup: log_file::Cleanup) {
    for gzip in cleanup.incomplete {
        tracing::warn!(
            log.backup = %gzip.display(),
            "deleted a compressed log backup whose compression was cut short; the uncompressed backup of the same name is complete and was kept"
        );
    }
    if cleanup.renamed > 0 {
        tracing::info!(
            log.file = %path.display(), log.backups = cleanup.renamed,
            "renamed log backups with time-stamped names to numbered names"
        );
    }
    for (backup, error) in cleanup.failed {
        tracing::warn!(
            log.backup = %backup.display(), %error,
            "cannot delete or rename a log backup; delete it by hand or give this user write access to the log folder"
        );
    }
}

/// A monotonically increasing counter shared by all shards, exported as a Prometheus
/// counter by the Server's admin API.
#[derive(Debug, Default, Clone)]
pub struct Counter(prometheus_client::metrics::counter::Counter);

impl Counter {
    /// Adds one and returns the new total.
    pub fn increment(&self) -> u64 {
        self.0.inc() + 1
    }

    /// Adds `amount`.
    pub fn add(&self, amount: u64) {
        self.0.inc_by(amount);
    }

    /// Current total.
    pub fn get(&self) -> u64 {
        self.0.get()
    }

    /// Returns the Prometheus metric behind this counter, which shares its count.
    pub fn metric(&self) -> prometheus_client::metrics::counter::Counter {
        self.0.clone()
    }
}
