//! The gateway registry: the Server's durable record of every gateway (id, name, public
//! keys, Agent IP allowlist, services), behind the [`Registry`] trait so that a shared
//! store such as PostgreSQL can serve several Servers later. [`sqlite::SqliteRegistry`]
//! is the embedded default, one file in the Server's data folder.
//!
//! Records hold what users enter (PEM text, CIDR strings, addresses); [`resolve`] turns a
//! record into the checked [`Gateway`] the data plane uses, and every write is checked
//! with it first, so a stored record always resolves.

pub mod sqlite;

use std::collections::HashSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::server::{parse_cidr, Gateway, Service};
use crate::config::Endpoint;
use crate::keys::PublicKey;
use crate::protocol::handshake::validate_name;

/// A gateway as stored and as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayRecord {
    pub id: String,
    /// Free text for people; the id is what Agents send.
    #[serde(default)]
    pub name: String,
    /// PEM public keys (PKCS#1 or SPKI); any of them may sign, which allows rotation.
    #[serde(default)]
    pub public_keys: Vec<String>,
    /// Networks the gateway's Agents may connect from (CIDRs or single addresses).
    #[serde(default)]
    pub allow: Vec<String>,
    #[serde(default)]
    pub services: Vec<ServiceRecord>,
}

/// A private service of a gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceRecord {
    pub name: String,
    /// Private `host:port` the Agent dials; written into the Agent package's config. Empty
    /// for services imported from a config file that did not name one.
    #[serde(default)]
    pub target: String,
    /// Entry address on the Server.
    pub listen: String,
}

/// A problem with one field of a record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// Dotted path such as `services[1].listen`.
    pub field: String,
    pub message: String,
}

/// Errors of registry operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// No gateway has this id.
    #[error("gateway `{0}` not found")]
    NotFound(String),
    /// A gateway with this id exists already.
    #[error("gateway `{0}` already exists")]
    Conflict(String),
    /// The record has invalid fields.
    #[error("invalid gateway: {}", .0.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<FieldError>),
    /// The store failed.
    #[error("registry storage failed: {0}")]
    Storage(String),
}

/// Durable storage of gateway records. Each method is one transaction.
pub trait Registry: Send + Sync {
    /// Returns all gateways, ordered by id.
    fn list(&self) -> Result<Vec<GatewayRecord>, RegistryError>;
    /// One gateway.
    fn get(&self, id: &str) -> Result<Option<GatewayRecord>, RegistryError>;
    /// Stores a new gateway; `Conflict` if the id exists.
    fn insert(&self, record: &GatewayRecord) -> Result<(), RegistryError>;
    /// Reads, changes and writes one gateway atomically; `change` may reject the change.
    fn modify(
        &self,
        id: &str,
        change: &mut dyn FnMut(&mut GatewayRecord) -> Result<(), RegistryError>,
    ) -> Result<GatewayRecord, RegistryError>;
    /// Deletes a gateway; `NotFound` if it does not exist.
    fn delete(&self, id: &str) -> Result<(), RegistryError>;
}

/// Checks every field of `record` and builds the gateway the data plane uses.
pub fn resolve(record: &GatewayRecord, min_key_bits: usize) -> Result<Gateway, RegistryError> {
    let mut errors = Vec::new();
    let mut push = |field: String, message: String| errors.push(FieldError { field, message });

    if let Err(error) = validate_name("gateway id", &record.id) {
        push("id".into(), error.to_string());
    }

    let mut public_keys = Vec::new();
    let mut fingerprints = HashSet::new();
    for (index, pem) in record.public_keys.iter().enumerate() {
        let source = Path::new("public_keys").join(index.to_string());
        match PublicKey::parse(pem, &source, min_key_bits) {
            Ok(key) if !fingerprints.insert(key.fingerprint().clone()) => push(
                format!("public_keys[{index}]"),
                format!("key {} is listed twice", key.fingerprint()),
            ),
            Ok(key) => public_keys.push(key),
            Err(error) => push(format!("public_keys[{index}]"), error.to_string()),
        }
    }

    let mut allow = Vec::new();
    for (index, net) in record.allow.iter().enumerate() {
        match parse_cidr(net) {
            Some(net) => allow.push(net),
            None => push(
                format!("allow[{index}]"),
                format!("invalid network `{net}`; write a CIDR such as `203.0.113.0/24`, `2001:db8::/32` or a single address"),
            ),
        }
    }

    let mut services = Vec::new();
    let mut names = HashSet::new();
    let mut listens = HashSet::new();
    for (index, service) in record.services.iter().enumerate() {
        let key = format!("services[{index}]");
        if let Err(error) = validate_name("service name", &service.name) {
            push(format!("{key}.name"), error.to_string());
        }
        if !names.insert(service.name.as_str()) {
            push(
                format!("{key}.name"),
                format!("service `{}` is listed twice", service.name),
            );
        }
        if !service.target.is_empty() && Endpoint::parse(&service.target).is_none() {
            push(
                format!("{key}.target"),
                format!(
                    "invalid address `{}`; write `host:port` such as `10.0.0.5:3306`",
                    service.target
                ),
            );
        }
        match service.listen.trim().parse() {
            Ok(listen) => {
                if !listens.insert(listen) {
                    push(format!("{key}.listen"), format!("address {listen} is used twice"));
                }
                services.push(Service {
                    name: service.name.clone(),
                    listen,
                });
            }
            Err(_) => push(
                format!("{key}.listen"),
                format!("invalid listen address `{}`; write an IP address and port such as `0.0.0.0:30001`", service.listen),
            ),
        }
    }

    if !errors.is_empty() {
        return Err(RegistryError::Invalid(errors));
    }
    Ok(Gateway {
        id: record.id.clone(),
        public_keys,
        allow,
        services,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> GatewayRecord {
        GatewayRecord {
            id: "gw".into(),
            name: "Test".into(),
            public_keys: Vec::new(),
            allow: vec!["10.0.0.0/8".into()],
            services: vec![ServiceRecord {
                name: "db".into(),
                target: "10.0.0.5:3306".into(),
                listen: "127.0.0.1:30001".into(),
            }],
        }
    }

    #[test]
    fn valid_record_resolves() {
        let gateway = resolve(&record(), 1024).unwrap();
        assert_eq!(gateway.services[0].listen.port(), 30001);
        assert!(gateway.allows("10.1.2.3".parse().unwrap()));
    }

    #[test]
    fn every_bad_field_is_named() {
        let mut bad = record();
        bad.id = "bad id".into();
        bad.public_keys = vec!["not a key".into()];
        bad.allow = vec!["10.0.0.0/99".into()];
        bad.services.push(ServiceRecord {
            name: "db".into(),
            target: "nowhere".into(),
            listen: "localhost:1".into(),
        });
        let RegistryError::Invalid(errors) = resolve(&bad, 1024).unwrap_err() else {
            panic!("expected Invalid");
        };
        let fields: Vec<_> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "id",
                "public_keys[0]",
                "allow[0]",
                "services[1].name",
                "services[1].target",
                "services[1].listen"
            ]
        );
    }
}
