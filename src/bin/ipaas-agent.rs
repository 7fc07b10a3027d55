//! `ipaas-agent`: the private-network side of the gateway.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rand::RngCore;

use ipaas_gateway::agent::{self, AgentShared, AgentStats};
use std::future::Future;

use ipaas_gateway::backend::{self, BackendChoice, Runtime, ShardMain};
use ipaas_gateway::config::{self, AgentConfig, LoggerConfig};
use ipaas_gateway::keys::{self, PrivateKey, RECOMMENDED_KEY_BITS};
use ipaas_gateway::{telemetry, tls};

#[derive(Parser)]
#[command(
    version,
    about = "Private-network side of the security gateway: dials the Server and relays its streams to private services"
)]
struct Cli {
    /// Agent config file. Defaults to configs/config.yaml in the current folder, else in the
    /// package that holds this binary (bin/<OS>/ipaas-agent).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Logger config file. Defaults to logger_config.yaml beside the Agent config.
    #[arg(long)]
    logger: Option<PathBuf>,
    /// Number of shards (threads); overrides runtime.shards in the config.
    #[arg(long)]
    shards: Option<usize>,
    /// Runtime backend; overrides runtime.backend in the config.
    #[arg(long, value_enum)]
    backend: Option<BackendChoice>,
    /// How long in-flight streams may run after SIGTERM before the session closes.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    drain_timeout: Duration,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let config_file = cli.config.clone().unwrap_or_else(default_config_file);
    let config = AgentConfig::load(&config_file)?;
    let logger_file = cli
        .logger
        .clone()
        .unwrap_or_else(|| config_file.with_file_name("logger_config.yaml"));
    let logger = if logger_file.exists() {
        LoggerConfig::load(&logger_file, &config.root)?
    } else {
        LoggerConfig {
            level: "info".into(),
            file: None,
        }
    };
    let to_stderr = logger.file.is_none() || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _log_guard = telemetry::init(&logger, to_stderr)?;

    if let Some(warning) = keys::permission_warning(&config.private_key) {
        tracing::warn!("{warning}");
    }
    let key = PrivateKey::load(&config.private_key, keys::MIN_KEY_BITS)?;
    if key.bits() < RECOMMENDED_KEY_BITS {
        tracing::warn!(
            key.bits = key.bits(), key.path = %config.private_key.display(),
            "the private key has fewer than {RECOMMENDED_KEY_BITS} bits; create a new one with `openssl genrsa -out private.pem 2048` and register its public key"
        );
    }
    let tls = tls::client_config(&config.tls)
        .context("cannot load the Agent's TLS files in configs/client/")?;

    let mut instance_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut instance_id);
    let shards = config::shard_count(cli.shards.unwrap_or(config.runtime.shards));
    let (backend, reason) = backend::select(cli.backend.unwrap_or(config.runtime.backend))?;
    let shutdown = backend::install_shutdown_handler()?;
    tracing::info!(
        gateway.id = %config.gateway_id, agent.name = %config.agent_name, server.addr = %config.server,
        shards, services = config.services.len(), key.fingerprint = %key.fingerprint(),
        version = env!("CARGO_PKG_VERSION"), %backend, "Agent starting on the {backend} backend: {reason}"
    );

    let shared = Arc::new(AgentShared {
        config,
        config_file,
        key,
        tls,
        instance_id,
        drain_timeout: cli.drain_timeout,
        stats: AgentStats::default(),
    });
    let main = Arc::new(AgentMain {
        shared: Arc::clone(&shared),
        shutdown,
    });
    backend::launch(backend, shards, "ipaas-agent", main)?;
    tracing::info!(
        streams = shared.stats.streams.get(),
        unknown_service = shared.stats.unknown_service.get(),
        "Agent stopped"
    );
    Ok(())
}

/// What each Agent shard starts from.
struct AgentMain {
    shared: Arc<AgentShared>,
    shutdown: flume::Receiver<()>,
}

impl ShardMain for AgentMain {
    fn run<R: Runtime>(self: Arc<Self>, runtime: R) -> impl Future<Output = ()> + 'static {
        async move {
            let trigger = backend::shutdown_trigger(&runtime, self.shutdown.clone());
            agent::run_shard(runtime, Arc::clone(&self.shared), trigger).await;
        }
    }
}

/// `configs/config.yaml` in the current folder if present, else in the package root two
/// levels above the binary.
fn default_config_file() -> PathBuf {
    let local = Path::new("configs/config.yaml");
    if local.exists() {
        return local.to_owned();
    }
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent()?.parent()?.parent().map(Path::to_owned))
        .map(|root| root.join("configs/config.yaml"))
        .unwrap_or_else(|| local.to_owned())
}
