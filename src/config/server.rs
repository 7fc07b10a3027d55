//! The Server's config (`configs/server.yaml`): listen addresses, TLS files, limits and the
//! gateways with their keys, Agent allowlists and services.
//!
//! Relative paths resolve against the folder that contains the config file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use super::logger::RawLogger;
use super::{
    read_yaml, resolve_path, ConfigError, Heartbeat, LoggerConfig, Problems, RawHeartbeat,
    RawRuntime, RuntimeSettings,
};
use crate::keys::{self, PublicKey};
use crate::registry::{GatewayRecord, ServiceRecord};
use crate::tls::TlsFiles;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    listen: String,
    tls: RawTls,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    heartbeat: RawHeartbeat,
    #[serde(default = "default_handshake_timeout")]
    handshake_timeout: String,
    #[serde(default = "default_max_unauthenticated")]
    max_unauthenticated: usize,
    #[serde(default = "default_handshake_rate")]
    handshake_rate_per_source: u32,
    #[serde(default = "default_min_key_bits")]
    min_key_bits: usize,
    #[serde(default = "default_drain_timeout")]
    drain_timeout: String,
    #[serde(default)]
    log: RawLogger,
    #[serde(default = "default_data_dir")]
    data_dir: String,
    #[serde(default = "default_pki_dir")]
    pki_dir: String,
    #[serde(default)]
    admin: Option<RawAdmin>,
    #[serde(default)]
    package: RawPackage,
    #[serde(default)]
    gateways: Vec<RawGateway>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    #[serde(default = "default_admin_listen")]
    listen: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPackage {
    #[serde(default)]
    server_address: Option<String>,
    #[serde(default)]
    server_name: Option<String>,
    #[serde(default = "default_artifacts_dir")]
    artifacts_dir: String,
}

fn default_data_dir() -> String {
    "data".into()
}
fn default_pki_dir() -> String {
    "pki".into()
}
fn default_admin_listen() -> String {
    "127.0.0.1:7001".into()
}
fn default_artifacts_dir() -> String {
    "artifacts".into()
}

/// Shortest admin token accepted.
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    ca: String,
    cert: String,
    key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    id: String,
    public_keys: Vec<String>,
    allow: Vec<String>,
    #[serde(default)]
    services: Vec<RawService>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    listen: String,
    #[serde(default)]
    target: Option<String>,
}

fn default_handshake_timeout() -> String {
    "10s".into()
}
fn default_handshake_rate() -> u32 {
    20
}
fn default_max_unauthenticated() -> usize {
    256
}
fn default_min_key_bits() -> usize {
    keys::MIN_KEY_BITS
}
fn default_drain_timeout() -> String {
    "30s".into()
}

/// Resolved Server configuration.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the Agents dial.
    pub listen: SocketAddr,
    pub tls: TlsFiles,
    pub runtime: RuntimeSettings,
    pub heartbeat: Heartbeat,
    /// Time limit from TCP accept to Welcome.
    pub handshake_timeout: Duration,
    /// Cap on connections that have not finished the handshake, per shard.
    pub max_unauthenticated: usize,
    /// New Agent connections a source address may open per second on each shard (bursts
    /// of twice that); 0 turns the limit off.
    pub handshake_rate_per_source: u32,
    /// Smallest RSA modulus accepted for Agent keys.
    pub min_key_bits: usize,
    /// How long in-flight streams may run after SIGTERM before the sessions close.
    pub drain_timeout: Duration,
    pub log: LoggerConfig,
    /// Folder of the registry database.
    pub data_dir: PathBuf,
    /// Folder made by `ipaas-server pki init`, used to issue Agent certificates.
    pub pki_dir: PathBuf,
    pub admin: Option<AdminConfig>,
    pub package: PackageSettings,
    /// Gateways listed in the file, imported into an empty registry at start.
    pub gateways: Vec<Gateway>,
    /// The same gateways as registry records.
    pub import: Vec<GatewayRecord>,
}

/// The admin API: loopback by default, protected by a bearer token.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    pub token: Secret,
}

/// Settings for building Agent packages.
#[derive(Debug, Clone)]
pub struct PackageSettings {
    /// `host:port` the Agents dial; defaults to `listen`.
    pub server_address: String,
    /// Name in the Server's certificate; defaults to the host of `server_address`.
    pub server_name: String,
    /// Folder with `Linux/ipaas-agent`, `Mac/ipaas-agent`, `Windows/ipaas-agent.exe`.
    pub artifacts_dir: PathBuf,
}

/// A secret string whose `Debug` output shows nothing of it.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// Compares in time independent of where the inputs differ.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        let mut difference = expected.len() ^ candidate.len();
        for (index, byte) in expected.iter().enumerate() {
            difference |= usize::from(byte ^ candidate.get(index).copied().unwrap_or(0));
        }
        difference == 0
    }

    /// Returns the secret itself, for sending it. Never log the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A gateway: the Agents allowed to serve it and the services it exposes.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub id: String,
    /// Registered keys; any of them may sign, which allows rotation.
    pub public_keys: Vec<PublicKey>,
    /// Source networks an Agent of this gateway may connect from.
    pub allow: Vec<IpNet>,
    pub services: Vec<Service>,
}

impl Gateway {
    /// Reports whether `addr` is inside the allowlist.
    pub fn allows(&self, addr: std::net::IpAddr) -> bool {
        let addr = canonical_ip(addr);
        self.allow.iter().any(|net| net.contains(&addr))
    }
}

/// Maps an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`, seen on dual-stack listeners) to IPv4.
pub fn canonical_ip(addr: std::net::IpAddr) -> std::net::IpAddr {
    match addr {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(addr),
        v4 => v4,
    }
}

/// A service of a gateway and its entry address on the Server.
#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub listen: SocketAddr,
}

impl ServerConfig {
    /// Loads `file`, resolving relative paths against its folder and loading every public key.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = read_yaml(file)?;
        let root = std::path::absolute(file)
            .ok()
            .and_then(|file| file.parent().map(Path::to_owned))
            .unwrap_or_else(|| PathBuf::from("."));
        resolve(raw, file, &root)
    }
}

fn resolve(raw: Raw, file: &Path, root: &Path) -> Result<ServerConfig, ConfigError> {
    let mut problems = Problems::new(file);
    let listen = problems.socket_addr("listen", &raw.listen);
    let runtime = problems.runtime(&raw.runtime);
    let heartbeat = problems.heartbeat(&raw.heartbeat);
    let handshake_timeout = problems.duration("handshake_timeout", &raw.handshake_timeout);
    let drain_timeout = problems.duration("drain_timeout", &raw.drain_timeout);
    if raw.max_unauthenticated == 0 {
        problems.push("max_unauthenticated", "must be at least 1");
    }
    if !(keys::MIN_KEY_BITS..=keys::MAX_KEY_BITS).contains(&raw.min_key_bits) {
        problems.push(
            "min_key_bits",
            format!(
                "{} is out of range; use {} to {}",
                raw.min_key_bits,
                keys::MIN_KEY_BITS,
                keys::MAX_KEY_BITS
            ),
        );
    }
    let log = LoggerConfig::resolve(&raw.log, root, &mut problems, "log.");

    let mut gateway_ids = HashSet::new();
    let mut listen_addrs = HashSet::from([listen]);
    let mut gateways = Vec::new();
    let mut import = Vec::new();
    for (index, raw_gateway) in raw.gateways.iter().enumerate() {
        let key = format!("gateways[{index}]");
        problems.name(&format!("{key}.id"), "gateway id", &raw_gateway.id);
        if !gateway_ids.insert(raw_gateway.id.clone()) {
            problems.push(
                format!("{key}.id"),
                format!("gateway `{}` is listed twice", raw_gateway.id),
            );
        }

        let mut public_keys = Vec::new();
        for (key_index, path) in raw_gateway.public_keys.iter().enumerate() {
            match PublicKey::load(&resolve_path(root, path), raw.min_key_bits) {
                Ok(public_key) => public_keys.push(public_key),
                Err(error) => {
                    problems.push(format!("{key}.public_keys[{key_index}]"), error.to_string())
                }
            }
        }
        if raw_gateway.public_keys.is_empty() {
            problems.push(
                format!("{key}.public_keys"),
                "no public key is registered, so no Agent could log in; add the path of the Agent's public.pem",
            );
        }

        let mut allow = Vec::new();
        for (net_index, net) in raw_gateway.allow.iter().enumerate() {
            match parse_cidr(net) {
                Some(net) => allow.push(net),
                None => problems.push(
                    format!("{key}.allow[{net_index}]"),
                    format!("invalid network `{net}`; write a CIDR such as `203.0.113.0/24`, `2001:db8::/32` or a single address"),
                ),
            }
        }
        if raw_gateway.allow.is_empty() {
            problems.push(
                format!("{key}.allow"),
                "the Agent IP allowlist is empty, so every Agent would be rejected; list the networks your Agents connect from",
            );
        }

        let mut services = Vec::new();
        let mut service_names = HashSet::new();
        for (service_index, service) in raw_gateway.services.iter().enumerate() {
            let service_key = format!("{key}.services[{service_index}]");
            problems.name(
                &format!("{service_key}.name"),
                "service name",
                &service.name,
            );
            if !service_names.insert(service.name.clone()) {
                problems.push(
                    format!("{service_key}.name"),
                    format!("service `{}` is listed twice in this gateway", service.name),
                );
            }
            let service_listen =
                problems.socket_addr(&format!("{service_key}.listen"), &service.listen);
            let listen_valid = !problems.has(&format!("{service_key}.listen"));
            if listen_valid && !listen_addrs.insert(service_listen) {
                problems.push(
                    format!("{service_key}.listen"),
                    format!("address {service_listen} is already used by the Agent port or another service; pick a free port"),
                );
            }
            services.push(Service {
                name: service.name.clone(),
                listen: service_listen,
            });
        }

        gateways.push(Gateway {
            id: raw_gateway.id.clone(),
            public_keys,
            allow,
            services,
        });
        import.push(GatewayRecord {
            id: raw_gateway.id.clone(),
            name: String::new(),
            public_keys: raw_gateway
                .public_keys
                .iter()
                .filter_map(|path| std::fs::read_to_string(resolve_path(root, path)).ok())
                .collect(),
            allow: raw_gateway.allow.clone(),
            services: raw_gateway
                .services
                .iter()
                .map(|service| ServiceRecord {
                    name: service.name.clone(),
                    target: service.target.clone().unwrap_or_default(),
                    listen: service.listen.clone(),
                })
                .collect(),
        });
    }

    let admin = raw.admin.as_ref().map(|admin| {
        let listen = problems.socket_addr("admin.listen", &admin.listen);
        let token = match (&admin.token, &admin.token_file) {
            (Some(token), None) => token.trim().to_owned(),
            (None, Some(file)) => std::fs::read_to_string(resolve_path(root, file))
                .map(|token| token.trim().to_owned())
                .unwrap_or_else(|error| {
                    problems.push("admin.token_file", format!("cannot read {file}: {error}"));
                    String::new()
                }),
            _ => {
                problems.push(
                    "admin",
                    "set exactly one of `token` and `token_file`; `ipaas-server init` writes a random token",
                );
                String::new()
            }
        };
        if token.len() < MIN_TOKEN_LEN && !problems.has("admin") {
            problems.push(
                "admin.token",
                format!("the token must be at least {MIN_TOKEN_LEN} characters; generate one with `openssl rand -hex 24`"),
            );
        }
        AdminConfig {
            listen,
            token: Secret::new(token),
        }
    });

    let server_address = raw
        .package
        .server_address
        .clone()
        .unwrap_or_else(|| listen.to_string());
    let server_name = match (
        &raw.package.server_name,
        super::Endpoint::parse(&server_address),
    ) {
        (Some(name), _) => name.clone(),
        (None, Some(endpoint)) => endpoint.host,
        (None, None) => {
            problems.push(
                "package.server_address",
                format!("invalid address `{server_address}`; write the `host:port` Agents dial, such as `gw.example.com:7000`"),
            );
            String::new()
        }
    };
    let package = PackageSettings {
        server_address,
        server_name,
        artifacts_dir: resolve_path(root, &raw.package.artifacts_dir),
    };

    let config = ServerConfig {
        listen,
        tls: TlsFiles {
            ca: resolve_path(root, &raw.tls.ca),
            cert: resolve_path(root, &raw.tls.cert),
            key: resolve_path(root, &raw.tls.key),
        },
        runtime,
        heartbeat,
        handshake_timeout,
        max_unauthenticated: raw.max_unauthenticated,
        handshake_rate_per_source: raw.handshake_rate_per_source,
        min_key_bits: raw.min_key_bits,
        drain_timeout,
        log,
        data_dir: resolve_path(root, &raw.data_dir),
        pki_dir: resolve_path(root, &raw.pki_dir),
        admin,
        package,
        gateways,
        import,
    };
    problems.finish(config)
}

/// Parses a CIDR, or a single address as a host network (/32 or /128).
pub fn parse_cidr(value: &str) -> Option<IpNet> {
    let value = value.trim();
    if let Ok(net) = value.parse::<IpNet>() {
        return Some(net.trunc());
    }
    value.parse::<std::net::IpAddr>().ok().map(IpNet::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        // The example refers to key and TLS files the demo creates; only key loading may fail.
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/server.yaml");
        match ServerConfig::load(&file) {
            Ok(config) => assert!(!config.gateways.is_empty()),
            Err(error) => {
                for problem in &error.problems {
                    assert!(problem.key.contains("public_keys"), "{error}");
                }
            }
        }
    }

    #[test]
    fn cidrs_and_single_addresses() {
        assert_eq!(parse_cidr("10.1.2.3/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_cidr("10.0.0.0/33"), None);
        assert_eq!(parse_cidr("ten"), None);
    }

    #[test]
    fn allowlist_matches_mapped_ipv4() {
        let gateway = Gateway {
            id: "gw".into(),
            public_keys: Vec::new(),
            allow: vec![
                parse_cidr("127.0.0.0/8").unwrap(),
                parse_cidr("fd00::/8").unwrap(),
            ],
            services: Vec::new(),
        };
        assert!(gateway.allows("127.0.0.1".parse().unwrap()));
        assert!(gateway.allows("::ffff:127.0.0.1".parse().unwrap()));
        assert!(gateway.allows("fd00::1".parse().unwrap()));
        assert!(!gateway.allows("10.0.0.1".parse().unwrap()));
        assert!(!gateway.allows("::1".parse().unwrap()));
    }

    #[test]
    fn every_bad_value_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("server.yaml");
        std::fs::write(
            &file,
            "listen: 'localhost:7000'\ntls: {ca: ca.pem, cert: s.pem, key: s.key}\nmin_key_bits: 512\n\
             gateways:\n  - id: gw\n    public_keys: [missing.pem]\n    allow: ['10.0.0.0/40']\n\
             \x20   services:\n      - {name: a, listen: '127.0.0.1:9000'}\n      - {name: a, listen: '127.0.0.1:9000'}\n",
        )
        .unwrap();
        let error = ServerConfig::load(&file).unwrap_err();
        let keys: Vec<_> = error.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "listen",
            "min_key_bits",
            "gateways[0].public_keys[0]",
            "gateways[0].allow[0]",
            "gateways[0].services[1].name",
            "gateways[0].services[1].listen",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }
}
