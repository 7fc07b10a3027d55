//! `ipaas-agent`: the private-network side of the gateway.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rand::RngCore;

use ipaas_gateway::agent::keygen::{KeygenRequest, KEYGEN_BITS};
use ipaas_gateway::agent::{self, check, keygen, AgentShared, AgentStats};
use ipaas_gateway::backend::{self, BackendChoice, Runtime, ShardMain};
use ipaas_gateway::config::{self, AgentConfig, LoggerConfig};
use ipaas_gateway::keys::{self, PrivateKey, RECOMMENDED_KEY_BITS};
use ipaas_gateway::{telemetry, tls};

#[derive(Parser)]
#[command(
    name = "ipaas-agent",
    version,
    about = "Private-network side of the security gateway: dials the Server and relays its streams to private services",
    long_about = "Private-network side of the security gateway: dials the Server and relays its streams to private services.\n\n\
                  Without a command, runs the Agent with the options below (the same as `ipaas-agent run`).",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the Agent (the default when no command is given).
    Run(RunArgs),
    /// Create the Agent's RSA key pair: private.pem for this package and public.pem for the
    /// Server's operator.
    Keygen(KeygenArgs),
    /// Check the config, the private key and the TLS files; with --connect, also log in to
    /// the Server once.
    Check(CheckArgs),
}

#[derive(Args)]
struct RunArgs {
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
    /// A file whose creation stops the Agent as SIGTERM does: in-flight streams drain first.
    /// scripts/windows/start.bat passes log\agent.stop, which stop.bat creates.
    #[arg(long)]
    stop_file: Option<PathBuf>,
}

#[derive(Args)]
struct KeygenArgs {
    /// Folder for private.pem. Defaults to configs/secret in the current folder when it has
    /// a configs/ folder, else in the package that contains this binary
    /// (bin/<OS>/ipaas-agent).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Modulus size in bits: 2048, 3072 or 4096.
    #[arg(long, default_value_t = KEYGEN_BITS[0])]
    bits: usize,
    /// Path of the public key to send to the Server's operator. Defaults to public.pem
    /// beside private.pem.
    #[arg(long)]
    public_out: Option<PathBuf>,
    /// Replace an existing private.pem or public.pem.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct CheckArgs {
    /// Agent config file. Defaults to configs/config.yaml in the current folder, else in the
    /// package that contains this binary (bin/<OS>/ipaas-agent).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Logger config file. Defaults to logger_config.yaml beside the Agent config.
    #[arg(long)]
    logger: Option<PathBuf>,
    /// Also connect to the Server, run the TLS handshake and the authentication once, and
    /// close the session again.
    #[arg(long)]
    connect: bool,
}

fn main() -> anyhow::Result<ExitCode> {
    let cli = Cli::parse();
    match cli.command {
        None => run(cli.run).map(|()| ExitCode::SUCCESS),
        Some(Command::Run(args)) => run(args).map(|()| ExitCode::SUCCESS),
        Some(Command::Keygen(args)) => generate_key(args).map(|()| ExitCode::SUCCESS),
        Some(Command::Check(args)) => Ok(check_package(args)),
    }
}

/// Runs the Agent until SIGINT or SIGTERM.
fn run(cli: RunArgs) -> anyhow::Result<()> {
    let config_file = cli.config.clone().unwrap_or_else(default_config_file);
    let config = AgentConfig::load(&config_file)?;
    let logger_file = cli
        .logger
        .clone()
        .unwrap_or_else(|| config_file.with_file_name("logger_config.yaml"));
    let logger = if logger_file.exists() {
        LoggerConfig::load(&logger_file, &config.root)?
    } else {
        LoggerConfig::default()
    };
    let to_stderr = logger.file.is_none() || std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _log_guard = telemetry::init(&logger, to_stderr)?;

    for key_file in [&config.private_key, &config.tls.key] {
        if let Some(warning) = keys::permission_warning(key_file) {
            tracing::warn!("{warning}");
        }
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
    let shutdown = backend::install_shutdown_handler(cli.stop_file.clone())?;
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

/// Inputs of each Agent shard.
struct AgentMain {
    shared: Arc<AgentShared>,
    shutdown: flume::Receiver<()>,
}

impl ShardMain for AgentMain {
    async fn run<R: Runtime>(self: Arc<Self>, runtime: R) {
        let trigger = backend::shutdown_trigger(&runtime, self.shutdown.clone());
        agent::run_shard(runtime, Arc::clone(&self.shared), trigger).await;
    }
}

/// Writes a new key pair and prints its fingerprint.
fn generate_key(args: KeygenArgs) -> anyhow::Result<()> {
    let out = match args.out {
        Some(out) => out,
        None => default_secret_folder()?,
    };
    let private_path = out.join("private.pem");
    let public_path = args.public_out.unwrap_or_else(|| out.join("public.pem"));
    let key = keygen::generate(&KeygenRequest {
        private_path,
        public_path,
        bits: args.bits,
        force: args.force,
    })?;

    let access = if cfg!(unix) { ", mode 600" } else { "" };
    println!(
        "wrote {} ({}-bit RSA private key, PKCS#1{access})",
        key.private_path.display(),
        key.bits
    );
    println!("wrote {} (PKCS#1 public key)", key.public_path.display());
    println!("fingerprint {}", key.fingerprint);
    println!(
        "Send {} to the Server's operator to register it for your gateway; the Agent and the Server log the same fingerprint.",
        key.public_path.display()
    );
    if key.replaced {
        println!("The previous private key was replaced. Restart the Agent once the new public key is registered.");
    }
    Ok(())
}

/// Prints the check report and returns exit status 1 when a check failed.
fn check_package(args: CheckArgs) -> ExitCode {
    let config_file = args.config.unwrap_or_else(default_config_file);
    println!("checking {}", config_file.display());
    let logger_file = args
        .logger
        .unwrap_or_else(|| config_file.with_file_name("logger_config.yaml"));
    let report = check::run(&config_file, &logger_file, args.connect);
    println!("{report}");
    if report.has_failures() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `configs/config.yaml` in the current folder if present, else in the package root two
/// levels above the binary.
fn default_config_file() -> PathBuf {
    let local = Path::new("configs/config.yaml");
    if local.exists() {
        return local.to_owned();
    }
    binary_package_root()
        .map(|root| root.join("configs/config.yaml"))
        .unwrap_or_else(|| local.to_owned())
}

/// `configs/secret` in the current folder if it has a `configs/` folder, else in the
/// package root two levels above the binary if that has one.
fn default_secret_folder() -> anyhow::Result<PathBuf> {
    if Path::new("configs").is_dir() {
        return Ok(PathBuf::from("configs/secret"));
    }
    match binary_package_root() {
        Some(root) if root.join("configs").is_dir() => Ok(root.join("configs/secret")),
        _ => anyhow::bail!(
            "neither the current folder nor the package that contains this binary has a configs/ folder; \
             run keygen in the Agent package folder or pass --out with the folder for private.pem"
        ),
    }
}

/// Returns the folder two levels above this binary, which is the package root when the
/// binary is in `bin/<OS>/`.
fn binary_package_root() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    exe.parent()?.parent()?.parent().map(Path::to_owned)
}
