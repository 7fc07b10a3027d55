//! `ipaas-agent check`: validates an Agent package without starting the Agent.
//!
//! The file checks (config, private key, TLS files in `configs/client/`, service targets)
//! run on the calling thread. With `--connect`, one login to the Server (TLS handshake,
//! then Hello, Challenge, Auth and Welcome or Reject) runs on a one-thread tokio runtime,
//! and the session is closed right after.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_lite::{AsyncRead, AsyncWrite};
use rand::RngCore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore};

use super::{AgentShared, AgentStats, HANDSHAKE_TIMEOUT};
use crate::backend::{self, timeout, Runtime};
use crate::config::{AgentConfig, ConfigError, LoggerConfig};
use crate::keys::{self, PrivateKey, MIN_KEY_BITS, RECOMMENDED_KEY_BITS};
use crate::protocol::frame::{self, GoAwayReason};
use crate::protocol::handshake::Welcome;
use crate::relay::tls::TlsIo;
use crate::relay::SessionError;
use crate::tls::{self, TlsError, TlsFiles};

/// A client certificate closer than this to its expiry gets a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// Fix for a TLS file problem on the Agent's side.
const TLS_FILES_FIX: &str = "the Server's operator issues these files with `ipaas-server pki issue-agent`; ask for them again and do not edit them";

/// Outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The check passed.
    Ok,
    /// The Agent can run, but something should be fixed.
    Warning,
    /// The Agent cannot start, or cannot log in, until this is fixed.
    Failed,
    /// The check did not run because an earlier one failed.
    Skipped,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Ok => "ok",
            Self::Warning => "warning",
            Self::Failed => "FAILED",
            Self::Skipped => "skipped",
        })
    }
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    /// Area checked: `config`, `logger`, `package`, `private key`, `TLS files`, `service` or
    /// `server`.
    pub subject: &'static str,
    /// The result, naming the file or address concerned and, for a problem, the fix.
    pub message: String,
}

/// Findings of one `check` run, in the order the checks ran.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    fn push(&mut self, status: Status, subject: &'static str, message: impl Into<String>) {
        self.findings.push(Finding {
            status,
            subject,
            message: message.into(),
        });
    }

    /// Reports whether any check failed.
    pub fn has_failures(&self) -> bool {
        self.count(Status::Failed) > 0
    }

    /// Counts the findings with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.findings
            .iter()
            .filter(|finding| finding.status == status)
            .count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for finding in &self.findings {
            writeln!(
                f,
                "{:<8} {:<12} {}",
                finding.status, finding.subject, finding.message
            )?;
        }
        write!(
            f,
            "{} ok, {} warning(s), {} failed",
            self.count(Status::Ok),
            self.count(Status::Warning),
            self.count(Status::Failed)
        )?;
        match self.count(Status::Skipped) {
            0 => Ok(()),
            skipped => write!(f, ", {skipped} skipped"),
        }
    }
}

/// Checks the package whose config is `config_file` and whose logger config is
/// `logger_file`. With `connect`, it also logs in to the Server once and closes the session
/// again.
///
/// Service targets that are not `host:port` are reported as config problems, because the
/// config parser rejects them.
pub fn run(config_file: &Path, logger_file: &Path, connect: bool) -> Report {
    let mut report = Report::default();
    let config = check_config(&mut report, config_file);
    check_logger(&mut report, logger_file, config.as_ref());
    let Some(config) = config else {
        report.push(
            Status::Skipped,
            "package",
            "the private key, the TLS files and the services were not checked because the config is invalid",
        );
        return report;
    };

    let key = check_private_key(&mut report, &config);
    let tls = check_tls_files(&mut report, &config.tls);
    check_services(&mut report, &config);
    if !connect {
        return report;
    }

    match (key, tls) {
        (Some(key), Some(tls)) => check_login(&mut report, config_file, config, key, tls),
        _ => report.push(
            Status::Skipped,
            "server",
            "not contacted because the private key or the TLS files failed above",
        ),
    }
    report
}

fn check_config(report: &mut Report, file: &Path) -> Option<AgentConfig> {
    match AgentConfig::load(file) {
        Ok(config) => {
            report.push(
                Status::Ok,
                "config",
                format!(
                    "{} is valid: gateway `{}`, agent `{}`, Server {} (TLS name `{}`)",
                    file.display(),
                    config.gateway_id,
                    config.agent_name,
                    config.server,
                    config.server_name
                ),
            );
            Some(config)
        }
        Err(error) => {
            push_config_problems(report, "config", &error);
            None
        }
    }
}

/// Checks the logger config as the Agent loads it, and its log file path as the Agent checks
/// it at start: relative paths resolve against the package root, and a missing logger
/// config means logging to standard error.
fn check_logger(report: &mut Report, file: &Path, config: Option<&AgentConfig>) {
    if !file.exists() {
        report.push(
            Status::Ok,
            "logger",
            format!(
                "{} does not exist, so the Agent logs at `info` to standard error only",
                file.display()
            ),
        );
        return;
    }
    // Without a valid Agent config, the folder above configs/ is taken as the package root.
    let fallback = file
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("."));
    let root = config.map_or(fallback, |config| config.root.as_path());
    let logger = match LoggerConfig::load(file, root) {
        Ok(logger) => logger,
        Err(error) => return push_config_problems(report, "logger", &error),
    };
    // The same checks as at start, which also create a missing log folder.
    if let Err(error) = logger.check_file() {
        return push_config_problems(report, "logger", &error);
    }

    let destination = match &logger.file {
        Some(log) => {
            let policy = &logger.backups;
            let age = policy.max_age.map_or("any age".to_owned(), |age| {
                format!("up to {}", format_age(age))
            });
            format!(
                "to {}, rotated past {}, {} kept for {age}{}",
                log.display(),
                format_size(policy.max_size),
                plural(policy.max_backups as u64, "backup", "backups"),
                if policy.compress {
                    ", gzip-compressed"
                } else {
                    ""
                }
            )
        }
        None => "to standard error only".to_owned(),
    };
    report.push(
        Status::Ok,
        "logger",
        format!(
            "{} is valid: level `{}`, {destination}",
            file.display(),
            logger.level
        ),
    );
}

/// Formats a byte count with the largest binary unit that divides it.
fn format_size(bytes: u64) -> String {
    for (unit, size) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
        if bytes.is_multiple_of(size) {
            return format!("{} {unit}", bytes / size);
        }
    }
    plural(bytes, "byte", "bytes")
}

/// Formats a duration in whole days, hours, minutes, seconds and milliseconds, such as
/// `30 days` or `1 day 12 hours`. Parts that are zero are left out.
fn format_age(age: Duration) -> String {
    let seconds = age.as_secs();
    let parts = [
        (seconds / 86_400, "day", "days"),
        (seconds / 3600 % 24, "hour", "hours"),
        (seconds / 60 % 60, "minute", "minutes"),
        (seconds % 60, "second", "seconds"),
        (
            u64::from(age.subsec_millis()),
            "millisecond",
            "milliseconds",
        ),
    ];
    let words: Vec<String> = parts
        .iter()
        .filter(|(count, _, _)| *count > 0)
        .map(|&(count, one, many)| plural(count, one, many))
        .collect();
    if words.is_empty() {
        return "0 seconds".to_owned();
    }
    words.join(" ")
}

/// Formats `count` with the singular or the plural noun.
fn plural(count: u64, one: &str, many: &str) -> String {
    if count == 1 {
        format!("1 {one}")
    } else {
        format!("{count} {many}")
    }
}

/// Adds one failure per problem, so every bad key of the file is listed.
fn push_config_problems(report: &mut Report, subject: &'static str, error: &ConfigError) {
    let file = error.file.display();
    for problem in &error.problems {
        let mut message = if problem.key.is_empty() {
            format!("{file}: {}", problem.message)
        } else {
            format!("{file}: {}: {}", problem.key, problem.message)
        };
        if problem.key.is_empty() && !error.file.exists() {
            message += "; pass --config with the path of the Agent's config.yaml";
        }
        report.push(Status::Failed, subject, message);
    }
}

fn check_private_key(report: &mut Report, config: &AgentConfig) -> Option<PrivateKey> {
    let path = &config.private_key;
    if !path.exists() {
        report.push(
            Status::Failed,
            "private key",
            format!(
                "{} not found; create a key pair with {} and send public.pem to the Server's operator to register it for gateway `{}`",
                path.display(),
                keygen_command(path, false),
                config.gateway_id
            ),
        );
        return None;
    }

    let permission_warning = keys::permission_warning(path);
    let key = match PrivateKey::load(path, MIN_KEY_BITS) {
        Ok(key) => {
            report.push(
                Status::Ok,
                "private key",
                format!(
                    "{}: {}-bit RSA key, fingerprint {}",
                    path.display(),
                    key.bits(),
                    key.fingerprint()
                ),
            );
            Some(key)
        }
        Err(error) => {
            report.push(Status::Failed, "private key", error.to_string());
            None
        }
    };

    if let Some(key) = key.as_ref().filter(|key| key.bits() < RECOMMENDED_KEY_BITS) {
        report.push(
            Status::Warning,
            "private key",
            format!(
                "{} has {} bits, fewer than the recommended {RECOMMENDED_KEY_BITS}; create a new key pair with {} and register the new public.pem for gateway `{}`",
                path.display(),
                key.bits(),
                keygen_command(path, true),
                config.gateway_id
            ),
        );
    }
    if let Some(warning) = permission_warning {
        report.push(Status::Warning, "private key", warning);
    }
    key
}

/// Returns the command that creates a key pair at `private_key`. That is
/// `ipaas-agent keygen` when the file is named private.pem, else `openssl genrsa`.
fn keygen_command(private_key: &Path, force: bool) -> String {
    let folder = private_key.parent().filter(|_| {
        private_key
            .file_name()
            .is_some_and(|name| name == "private.pem")
    });
    match folder {
        Some(folder) => format!(
            "`ipaas-agent keygen --out {}{}`",
            folder.display(),
            if force { " --force" } else { "" }
        ),
        None => format!("`openssl genrsa -out {} 2048`", private_key.display()),
    }
}

fn check_tls_files(report: &mut Report, files: &TlsFiles) -> Option<Arc<rustls::ClientConfig>> {
    let config = match tls::client_config(files) {
        Ok(config) => config,
        Err(error) => {
            report.push(Status::Failed, "TLS files", tls_error_message(&error));
            return None;
        }
    };
    report.push(
        Status::Ok,
        "TLS files",
        format!(
            "{}, {} and {} load",
            files.ca.display(),
            files.cert.display(),
            files.key.display()
        ),
    );
    check_client_certificate(report, files);
    Some(config)
}

fn tls_error_message(error: &TlsError) -> String {
    match error {
        // The Pem message advises `pki init`, which is the Server operator's step.
        TlsError::Pem { what, path, detail } => format!(
            "cannot load {what} from {}: {detail}; {TLS_FILES_FIX}",
            path.display()
        ),
        other => format!("{other}; {TLS_FILES_FIX}"),
    }
}

/// Checks that the client certificate is valid now and chains to `files.ca`, as the Server
/// checks it with its own copy of that CA.
fn check_client_certificate(report: &mut Report, files: &TlsFiles) {
    let (Some(chain), Some(roots)) = (read_certificates(&files.cert), read_certificates(&files.ca))
    else {
        return;
    };
    let Some((leaf, intermediates)) = chain.split_first() else {
        return;
    };
    let mut store = RootCertStore::empty();
    for root in roots {
        let _ = store.add(root);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let Ok(verifier) =
        WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider).build()
    else {
        return;
    };

    let cert = files.cert.display();
    let error = match verifier.verify_client_cert(leaf, intermediates, UnixTime::now()) {
        Ok(_) => {
            let days_left = days_until_expiry(leaf);
            let validity = match days_left {
                Some(days) => format!("valid for {days} more days"),
                None => "valid now".to_owned(),
            };
            report.push(
                Status::Ok,
                "TLS files",
                format!("{cert} is signed by {} and {validity}", files.ca.display()),
            );
            if let Some(days) = days_left.filter(|days| *days < EXPIRY_WARNING_DAYS) {
                report.push(
                    Status::Warning,
                    "TLS files",
                    format!("{cert} expires in {days} days; {TLS_FILES_FIX}"),
                );
            }
            return;
        }
        Err(rustls::Error::InvalidCertificate(error)) => error,
        Err(other) => {
            report.push(
                Status::Warning,
                "TLS files",
                format!(
                    "cannot verify {cert} against {}: {other}",
                    files.ca.display()
                ),
            );
            return;
        }
    };

    match error {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => report.push(
            Status::Failed,
            "TLS files",
            format!("{cert} has expired ({error}); {TLS_FILES_FIX}"),
        ),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => report.push(
            Status::Failed,
            "TLS files",
            format!("{cert} is not valid yet ({error}); check this host's clock"),
        ),
        other => report.push(
            Status::Warning,
            "TLS files",
            format!(
                "{cert} does not verify against {} ({other}); the Server accepts it only if its own CA signed it, so compare both files with what the Server's operator issued",
                files.ca.display()
            ),
        ),
    }
}

fn read_certificates(path: &Path) -> Option<Vec<CertificateDer<'static>>> {
    CertificateDer::pem_file_iter(path)
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()
}

/// Whole days until `cert` expires, or `None` when its validity cannot be read.
fn days_until_expiry(cert: &CertificateDer<'_>) -> Option<i64> {
    let params = rcgen::CertificateParams::from_ca_cert_der(cert).ok()?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let seconds = params.not_after.unix_timestamp() - i64::try_from(now).ok()?;
    Some(seconds / 86_400)
}

/// Adds one line per service. A target that is not `host:port` has already failed the
/// config check.
fn check_services(report: &mut Report, config: &AgentConfig) {
    let mut services: Vec<_> = config.services.iter().collect();
    services.sort_by(|a, b| a.0.cmp(b.0));
    for (name, target) in services {
        report.push(
            Status::Ok,
            "service",
            format!("`{name}` relays to {target}"),
        );
    }
}

/// Logs in to the Server once on a one-thread tokio runtime and adds the outcome to
/// `report`.
fn check_login(
    report: &mut Report,
    config_file: &Path,
    config: AgentConfig,
    key: PrivateKey,
    tls: Arc<rustls::ClientConfig>,
) {
    let mut instance_id = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut instance_id);
    let agent = Arc::new(AgentShared {
        config,
        config_file: config_file.to_owned(),
        key,
        tls,
        instance_id,
        drain_timeout: Duration::ZERO,
        stats: AgentStats::default(),
    });

    let (sender, receiver) = flume::bounded(1);
    let ran = backend::tokio::run(1, "ipaas-agent-check", move |runtime| {
        let agent = Arc::clone(&agent);
        let sender = sender.clone();
        async move {
            let outcome = log_in(&runtime, &agent).await;
            let _ = sender.send(outcome);
        }
    });
    if let Err(error) = ran {
        report.push(
            Status::Failed,
            "server",
            format!("cannot start a runtime for the login: {error}"),
        );
        return;
    }
    match receiver.try_recv() {
        Ok(outcome) => report.findings.extend(outcome.findings),
        Err(_) => report.push(Status::Failed, "server", "the login ended without a result"),
    }
}

/// Connects, runs the TLS handshake and the authentication, and closes the session.
async fn log_in<R: Runtime>(runtime: &R, agent: &AgentShared) -> Report {
    let mut report = Report::default();
    let config = &agent.config;
    let file = agent.config_file.display();

    // Resolve and connect, as the running Agent does.
    let addresses = match super::resolve(&config.server).await {
        Ok(addresses) if !addresses.is_empty() => addresses,
        Ok(_) => {
            report.push(
                Status::Failed,
                "server",
                format!("{} resolves to no address; check server.address in {file} and this host's DNS settings", config.server),
            );
            return report;
        }
        Err(error) => {
            report.push(
                Status::Failed,
                "server",
                format!("cannot resolve {}: {error}; check server.address in {file} and this host's DNS settings", config.server),
            );
            return report;
        }
    };
    // A DNS name is followed by the addresses it resolved to.
    let resolved = if config.server.host.parse::<IpAddr>().is_ok() {
        String::new()
    } else {
        format!(" ({})", join(&addresses))
    };
    let tcp = match super::dial(runtime, &config.server, config.connect_timeout).await {
        Ok(tcp) => tcp,
        Err(error) => {
            report.push(
                Status::Failed,
                "server",
                format!(
                    "cannot connect to {}{resolved}: {error}; check that the Server runs and that this network allows outbound TCP to port {}",
                    config.server, config.server.port
                ),
            );
            return report;
        }
    };
    report.push(
        Status::Ok,
        "server",
        format!("connected to {}{resolved}", config.server),
    );

    // TLS handshake.
    let tls_fix = format!(
        "check that {} holds the files this Server issued and that server.tls_name (`{}`) is a name in the Server's certificate",
        config.tls.ca.parent().unwrap_or(Path::new(".")).display(),
        config.server_name
    );
    let Ok(server_name) = ServerName::try_from(config.server_name.clone()) else {
        report.push(
            Status::Failed,
            "server",
            format!(
                "server.tls_name `{}` in {file} is not a valid DNS name or IP address",
                config.server_name
            ),
        );
        return report;
    };
    let connection = match rustls::ClientConnection::new(Arc::clone(&agent.tls), server_name) {
        Ok(connection) => connection,
        Err(error) => {
            report.push(
                Status::Failed,
                "server",
                format!("cannot start TLS: {error}"),
            );
            return report;
        }
    };
    let mut io = TlsIo::new(tcp, rustls::Connection::Client(connection));
    match timeout(runtime, HANDSHAKE_TIMEOUT, io.complete_handshake()).await {
        Some(Ok(())) => report.push(
            Status::Ok,
            "server",
            format!(
                "TLS handshake succeeded; the Server's certificate is valid for `{}`",
                config.server_name
            ),
        ),
        // A Server that sheds load closes the connection before its first TLS record, so the
        // TLS files are not the cause.
        Some(Err(SessionError::PeerClosed)) => {
            report.push(
                Status::Failed,
                "server",
                format!(
                    "{} closed the connection during the TLS handshake; the Server may be turning away new connections (its handshake cap or per-source rate limit) or this address may be blocked in front of it: try again, and check the Server's log",
                    config.server
                ),
            );
            return report;
        }
        Some(Err(error)) => {
            report.push(
                Status::Failed,
                "server",
                format!(
                    "TLS handshake with {} failed: {error}; {tls_fix}",
                    config.server
                ),
            );
            return report;
        }
        None => {
            report.push(
                Status::Failed,
                "server",
                format!(
                    "TLS handshake with {} timed out after {} s",
                    config.server,
                    HANDSHAKE_TIMEOUT.as_secs()
                ),
            );
            return report;
        }
    }

    // Hello, Challenge, Auth, then Welcome or Reject.
    match timeout(
        runtime,
        HANDSHAKE_TIMEOUT,
        super::authenticate(&mut io, agent, 0),
    )
    .await
    {
        Some(Ok((welcome, _))) => {
            push_welcome(&mut report, agent, &welcome);
            close_session(&mut io).await;
            report.push(
                Status::Ok,
                "server",
                format!("closed session {}", welcome.session_id),
            );
        }
        Some(Err(SessionError::Rejected { reason, message })) => report.push(
            Status::Failed,
            "server",
            format!(
                "the Server rejected this Agent: {reason} (Server message: {message}); {}",
                super::rejection_hint(agent, reason)
            ),
        ),
        // With TLS 1.3 the Server checks the client certificate after the client's side of
        // the handshake is complete, so a rejected certificate shows up here.
        Some(Err(SessionError::Tls(error))) => report.push(
            Status::Failed,
            "server",
            format!(
                "the Server ended TLS during login: {error}; it did not accept {}; {TLS_FILES_FIX}",
                config.tls.cert.display()
            ),
        ),
        Some(Err(error)) => report.push(
            Status::Failed,
            "server",
            format!("login failed: {error}; check the Server's log for details"),
        ),
        None => report.push(
            Status::Failed,
            "server",
            format!("login timed out after {} s", HANDSHAKE_TIMEOUT.as_secs()),
        ),
    }
    report
}

/// Adds the accepted session and every mismatch between the services the Server routes
/// and the services the config lists.
fn push_welcome(report: &mut Report, agent: &AgentShared, welcome: &Welcome) {
    let config = &agent.config;
    let file = agent.config_file.display();
    let routed = if welcome.services.is_empty() {
        "none".to_owned()
    } else {
        welcome.services.join(", ")
    };
    report.push(
        Status::Ok,
        "server",
        format!(
            "the Server accepted this Agent (Welcome): session id {}, gateway `{}`, routed services: {routed}",
            welcome.session_id, config.gateway_id
        ),
    );

    if welcome.services.is_empty() {
        report.push(
            Status::Warning,
            "server",
            format!("the Server routes no service to gateway `{}`; ask its operator to add the services this Agent relays", config.gateway_id),
        );
    }
    for service in &welcome.services {
        if !config.services.contains_key(service) {
            report.push(
                Status::Warning,
                "service",
                format!(
                    "the Server routes `{service}` to gateway `{}`, but {file} does not list it, so its connections will be rejected; add it under `services:` with its `target`",
                    config.gateway_id
                ),
            );
        }
    }
    let mut unrouted: Vec<_> = config
        .services
        .keys()
        .filter(|name| !welcome.services.contains(name))
        .collect();
    unrouted.sort();
    for name in unrouted {
        report.push(
            Status::Warning,
            "service",
            format!(
                "{file} lists `{name}`, which the Server does not route to gateway `{}`; compare the name with the Server's operator",
                config.gateway_id
            ),
        );
    }
}

/// Sends GoAway, so the Server opens no more streams on this session, then a TLS
/// close_notify.
async fn close_session<T: AsyncRead + AsyncWrite + Unpin>(io: &mut TlsIo<T>) {
    let mut out = Vec::new();
    frame::encode_go_away(0, GoAwayReason::Shutdown, &mut out);
    let _ = io.send(&out).await;
    io.close().await;
}

fn join(addresses: &[SocketAddr]) -> String {
    addresses
        .iter()
        .map(SocketAddr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };

    /// Writes a CA and a client certificate valid from `not_before` to `not_after` (years).
    fn tls_files(dir: &Path, not_before: i32, not_after: i32, same_ca: bool) -> TlsFiles {
        let ca = |label: &str| {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::new()).unwrap();
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, label);
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
            let cert = params.self_signed(&key).unwrap();
            (cert, key)
        };
        let (signer, signer_key) = ca("signer");
        let (other, _) = ca("other");

        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::new()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.not_before = rcgen::date_time_ymd(not_before, 1, 1);
        params.not_after = rcgen::date_time_ymd(not_after, 1, 1);
        let cert = params.signed_by(&key, &signer, &signer_key).unwrap();

        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("client.pem"),
            key: dir.join("client.key"),
        };
        let ca_pem = if same_ca { signer.pem() } else { other.pem() };
        std::fs::write(&files.ca, ca_pem).unwrap();
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    fn statuses(report: &Report) -> Vec<Status> {
        report
            .findings
            .iter()
            .map(|finding| finding.status)
            .collect()
    }

    #[test]
    fn valid_certificate_reports_days_left() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path(), 2020, 2200, true);
        let mut report = Report::default();
        check_client_certificate(&mut report, &files);
        assert_eq!(statuses(&report), [Status::Ok], "{report}");
        assert!(report.findings[0].message.contains("more days"), "{report}");
    }

    #[test]
    fn expired_certificate_fails() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path(), 2000, 2001, true);
        let mut report = Report::default();
        check_client_certificate(&mut report, &files);
        assert_eq!(statuses(&report), [Status::Failed], "{report}");
        assert!(
            report.findings[0].message.contains("has expired"),
            "{report}"
        );
        assert!(
            report.findings[0].message.contains("client.pem"),
            "{report}"
        );
    }

    #[test]
    fn future_certificate_fails() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path(), 2199, 2200, true);
        let mut report = Report::default();
        check_client_certificate(&mut report, &files);
        assert_eq!(statuses(&report), [Status::Failed], "{report}");
        assert!(report.findings[0].message.contains("clock"), "{report}");
    }

    #[test]
    fn certificate_of_other_ca_warns() {
        let dir = tempfile::tempdir().unwrap();
        let files = tls_files(dir.path(), 2020, 2200, false);
        let mut report = Report::default();
        check_client_certificate(&mut report, &files);
        assert_eq!(statuses(&report), [Status::Warning], "{report}");
        assert!(
            report.findings[0]
                .message
                .contains("does not verify against"),
            "{report}"
        );
    }

    #[test]
    fn report_counts_and_layout() {
        let mut report = Report::default();
        report.push(Status::Ok, "config", "fine");
        report.push(Status::Warning, "private key", "loose mode");
        assert!(!report.has_failures());
        report.push(Status::Failed, "TLS files", "missing");
        assert!(report.has_failures());

        let text = report.to_string();
        assert!(text.contains("ok       config       fine\n"), "{text}");
        assert!(text.contains("FAILED   TLS files    missing\n"), "{text}");
        assert!(text.ends_with("1 ok, 1 warning(s), 1 failed"), "{text}");
    }

    #[test]
    fn keygen_command_matches_file_name() {
        let default = keygen_command(Path::new("/pkg/configs/secret/private.pem"), true);
        assert_eq!(
            default,
            "`ipaas-agent keygen --out /pkg/configs/secret --force`"
        );
        let custom = keygen_command(Path::new("/keys/agent.pem"), false);
        assert!(custom.contains("openssl genrsa"), "{custom}");
        assert!(custom.contains("/keys/agent.pem"), "{custom}");
    }
}
