//! The Agent's `configs/config.yaml`.
//!
//! Relative paths resolve against the package root, the folder that holds `configs/`, so an
//! unpacked package can be moved as a whole.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{
    read_yaml, resolve_path, ConfigError, Endpoint, Heartbeat, Problems, RawHeartbeat, RawRuntime,
    RuntimeSettings,
};
use crate::tls::TlsFiles;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    server: RawServer,
    gateway_id: String,
    #[serde(default)]
    agent_name: Option<String>,
    #[serde(default = "default_private_key")]
    private_key: String,
    #[serde(default)]
    tls: RawTls,
    #[serde(default)]
    services: Vec<RawService>,
    #[serde(default)]
    runtime: RawRuntime,
    #[serde(default)]
    heartbeat: RawHeartbeat,
    #[serde(default)]
    reconnect: RawReconnect,
    #[serde(default = "default_connect_timeout")]
    connect_timeout: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    address: String,
    #[serde(default)]
    tls_name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    #[serde(default = "default_ca")]
    ca: String,
    #[serde(default = "default_cert")]
    cert: String,
    #[serde(default = "default_key")]
    key: String,
}

impl Default for RawTls {
    fn default() -> Self {
        Self {
            ca: default_ca(),
            cert: default_cert(),
            key: default_key(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    name: String,
    target: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawReconnect {
    #[serde(default = "default_reconnect_initial")]
    initial: String,
    #[serde(default = "default_reconnect_max")]
    max: String,
}

impl Default for RawReconnect {
    fn default() -> Self {
        Self {
            initial: default_reconnect_initial(),
            max: default_reconnect_max(),
        }
    }
}

fn default_private_key() -> String {
    "configs/secret/private.pem".into()
}
fn default_ca() -> String {
    "configs/client/ca.pem".into()
}
fn default_cert() -> String {
    "configs/client/client.pem".into()
}
fn default_key() -> String {
    "configs/client/client.key".into()
}
fn default_reconnect_initial() -> String {
    "1s".into()
}
fn default_reconnect_max() -> String {
    "60s".into()
}
fn default_connect_timeout() -> String {
    "5s".into()
}

/// Resolved Agent configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Package root that relative paths were resolved against.
    pub root: PathBuf,
    /// Server endpoint; the name is resolved again on every connection attempt.
    pub server: Endpoint,
    /// Name the Server's certificate must carry.
    pub server_name: String,
    pub gateway_id: String,
    pub agent_name: String,
    pub private_key: PathBuf,
    pub tls: TlsFiles,
    /// Service name to private target; the Agent dials nothing else.
    pub services: HashMap<String, Endpoint>,
    pub runtime: RuntimeSettings,
    pub heartbeat: Heartbeat,
    pub reconnect_initial: Duration,
    pub reconnect_max: Duration,
    /// Time limit for dialing a private target and for reaching the Server.
    pub connect_timeout: Duration,
}

impl AgentConfig {
    /// Loads `file` and resolves relative paths against the package root.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let raw: Raw = read_yaml(file)?;
        resolve(raw, file, &package_root(file))
    }
}

/// Returns the package root of a config file: the parent of `configs/` when the file sits
/// in a folder of that name, else the file's own folder.
pub fn package_root(file: &Path) -> PathBuf {
    let absolute = std::path::absolute(file).unwrap_or_else(|_| file.to_owned());
    let dir = absolute.parent().unwrap_or(Path::new(".")).to_owned();
    match (dir.file_name(), dir.parent()) {
        (Some(name), Some(parent)) if name == "configs" => parent.to_owned(),
        _ => dir,
    }
}

fn resolve(raw: Raw, file: &Path, root: &Path) -> Result<AgentConfig, ConfigError> {
    let mut problems = Problems::new(file);

    let server = problems.endpoint("server.address", &raw.server.address);
    let server_name = raw
        .server
        .tls_name
        .clone()
        .unwrap_or_else(|| server.host.clone());
    if !server_name.is_empty()
        && rustls::pki_types::ServerName::try_from(server_name.as_str()).is_err()
    {
        problems.push(
            "server.tls_name",
            format!("invalid name `{server_name}`; write the DNS name or IP address in the Server's certificate, such as `gw.example.com`"),
        );
    }
    problems.name("gateway_id", "gateway id", &raw.gateway_id);

    let agent_name = raw.agent_name.clone().unwrap_or_else(default_agent_name);
    problems.name("agent_name", "agent name", &agent_name);

    let mut services = HashMap::new();
    for (index, service) in raw.services.iter().enumerate() {
        let key = format!("services[{index}]");
        problems.name(&format!("{key}.name"), "service name", &service.name);
        let target = problems.endpoint(&format!("{key}.target"), &service.target);
        if services.insert(service.name.clone(), target).is_some() {
            problems.push(
                format!("{key}.name"),
                format!(
                    "service `{}` is listed twice; keep one entry per name",
                    service.name
                ),
            );
        }
    }
    if raw.services.is_empty() {
        problems.push(
            "services",
            "no service is listed, so the Agent could relay nothing; add entries like `- name: web` with `target: 127.0.0.1:8080`",
        );
    }

    let runtime = problems.runtime(&raw.runtime);
    let heartbeat = problems.heartbeat(&raw.heartbeat);
    let reconnect_initial = problems.duration("reconnect.initial", &raw.reconnect.initial);
    let reconnect_max = problems.duration("reconnect.max", &raw.reconnect.max);
    let reconnect_parsed = !problems.has("reconnect.initial") && !problems.has("reconnect.max");
    if reconnect_parsed && reconnect_max < reconnect_initial {
        problems.push(
            "reconnect.max",
            "must not be shorter than reconnect.initial",
        );
    }
    let connect_timeout = problems.duration("connect_timeout", &raw.connect_timeout);

    let config = AgentConfig {
        root: root.to_owned(),
        server,
        server_name,
        gateway_id: raw.gateway_id,
        agent_name,
        private_key: resolve_path(root, &raw.private_key),
        tls: TlsFiles {
            ca: resolve_path(root, &raw.tls.ca),
            cert: resolve_path(root, &raw.tls.cert),
            key: resolve_path(root, &raw.tls.key),
        },
        services,
        runtime,
        heartbeat,
        reconnect_initial,
        reconnect_max,
        connect_timeout,
    };
    problems.finish(config)
}

/// Host name, cut to the characters an agent name allows; `agent` when unknown.
fn default_agent_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("COMPUTERNAME").ok())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let name: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(128)
        .collect();
    if name.is_empty() {
        "agent".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_text(text: &str) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let configs = dir.path().join("configs");
        std::fs::create_dir(&configs).unwrap();
        let file = configs.join("config.yaml");
        std::fs::write(&file, text).unwrap();
        AgentConfig::load(&file)
    }

    #[test]
    fn shipped_example_parses() {
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/config.yaml");
        let config = AgentConfig::load(&file).unwrap();
        assert_eq!(config.root, Path::new(env!("CARGO_MANIFEST_DIR")));
        assert!(config.private_key.ends_with("configs/secret/private.pem"));
        assert!(!config.services.is_empty());
    }

    #[test]
    fn paths_resolve_against_package_root() {
        let config = load_text(
            "server: {address: 'gw.example:7000'}\ngateway_id: gw-1\nservices: [{name: db, target: '10.0.0.5:3306'}]\n",
        )
        .unwrap();
        assert_eq!(config.tls.ca, config.root.join("configs/client/ca.pem"));
        assert_eq!(config.server_name, "gw.example");
        assert_eq!(config.services["db"].port, 3306);
    }

    #[test]
    fn every_bad_value_is_reported() {
        let error = load_text(
            "server: {address: 'no-port'}\ngateway_id: 'bad id'\nservices:\n  - {name: db, target: 'x'}\n  - {name: db, target: 'h:1'}\nheartbeat: {interval: 30s, timeout: 10s}\nconnect_timeout: soon\n",
        )
        .unwrap_err();
        let keys: Vec<_> = error.problems.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "server.address",
            "gateway_id",
            "services[0].target",
            "services[1].name",
            "heartbeat.timeout",
            "connect_timeout",
        ] {
            assert!(keys.contains(&key), "{key} missing from {keys:?}");
        }
    }

    #[test]
    fn unknown_key_names_the_key() {
        let error = load_text(
            "server: {address: 'h:1'}\ngateway_id: gw\nservices: [{name: a, target: 'h:2'}]\nretry: 5\n",
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("unknown field `retry`"),
            "{error}"
        );
    }
}
