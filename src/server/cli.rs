//! The admin CLI of `ipaas-server` (`gateway`, `key`, `service`, `package`): a client of
//! the admin API that prints results for people, or JSON with `--json`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use super::admin::{GatewayView, KeyUpload};
use crate::config::ServerConfig;
use crate::registry::{GatewayRecord, ServiceRecord};

/// Address of the admin API and the token to send.
pub struct Connection {
    base: String,
    token: String,
    json: bool,
    agent: ureq::Agent,
}

impl Connection {
    /// Uses `admin_url` and `token` when given, else the `admin` section of `config`.
    pub fn new(
        config: &Path,
        admin_url: Option<String>,
        token: Option<String>,
        json: bool,
    ) -> anyhow::Result<Self> {
        let (base, token) = match (admin_url, token) {
            (Some(url), Some(token)) => (url, token),
            (url, token) => {
                let server = ServerConfig::load(config).with_context(|| {
                    format!("cannot read the admin address and token from {}; pass --admin-url and --token instead", config.display())
                })?;
                let Some(admin) = server.admin else {
                    bail!("{} has no `admin` section, so the admin API is off; add `admin: {{listen: \"127.0.0.1:7001\", token_file: admin.token}}`", config.display());
                };
                (
                    url.unwrap_or_else(|| format!("http://{}", admin.listen)),
                    token.unwrap_or_else(|| admin.token.expose().to_owned()),
                )
            }
        };
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            token,
            json,
            agent,
        })
    }

    fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Vec<u8>)> {
        let url = format!("{}/v1/{path}", self.base);
        let authorization = format!("Bearer {}", self.token);
        let response = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .header("Authorization", &authorization)
                .call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &authorization)
                .call(),
            (method, body) => {
                let body = body.unwrap_or(Value::Null).to_string();
                let builder = match method {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.patch(&url),
                };
                builder
                    .header("Authorization", &authorization)
                    .header("Content-Type", "application/json")
                    .send(body)
            }
        };
        let mut response = response.with_context(|| format!("cannot reach the admin API at {url}; is the Server running with an `admin` section?"))?;
        let status = response.status().as_u16();
        let bytes = response
            .body_mut()
            .with_config()
            .limit(1 << 30)
            .read_to_vec()
            .with_context(|| format!("cannot read the answer of {url}"))?;
        Ok((status, bytes))
    }

    /// Sends a request and returns the JSON response, or fails with the API's error message.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, bytes) = self.request(method, path, body)?;
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!({ "error": String::from_utf8_lossy(&bytes) }))
        };
        if status >= 400 {
            let message = value["error"].as_str().unwrap_or("no details").to_owned();
            match value["field"].as_str() {
                Some(field) => bail!(
                    "the Server rejected the request (HTTP {status}, field `{field}`): {message}"
                ),
                None => bail!("the Server rejected the request (HTTP {status}): {message}"),
            }
        }
        Ok(value)
    }

    fn print(&self, value: &Value, human: impl FnOnce(&Value) -> String) {
        if self.json {
            println!(
                "{}",
                serde_json::to_string_pretty(value).unwrap_or_default()
            );
        } else {
            println!("{}", human(value));
        }
    }
}

/// Parses `NAME=TARGET@LISTEN`, for example `web=10.0.0.5:80@0.0.0.0:30001`.
pub fn parse_service(spec: &str) -> anyhow::Result<ServiceRecord> {
    let parsed = spec.split_once('=').and_then(|(name, rest)| {
        rest.rsplit_once('@')
            .map(|(target, listen)| (name, target, listen))
    });
    let Some((name, target, listen)) = parsed else {
        bail!("invalid service `{spec}`; write NAME=TARGET@LISTEN, for example web=10.0.0.5:80@0.0.0.0:30001");
    };
    Ok(ServiceRecord {
        name: name.to_owned(),
        target: target.to_owned(),
        listen: listen.to_owned(),
    })
}

fn read_key(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read public key file {}", path.display()))
}

fn describe(value: &Value) -> String {
    let Ok(gateway) = serde_json::from_value::<GatewayView>(value.clone()) else {
        return value.to_string();
    };
    let mut text = format!("gateway {}", gateway.id);
    if !gateway.name.is_empty() {
        text += &format!(" ({})", gateway.name);
    }
    text += &format!("\n  Agent sessions: {}", gateway.sessions);
    text += "\n  public keys:";
    for key in &gateway.public_keys {
        text += &format!("\n    {} ({} bits)", key.fingerprint, key.bits);
    }
    text += &format!("\n  Agent IP allowlist: {}", gateway.allow.join(", "));
    text += "\n  services:";
    for service in &gateway.services {
        text += &format!(
            "\n    {:<16} entry {:<22} target {}",
            service.name, service.listen, service.target
        );
    }
    text
}

/// `gateway create`.
pub fn create(
    connection: &Connection,
    id: &str,
    name: Option<String>,
    keys: &[PathBuf],
    allow: Vec<String>,
    services: &[String],
) -> anyhow::Result<()> {
    let record = GatewayRecord {
        id: id.to_owned(),
        name: name.unwrap_or_default(),
        public_keys: keys
            .iter()
            .map(|path| read_key(path))
            .collect::<anyhow::Result<_>>()?,
        allow,
        services: services
            .iter()
            .map(|spec| parse_service(spec))
            .collect::<anyhow::Result<_>>()?,
    };
    let value = connection.call("POST", "gateways", Some(json!(record)))?;
    connection.print(&value, |value| format!("created {}", describe(value)));
    Ok(())
}

/// `gateway list`.
pub fn list(connection: &Connection) -> anyhow::Result<()> {
    let value = connection.call("GET", "gateways", None)?;
    connection.print(&value, |value| {
        let gateways = value.as_array().cloned().unwrap_or_default();
        if gateways.is_empty() {
            return "no gateways; create one with `ipaas-server gateway create`".into();
        }
        let mut text = format!(
            "{:<24} {:>8} {:>5} {:>8}  NAME",
            "ID", "SESSIONS", "KEYS", "SERVICES"
        );
        for gateway in gateways {
            text += &format!(
                "\n{:<24} {:>8} {:>5} {:>8}  {}",
                gateway["id"].as_str().unwrap_or(""),
                gateway["sessions"].as_u64().unwrap_or(0),
                gateway["public_keys"].as_array().map_or(0, Vec::len),
                gateway["services"].as_array().map_or(0, Vec::len),
                gateway["name"].as_str().unwrap_or("")
            );
        }
        text
    });
    Ok(())
}

/// `gateway show`.
pub fn show(connection: &Connection, id: &str) -> anyhow::Result<()> {
    let value = connection.call("GET", &format!("gateways/{id}"), None)?;
    connection.print(&value, describe);
    Ok(())
}

/// `gateway update`: changes only what is given.
pub fn update(
    connection: &Connection,
    id: &str,
    name: Option<String>,
    allow: Option<Vec<String>>,
) -> anyhow::Result<()> {
    let value = connection.call(
        "PATCH",
        &format!("gateways/{id}"),
        Some(json!({ "name": name, "allow": allow })),
    )?;
    connection.print(&value, |value| format!("updated {}", describe(value)));
    Ok(())
}

/// `gateway delete`.
pub fn delete(connection: &Connection, id: &str) -> anyhow::Result<()> {
    let value = connection.call("DELETE", &format!("gateways/{id}"), None)?;
    connection.print(&value, |_| {
        format!("deleted gateway {id}; its Agents are disconnected")
    });
    Ok(())
}

/// `key add`.
pub fn add_key(connection: &Connection, id: &str, path: &Path) -> anyhow::Result<()> {
    let upload = KeyUpload {
        public_key: read_key(path)?,
    };
    let value = connection.call("POST", &format!("gateways/{id}/keys"), Some(json!(upload)))?;
    connection.print(&value, |value| {
        format!(
            "added key {} ({} bits) to gateway {id}",
            value["fingerprint"].as_str().unwrap_or(""),
            value["bits"]
        )
    });
    Ok(())
}

/// `key remove`.
pub fn remove_key(connection: &Connection, id: &str, fingerprint: &str) -> anyhow::Result<()> {
    let value = connection.call("DELETE", &format!("gateways/{id}/keys/{fingerprint}"), None)?;
    connection.print(&value, |_| {
        format!("removed key {fingerprint} from gateway {id}; Agents using it are disconnected")
    });
    Ok(())
}

/// `service add`.
pub fn add_service(
    connection: &Connection,
    id: &str,
    service: ServiceRecord,
) -> anyhow::Result<()> {
    let name = service.name.clone();
    let value = connection.call(
        "POST",
        &format!("gateways/{id}/services"),
        Some(json!(service)),
    )?;
    connection.print(&value, |value| {
        format!("added service {name}; {}", describe(value))
    });
    Ok(())
}

/// `service remove`.
pub fn remove_service(connection: &Connection, id: &str, name: &str) -> anyhow::Result<()> {
    let value = connection.call("DELETE", &format!("gateways/{id}/services/{name}"), None)?;
    connection.print(&value, |_| {
        format!("removed service {name} from gateway {id}; its entry port is closed")
    });
    Ok(())
}

/// `package`: downloads the Agent package to `out`.
pub fn package(
    connection: &Connection,
    id: &str,
    format: &str,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (status, bytes) = connection.request(
        "GET",
        &format!("gateways/{id}/package?format={format}"),
        None,
    )?;
    if status >= 400 {
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        bail!(
            "the Server rejected the request (HTTP {status}): {}",
            value["error"].as_str().unwrap_or("no details")
        );
    }
    let out =
        out.unwrap_or_else(|| PathBuf::from(format!("ipaas-private-cloud-agent-{id}.{format}")));
    std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
    let value = json!({ "file": out.display().to_string(), "bytes": bytes.len() });
    connection.print(&value, |_| {
        format!(
            "wrote the Agent package of gateway {id} to {} ({} bytes)",
            out.display(),
            bytes.len()
        )
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_specs() {
        let service = parse_service("db=[fd00::5]:5432@0.0.0.0:30002").unwrap();
        assert_eq!(service.name, "db");
        assert_eq!(service.target, "[fd00::5]:5432");
        assert_eq!(service.listen, "0.0.0.0:30002");
        assert!(parse_service("db:5432").is_err());
        assert!(parse_service("db=10.0.0.5:5432").is_err());
    }
}
