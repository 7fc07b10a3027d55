//! `ipaas-server`: the cloud side of the gateway.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};

use std::future::Future;

use ipaas_gateway::backend::{self, BackendChoice, Runtime, ShardMain};
use ipaas_gateway::config::{self, ServerConfig};
use ipaas_gateway::keys::RECOMMENDED_KEY_BITS;
use ipaas_gateway::registry::sqlite::SqliteRegistry;
use ipaas_gateway::registry::Registry;
use ipaas_gateway::server::{self, cli, ServerShared, ShardMessage};
use ipaas_gateway::{telemetry, tls};

#[derive(Parser)]
#[command(
    name = "ipaas-server",
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
    /// Create a Server folder: server.yaml, a PKI, an admin token, data and artifacts.
    Init {
        /// Folder to create.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// DNS name or IP address Agents use to reach the Server; repeat for several. The
        /// first one goes into Agent packages.
        #[arg(long = "name", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        names: Vec<String>,
        /// Address the Agents connect to.
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: std::net::SocketAddr,
        /// Address of the admin API; keep it on loopback.
        #[arg(long, default_value = "127.0.0.1:7001")]
        admin: std::net::SocketAddr,
    },
    /// Create and issue TLS certificates.
    #[command(subcommand)]
    Pki(PkiCommand),
    /// Manage gateways through the admin API of a running Server.
    #[command(subcommand)]
    Gateway(GatewayCommand),
    /// Add or remove a gateway's public keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Add or remove a gateway's services.
    #[command(subcommand)]
    Service(ServiceCommand),
    /// Download the Agent package of a gateway.
    Package {
        #[command(flatten)]
        admin: AdminArgs,
        /// Gateway id.
        id: String,
        /// Archive format: tar.gz or zip.
        #[arg(long, default_value = "tar.gz")]
        format: String,
        /// Output file; defaults to ipaas-private-cloud-agent-<id>.<format>.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Connection settings of the admin commands.
#[derive(clap::Args)]
struct AdminArgs {
    /// Server config holding the admin address and token.
    #[arg(long, default_value = "configs/server.yaml")]
    config: PathBuf,
    /// Admin API URL, such as http://127.0.0.1:7001; overrides the config.
    #[arg(long)]
    admin_url: Option<String>,
    /// Admin token; overrides the config.
    #[arg(long, env = "IPAAS_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

impl AdminArgs {
    fn connect(self) -> anyhow::Result<cli::Connection> {
        cli::Connection::new(&self.config, self.admin_url, self.token, self.json)
    }
}

#[derive(Subcommand)]
enum GatewayCommand {
    /// Create a gateway.
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// Gateway id, sent by its Agents.
        id: String,
        /// Name shown to people.
        #[arg(long)]
        name: Option<String>,
        /// Public key file (PKCS#1 or SPKI PEM); repeat for several.
        #[arg(long = "key")]
        keys: Vec<PathBuf>,
        /// Network the Agents connect from (CIDR or address); repeat for several.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// Service as NAME=TARGET@LISTEN, e.g. web=10.0.0.5:80@0.0.0.0:30001; repeat for several.
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// List gateways.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Show one gateway.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
    /// Change a gateway's name or replace its Agent IP allowlist.
    Update {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        #[arg(long)]
        name: Option<String>,
        /// New allowlist entry; repeat for several. Replaces the whole list.
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
    /// Delete a gateway and disconnect its Agents.
    Delete {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Register a public key for a gateway.
    Add {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        /// Public key file (PKCS#1 or SPKI PEM).
        file: PathBuf,
    },
    /// Remove a public key by its fingerprint (SHA256:...).
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        fingerprint: String,
    },
}

#[derive(Subcommand)]
enum ServiceCommand {
    /// Add a service to a gateway.
    Add {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        name: String,
        /// Private host:port the Agent dials.
        #[arg(long)]
        target: String,
        /// Entry address on the Server.
        #[arg(long)]
        listen: String,
    },
    /// Remove a service from a gateway.
    Remove {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        name: String,
    },
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

fn main() -> std::process::ExitCode {
    // Errors print as one message with their causes; a backtrace would only bury the fix.
    match run_command(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_command(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run {
            config,
            shards,
            backend,
        } => run(&config, shards, backend),
        Command::Check { config } => {
            let config = ServerConfig::load(&config)?;
            tls::server_config(&config.tls)?;
            config.log.check_file()?;
            println!(
                "config is valid: {} gateway(s), Agent port {}",
                config.gateways.len(),
                config.listen
            );
            Ok(())
        }
        Command::Init {
            dir,
            names,
            listen,
            admin,
        } => init(&dir, &names, listen, admin),
        Command::Gateway(GatewayCommand::Create {
            admin,
            id,
            name,
            keys,
            allow,
            services,
        }) => cli::create(&admin.connect()?, &id, name, &keys, allow, &services),
        Command::Gateway(GatewayCommand::List { admin }) => cli::list(&admin.connect()?),
        Command::Gateway(GatewayCommand::Show { admin, id }) => cli::show(&admin.connect()?, &id),
        Command::Gateway(GatewayCommand::Update {
            admin,
            id,
            name,
            allow,
        }) => {
            let allow = (!allow.is_empty()).then_some(allow);
            cli::update(&admin.connect()?, &id, name, allow)
        }
        Command::Gateway(GatewayCommand::Delete { admin, id }) => {
            cli::delete(&admin.connect()?, &id)
        }
        Command::Key(KeyCommand::Add { admin, id, file }) => {
            cli::add_key(&admin.connect()?, &id, &file)
        }
        Command::Key(KeyCommand::Remove {
            admin,
            id,
            fingerprint,
        }) => cli::remove_key(&admin.connect()?, &id, &fingerprint),
        Command::Service(ServiceCommand::Add {
            admin,
            id,
            name,
            target,
            listen,
        }) => {
            let service = ipaas_gateway::registry::ServiceRecord {
                name,
                target,
                listen,
            };
            cli::add_service(&admin.connect()?, &id, service)
        }
        Command::Service(ServiceCommand::Remove { admin, id, name }) => {
            cli::remove_service(&admin.connect()?, &id, &name)
        }
        Command::Package {
            admin,
            id,
            format,
            out,
        } => cli::package(&admin.connect()?, &id, &format, out),
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
            ipaas_gateway::protocol::handshake::validate_name("gateway id", &gateway)?;
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
    let tls = tls::server_config(&config.tls).context("cannot load the Server's TLS files; `ipaas-server init` or `ipaas-server pki init` creates them")?;
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
    let ca_key = config.pki_dir.join(tls::pki::CA_KEY);
    for key_file in [&config.tls.key, &ca_key] {
        if let Some(warning) = ipaas_gateway::keys::permission_warning(key_file) {
            tracing::warn!("{warning}");
        }
    }

    let (backend, reason) = backend::select(backend.unwrap_or(config.runtime.backend))?;
    let registry = open_registry(&config)?;
    let admin = config.admin.clone();
    let shutdown = backend::install_shutdown_handler(None)?;
    let (shared, handoffs) = ServerShared::new(config, tls, registry, shards)?;
    if let Some(admin) = admin {
        server::admin::spawn(Arc::clone(&shared), admin)?;
    }
    tracing::info!(
        listen = %shared.config.listen, shards, gateways = shared.snapshot().gateways.len(),
        version = env!("CARGO_PKG_VERSION"), %backend, "Server starting on the {backend} backend: {reason}"
    );

    let main = Arc::new(ServerMain {
        shared,
        handoffs: std::sync::Mutex::new(handoffs.into_iter().map(Some).collect()),
        shutdown,
    });
    backend::launch(backend, shards, "ipaas-server", Arc::clone(&main))?;
    let stats = &main.shared.stats;
    tracing::info!(
        sessions = stats.sessions.get(),
        streams = stats.streams.get(),
        rejections = stats.rejections.get(),
        handshake_failures = stats.handshake_failures.get(),
        rate_limited = stats.rate_limited.get(),
        unauthenticated_dropped = stats.unauthenticated_dropped.get(),
        unauthenticated_evicted = stats.unauthenticated_evicted.get(),
        handoffs = stats.handoffs.get(),
        sessions_moved = stats.sessions_moved.get(),
        no_agent = stats.no_agent.get(),
        "Server stopped"
    );
    Ok(())
}

/// Inputs of each Server shard.
struct ServerMain {
    shared: Arc<ServerShared>,
    /// Handoff receivers, taken by their shard at start.
    handoffs: std::sync::Mutex<Vec<Option<flume::Receiver<ShardMessage>>>>,
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

/// Opens the registry and imports the gateways of the config file into it if it is empty.
fn open_registry(config: &ServerConfig) -> anyhow::Result<Arc<dyn Registry>> {
    let registry = SqliteRegistry::open(&config.data_dir.join("registry.db"))?;
    let existing = registry.list()?;
    if existing.is_empty() && !config.import.is_empty() {
        for record in &config.import {
            registry.insert(record)?;
        }
        tracing::info!(
            gateways = config.import.len(), registry = %registry.path().display(),
            "imported the gateways of the config file; from now on the registry is used and the file's `gateways` section is ignored"
        );
    } else if !config.import.is_empty() {
        tracing::warn!(
            registry = %registry.path().display(),
            "the config file lists gateways, but the registry already holds some; the file's `gateways` section is ignored (it is imported only into an empty registry)"
        );
    }
    Ok(Arc::new(registry))
}

/// Creates a Server folder with a config that runs as it is.
fn init(
    dir: &std::path::Path,
    names: &[String],
    listen: std::net::SocketAddr,
    admin: std::net::SocketAddr,
) -> anyhow::Result<()> {
    use rand::RngCore;

    let config_path = dir.join("server.yaml");
    if config_path.exists() {
        anyhow::bail!(
            "{} already exists; remove it or pick another --dir",
            config_path.display()
        );
    }
    tls::pki::init(&dir.join("pki"), names, false)?;
    for folder in [
        "data",
        "artifacts/Linux",
        "artifacts/Mac",
        "artifacts/Windows",
        "keys",
    ] {
        std::fs::create_dir_all(dir.join(folder))
            .with_context(|| format!("cannot create {}", dir.join(folder).display()))?;
    }

    let mut token = [0u8; 24];
    rand::rngs::OsRng.fill_bytes(&mut token);
    let token: String = token.iter().map(|byte| format!("{byte:02x}")).collect();
    let token_path = dir.join("admin.token");
    std::fs::write(&token_path, format!("{token}\n"))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&token_path, std::fs::Permissions::from_mode(0o600))?;
    }

    // The Agent binary beside this one goes into packages for Linux hosts.
    let mut copied = false;
    if let Some(agent) = std::env::current_exe()?
        .parent()
        .map(|bin| bin.join("ipaas-agent"))
    {
        if agent.exists() && cfg!(target_os = "linux") {
            std::fs::copy(&agent, dir.join("artifacts/Linux/ipaas-agent"))?;
            copied = true;
        }
    }

    let public = names.first().map_or("localhost", String::as_str);
    std::fs::write(
        &config_path,
        format!(
            "# Server settings; relative paths are resolved against this folder.\n\
             listen: \"{listen}\"\n\
             tls:\n  ca: pki/ca.pem\n  cert: pki/server.pem\n  key: pki/server.key\n\
             pki_dir: pki\n\
             # The gateway registry (SQLite).\n\
             data_dir: data\n\
             # Admin API for `ipaas-server gateway ...`; keep it on loopback.\n\
             admin:\n  listen: \"{admin}\"\n  token_file: admin.token\n\
             # What Agent packages are built with.\n\
             package:\n  server_address: \"{public}:{port}\"\n  server_name: \"{public}\"\n  artifacts_dir: artifacts\n\
             log:\n  level: info\n  file: log/server.log\n",
            port = listen.port()
        ),
    )?;
    println!(
        "created {} with a CA, a Server certificate for {}, and an admin token in {}",
        config_path.display(),
        names.join(", "),
        token_path.display()
    );
    if !copied {
        println!("put the Agent binaries into {}/artifacts/{{Linux,Mac,Windows}} to include them in packages", dir.display());
    }
    println!(
        "start the Server with: ipaas-server run --config {}",
        config_path.display()
    );
    Ok(())
}

/// Fails early, with the address and its config key, when a listen port is taken.
fn check_ports_free(config: &ServerConfig) -> anyhow::Result<()> {
    let mut addresses = vec![("listen".to_string(), config.listen)];
    if let Some(admin) = &config.admin {
        addresses.push(("admin.listen".to_string(), admin.listen));
    }
    for (what, addr) in addresses {
        // A Server that was just killed can hold its sockets a little longer: the kernel
        // tears its io_uring rings down in the background. Retry for a few seconds.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let mut result = backend::check_port_free(addr);
        while result
            .as_ref()
            .is_err_and(|error| error.kind() == std::io::ErrorKind::AddrInUse)
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(100));
            result = backend::check_port_free(addr);
        }
        result.with_context(|| {
            format!(
                "cannot listen on {addr} ({what}); stop the process using it or pick another port"
            )
        })?;
    }
    Ok(())
}
