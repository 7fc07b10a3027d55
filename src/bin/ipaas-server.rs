//! `ipaas-server`: the cloud side of the gateway.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use std::future::Future;

use ipaas_gateway::backend::{self, BackendChoice, Runtime, ShardMain};
use ipaas_gateway::config::{self, ServerConfig};
use ipaas_gateway::keys::RECOMMENDED_KEY_BITS;
use ipaas_gateway::server::{self, ServerShared};
use ipaas_gateway::{telemetry, tls};

#[derive(Parser)]
#[command(
    version,
    about = "Cloud side of the security gateway: accepts Agents and exposes their private services"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Server.
    Run {
        /// Server config file.
        #[arg(long, default_value = "configs/server.yaml")]
        config: PathBuf,
        /// Number of shards (threads); overrides runtime.shards in the config.
        #[arg(long)]
        shards: Option<usize>,
        /// Runtime backend; overrides runtime.backend in the config.
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
    },
    /// Check a config file and the files it names, then exit.
    Check {
        #[arg(long, default_value = "configs/server.yaml")]
        config: PathBuf,
    },
    /// Create and issue TLS certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
}

#[derive(Subcommand)]
enum PkiCommand {
    /// Create a CA and the Server's certificate.
    Init {
        /// Folder for ca.pem, ca.key, server.pem and server.key.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// DNS name or IP address Agents use to reach the Server; repeat for several.
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()])]
        names: Vec<String>,
        /// Replace an existing CA.
        #[arg(long)]
        force: bool,
    },
    /// Issue an Agent client certificate for a gateway.
    IssueAgent {
        /// Folder created by `pki init`.
        #[arg(long, default_value = "pki")]
        dir: PathBuf,
        /// Gateway the certificate is for.
        #[arg(long)]
        gateway: String,
        /// Output folder, normally an Agent package's configs/client.
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            config,
            shards,
            backend,
        } => run(&config, shards, backend),
        Command::Check { config } => {
            let config = ServerConfig::load(&config)?;
            tls::server_config(&config.tls)?;
            println!(
                "config is valid: {} gateway(s), Agent port {}",
                config.gateways.len(),
                config.listen
            );
            Ok(())
        }
        Command::Pki(PkiCommand::Init { dir, names, force }) => {
            tls::pki::init(&dir, &names, force)?;
            println!(
                "created a CA and a Server certificate for {} in {}",
                names.join(", "),
                dir.display()
            );
            Ok(())
        }
        Command::Pki(PkiCommand::IssueAgent { dir, gateway, out }) => {
            tls::pki::issue_agent(&dir, &gateway, &out)?;
            println!(
                "issued an Agent certificate for gateway `{gateway}` in {}",
                out.display()
            );
            Ok(())
        }
    }
}

fn run(
    config_file: &std::path::Path,
    shards: Option<usize>,
    backend: Option<BackendChoice>,
) -> anyhow::Result<()> {
    let config = ServerConfig::load(config_file)?;
    let _log_guard = telemetry::init(&config.log, true)?;
    let tls = tls::server_config(&config.tls).context("cannot load the Server's TLS files")?;
    let shards = config::shard_count(shards.unwrap_or(config.runtime.shards));

    for gateway in &config.gateways {
        for key in &gateway.public_keys {
            if key.bits() < RECOMMENDED_KEY_BITS {
                tracing::warn!(
                    gateway.id = %gateway.id, key.path = %key.path().display(), key.bits = key.bits(),
                    "public key is below {RECOMMENDED_KEY_BITS} bits; ask the Agent's owner for a 2048-bit or larger key"
                );
            }
        }
    }
    check_ports_free(&config)?;

    let (backend, reason) = backend::select(backend.unwrap_or(config.runtime.backend))?;
    let shutdown = backend::install_shutdown_handler()?;
    let (shared, handoffs) = ServerShared::new(config, tls, shards);
    tracing::info!(
        listen = %shared.config.listen, shards, gateways = shared.config.gateways.len(),
        version = env!("CARGO_PKG_VERSION"), %backend, "Server starting on the {backend} backend: {reason}"
    );

    let main = Arc::new(ServerMain {
        shared,
        handoffs: std::sync::Mutex::new(handoffs.into_iter().map(Some).collect()),
        shutdown,
    });
    backend::launch(backend, shards, "ipaas-server", main)?;
    tracing::info!("Server stopped");
    Ok(())
}

/// What each Server shard starts from.
struct ServerMain {
    shared: Arc<ServerShared>,
    /// Handoff receivers, taken by their shard at start.
    handoffs: std::sync::Mutex<Vec<Option<flume::Receiver<server::Handoff>>>>,
    shutdown: flume::Receiver<()>,
}

impl ShardMain for ServerMain {
    fn run<R: Runtime>(self: Arc<Self>, runtime: R) -> impl Future<Output = ()> + 'static {
        let handoff = self
            .handoffs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())[runtime.shard()]
        .take();
        async move {
            let Some(handoff) = handoff else {
                tracing::error!(shard = runtime.shard(), "shard started twice");
                return;
            };
            let trigger = backend::shutdown_trigger(&runtime, self.shutdown.clone());
            if let Err(error) =
                server::run_shard(runtime, Arc::clone(&self.shared), handoff, trigger).await
            {
                tracing::error!("{error:#}");
                std::process::exit(1);
            }
        }
    }
}

/// Fails early, with the address and its config key, when a listen port is taken.
fn check_ports_free(config: &ServerConfig) -> anyhow::Result<()> {
    let mut addresses = vec![("listen".to_string(), config.listen)];
    for gateway in &config.gateways {
        for service in &gateway.services {
            addresses.push((
                format!("service `{}` of gateway `{}`", service.name, gateway.id),
                service.listen,
            ));
        }
    }
    for (what, addr) in addresses {
        backend::check_port_free(addr).with_context(|| {
            format!(
                "cannot listen on {addr} ({what}); stop the process using it or pick another port"
            )
        })?;
    }
    Ok(())
}
