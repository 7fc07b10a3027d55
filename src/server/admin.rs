//! The admin API: HTTP with JSON on a dedicated thread, bound to loopback by default and
//! protected by a bearer token from the Server's config.
//!
//! Every change is checked in full, written to the registry in one transaction, and then
//! applied to the running shards with [`ServerShared::reload`].
//!
//! Routes (all under `/v1`, all need `Authorization: Bearer <token>`):
//! `GET|POST /gateways`, `GET|PATCH|DELETE /gateways/{id}`, `POST /gateways/{id}/keys`,
//! `DELETE /gateways/{id}/keys/{fingerprint}`, `PUT /gateways/{id}/allow`,
//! `POST /gateways/{id}/services`, `PATCH|DELETE /gateways/{id}/services/{name}`,
//! `GET /gateways/{id}/package?format=tar.gz|zip`. `GET /metrics` (same token) serves
//! Prometheus metrics. See docs/admin-api.md.

use std::collections::HashSet;
use std::io::{Cursor, Read};
use std::net::SocketAddr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tiny_http::{Header, Method, Request, Response};

use super::metrics::Metrics;
use super::package::{self, PackageFormat, PackageService, PackageSpec};
use super::ServerShared;
use crate::config::server::AdminConfig;
use crate::keys::PublicKey;
use crate::registry::{self, FieldError, GatewayRecord, RegistryError, ServiceRecord};

/// Largest request body accepted.
const MAX_BODY: u64 = 1024 * 1024;

/// An HTTP error with a JSON body `{"error": ..., "field": ...}`.
#[derive(Debug)]
pub struct ApiError {
    status: u16,
    message: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: u16, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: None,
        }
    }

    fn field(status: u16, field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            field: Some(field.into()),
        }
    }
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> Self {
        match error {
            RegistryError::NotFound(_) => Self::new(404, error.to_string()),
            RegistryError::Conflict(_) => Self::field(409, "id", error.to_string()),
            RegistryError::Invalid(errors) => invalid(errors),
            other => {
                tracing::error!(error = %other, "registry failure");
                Self::new(500, other.to_string())
            }
        }
    }
}

fn invalid(errors: Vec<FieldError>) -> ApiError {
    let field = errors.first().map(|error| error.field.clone());
    let message = errors
        .iter()
        .map(|error| format!("{}: {}", error.field, error.message))
        .collect::<Vec<_>>()
        .join("; ");
    ApiError {
        status: 400,
        message,
        field,
    }
}

/// A public key as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
pub struct KeyView {
    pub fingerprint: String,
    pub bits: usize,
}

/// A gateway as the API shows it: the record with keys reduced to their fingerprints.
#[derive(Debug, Serialize, Deserialize)]
pub struct GatewayView {
    pub id: String,
    pub name: String,
    pub public_keys: Vec<KeyView>,
    pub allow: Vec<String>,
    pub services: Vec<ServiceRecord>,
    /// Authenticated Agent sessions on this Server.
    pub sessions: usize,
}

/// Fields a PATCH of a gateway may change; absent fields stay.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayUpdate {
    pub name: Option<String>,
    pub allow: Option<Vec<String>>,
    pub services: Option<Vec<ServiceRecord>>,
    pub public_keys: Option<Vec<String>>,
}

/// Body of `POST /gateways/{id}/keys`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyUpload {
    /// PEM text of the public key (PKCS#1 or SPKI).
    pub public_key: String,
}

/// Body of `PUT /gateways/{id}/allow`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowList {
    pub allow: Vec<String>,
}

/// Fields a PATCH of a service may change.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceUpdate {
    pub target: Option<String>,
    pub listen: Option<String>,
}

/// Starts the admin API on its own thread.
pub fn spawn(shared: Arc<ServerShared>, config: AdminConfig) -> anyhow::Result<()> {
    let server = tiny_http::Server::http(config.listen).map_err(|error| {
        anyhow::anyhow!(
            "cannot listen for the admin API on {}: {error}",
            config.listen
        )
    })?;
    tracing::info!(listen = %config.listen, "admin API listening");
    std::thread::Builder::new()
        .name("ipaas-admin".into())
        .spawn(move || {
            let metrics = Metrics::new(&shared.stats);
            for request in server.incoming_requests() {
                handle(&shared, &metrics, &config, request);
            }
        })?;
    Ok(())
}

fn handle(shared: &ServerShared, metrics: &Metrics, config: &AdminConfig, mut request: Request) {
    let method = request.method().clone();
    let url = request.url().to_owned();
    let peer = request.remote_addr().copied();

    let response = if !authorized(&request, config) {
        tracing::warn!(peer.addr = ?peer, %method, path = %path_of(&url), "admin request without a valid bearer token");
        Err(ApiError::new(
            401,
            "missing or invalid bearer token; send `Authorization: Bearer <admin token>`",
        ))
    } else {
        let mut body = String::new();
        match request
            .as_reader()
            .take(MAX_BODY + 1)
            .read_to_string(&mut body)
        {
            Ok(_) if body.len() as u64 > MAX_BODY => {
                Err(ApiError::new(413, "request body over 1 MiB"))
            }
            Ok(_) if method == Method::Get && path_of(&url) == "/metrics" => {
                Ok(Reply::Metrics(metrics.render(shared)))
            }
            Ok(_) => route(shared, &method, &url, &body),
            Err(error) => Err(ApiError::new(
                400,
                format!("cannot read the request body: {error}"),
            )),
        }
    };

    let result = match response {
        Ok(Reply::Json(status, value)) => request.respond(json_response(status, &value)),
        Ok(Reply::Empty) => request.respond(Response::empty(204)),
        Ok(Reply::Metrics(text)) => {
            request.respond(Response::from_string(text).with_header(header(
                "Content-Type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )))
        }
        Ok(Reply::File {
            name,
            content_type,
            bytes,
        }) => {
            let response = Response::from_data(bytes)
                .with_header(header("Content-Type", content_type))
                .with_header(header(
                    "Content-Disposition",
                    &format!("attachment; filename=\"{name}\""),
                ));
            request.respond(response)
        }
        Err(error) => {
            if error.status >= 500 {
                tracing::error!(%method, path = %path_of(&url), error = %error.message, "admin request failed");
            } else {
                tracing::info!(%method, path = %path_of(&url), status = error.status, error = %error.message, "admin request rejected");
            }
            let body = json!({ "error": error.message, "field": error.field });
            request.respond(json_response(error.status, &body))
        }
    };
    if let Err(error) = result {
        tracing::debug!(%error, "cannot send the admin response");
    }
}

fn path_of(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn header(name: &str, value: &str) -> Header {
    Header::from_bytes(name.as_bytes(), value.as_bytes())
        .expect("header names and values here are ASCII")
}

fn json_response(status: u16, value: &serde_json::Value) -> Response<Cursor<Vec<u8>>> {
    let body = serde_json::to_vec_pretty(value).unwrap_or_default();
    Response::from_data(body)
        .with_status_code(status)
        .with_header(header("Content-Type", "application/json"))
}

fn authorized(request: &Request, config: &AdminConfig) -> bool {
    request
        .headers()
        .iter()
        .find(|header| header.field.equiv("Authorization"))
        .and_then(|header| header.value.as_str().strip_prefix("Bearer "))
        .is_some_and(|token| config.token.matches(token.trim().as_bytes()))
}

enum Reply {
    Json(u16, serde_json::Value),
    Empty,
    /// Metrics in the OpenMetrics text format.
    Metrics(String),
    File {
        name: String,
        content_type: &'static str,
        bytes: Vec<u8>,
    },
}

fn parse<T: for<'de> Deserialize<'de>>(body: &str) -> Result<T, ApiError> {
    serde_json::from_str(body)
        .map_err(|error| ApiError::new(400, format!("invalid JSON body: {error}")))
}

fn route(shared: &ServerShared, method: &Method, url: &str, body: &str) -> Result<Reply, ApiError> {
    let (path, query) = url.split_once('?').unwrap_or((url, ""));
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match (method, segments.as_slice()) {
        (Method::Get, ["v1", "gateways"]) => {
            let views = shared
                .registry
                .list()?
                .iter()
                .map(|record| view(shared, record))
                .collect::<Vec<_>>();
            Ok(Reply::Json(200, json!(views)))
        }
        (Method::Post, ["v1", "gateways"]) => {
            let record: GatewayRecord = parse(body)?;
            check(shared, &record)?;
            shared.registry.insert(&record)?;
            applied(shared, "gateway created", &record.id)?;
            Ok(Reply::Json(201, json!(view(shared, &record))))
        }
        (Method::Get, ["v1", "gateways", id]) => {
            let record = shared
                .registry
                .get(id)?
                .ok_or_else(|| ApiError::new(404, format!("gateway `{id}` not found")))?;
            Ok(Reply::Json(200, json!(view(shared, &record))))
        }
        (Method::Patch, ["v1", "gateways", id]) => {
            let update: GatewayUpdate = parse(body)?;
            let record = modify(shared, id, |record| {
                if let Some(name) = update.name.clone() {
                    record.name = name;
                }
                if let Some(allow) = update.allow.clone() {
                    record.allow = allow;
                }
                if let Some(services) = update.services.clone() {
                    record.services = services;
                }
                if let Some(public_keys) = update.public_keys.clone() {
                    record.public_keys = public_keys;
                }
                Ok(())
            })?;
            applied(shared, "gateway updated", id)?;
            Ok(Reply::Json(200, json!(view(shared, &record))))
        }
        (Method::Delete, ["v1", "gateways", id]) => {
            shared.registry.delete(id)?;
            applied(shared, "gateway deleted", id)?;
            Ok(Reply::Empty)
        }
        (Method::Post, ["v1", "gateways", id, "keys"]) => {
            let upload: KeyUpload = parse(body)?;
            let key = PublicKey::parse(
                &upload.public_key,
                std::path::Path::new("public_key"),
                shared.config.min_key_bits,
            )
            .map_err(|error| ApiError::field(400, "public_key", error.to_string()))?;
            let record = modify(shared, id, |record| {
                record.public_keys.push(upload.public_key.clone());
                Ok(())
            })?;
            applied(shared, "public key added", id)?;
            let _ = record;
            Ok(Reply::Json(
                201,
                json!({ "fingerprint": key.fingerprint().to_string(), "bits": key.bits() }),
            ))
        }
        (Method::Delete, ["v1", "gateways", id, "keys", fingerprint]) => {
            let min_bits = shared.config.min_key_bits;
            modify(shared, id, |record| {
                let before = record.public_keys.len();
                record.public_keys.retain(|pem| {
                    PublicKey::parse(pem, std::path::Path::new("stored"), min_bits)
                        .map_or(true, |key| key.fingerprint().to_string() != *fingerprint)
                });
                if record.public_keys.len() == before {
                    return Err(RegistryError::Invalid(vec![FieldError {
                        field: "fingerprint".into(),
                        message: format!("no key with fingerprint `{fingerprint}` is registered for gateway `{id}`"),
                    }]));
                }
                Ok(())
            })?;
            applied(shared, "public key removed", id)?;
            Ok(Reply::Empty)
        }
        (Method::Put, ["v1", "gateways", id, "allow"]) => {
            let list: AllowList = parse(body)?;
            let record = modify(shared, id, |record| {
                record.allow = list.allow.clone();
                Ok(())
            })?;
            applied(shared, "allowlist set", id)?;
            Ok(Reply::Json(200, json!(view(shared, &record))))
        }
        (Method::Post, ["v1", "gateways", id, "services"]) => {
            let service: ServiceRecord = parse(body)?;
            let record = modify(shared, id, |record| {
                record.services.push(service.clone());
                Ok(())
            })?;
            applied(shared, "service added", id)?;
            Ok(Reply::Json(201, json!(view(shared, &record))))
        }
        (Method::Patch, ["v1", "gateways", id, "services", name]) => {
            let update: ServiceUpdate = parse(body)?;
            let record = modify(shared, id, |record| {
                let service = find_service(record, id, name)?;
                if let Some(target) = update.target.clone() {
                    service.target = target;
                }
                if let Some(listen) = update.listen.clone() {
                    service.listen = listen;
                }
                Ok(())
            })?;
            applied(shared, "service changed", id)?;
            Ok(Reply::Json(200, json!(view(shared, &record))))
        }
        (Method::Delete, ["v1", "gateways", id, "services", name]) => {
            modify(shared, id, |record| {
                find_service(record, id, name)?;
                record.services.retain(|service| service.name != *name);
                Ok(())
            })?;
            applied(shared, "service removed", id)?;
            Ok(Reply::Empty)
        }
        (Method::Get, ["v1", "gateways", id, "package"]) => package_reply(shared, id, query),
        (_, ["v1", ..]) => Err(ApiError::new(
            404,
            format!("no route for {method} {path}; see docs/admin-api.md"),
        )),
        _ => Err(ApiError::new(
            404,
            format!("no route for {method} {path}; the API lives under /v1"),
        )),
    }
}

fn find_service<'a>(
    record: &'a mut GatewayRecord,
    id: &str,
    name: &str,
) -> Result<&'a mut ServiceRecord, RegistryError> {
    record
        .services
        .iter_mut()
        .find(|service| service.name == name)
        .ok_or_else(|| {
            RegistryError::Invalid(vec![FieldError {
                field: "name".into(),
                message: format!("gateway `{id}` has no service `{name}`"),
            }])
        })
}

/// Applies `change` to gateway `id` in one transaction, checking the result first.
fn modify(
    shared: &ServerShared,
    id: &str,
    mut change: impl FnMut(&mut GatewayRecord) -> Result<(), RegistryError>,
) -> Result<GatewayRecord, ApiError> {
    let mut check_error = None;
    let result = shared.registry.modify(id, &mut |record| {
        change(record)?;
        if let Err(error) = check(shared, record) {
            check_error = Some(error);
            return Err(RegistryError::Invalid(Vec::new()));
        }
        Ok(())
    });
    match (result, check_error) {
        (_, Some(error)) => Err(error),
        (Ok(record), None) => Ok(record),
        (Err(error), None) => Err(error.into()),
    }
}

fn applied(shared: &ServerShared, what: &str, id: &str) -> Result<(), ApiError> {
    shared.reload()?;
    tracing::info!(gateway.id = %id, "{what}");
    Ok(())
}

/// Checks a record in full: its fields, and that its entry addresses are free.
fn check(shared: &ServerShared, record: &GatewayRecord) -> Result<(), ApiError> {
    let gateway = registry::resolve(record, shared.config.min_key_bits)?;
    if gateway.public_keys.is_empty() {
        return Err(ApiError::field(
            400,
            "public_keys",
            "register at least one public key (the Agent's public.pem)",
        ));
    }
    if gateway.allow.is_empty() {
        return Err(ApiError::field(400, "allow", "the Agent IP allowlist is empty, so every Agent would be rejected; list the networks the Agents connect from"));
    }

    // Addresses this Server already serves for this gateway stay valid; any other must be
    // unused by other gateways, the Agent port, the admin API and other programs.
    let snapshot = shared.snapshot();
    let own: HashSet<SocketAddr> = snapshot
        .gateways
        .get(&record.id)
        .map(|state| {
            state
                .config
                .services
                .iter()
                .map(|service| service.listen)
                .collect()
        })
        .unwrap_or_default();
    let others: HashSet<SocketAddr> = snapshot
        .gateways
        .values()
        .filter(|state| state.config.id != record.id)
        .flat_map(|state| state.config.services.iter().map(|service| service.listen))
        .collect();
    let admin = shared.config.admin.as_ref().map(|admin| admin.listen);
    for (index, service) in gateway.services.iter().enumerate() {
        let field = format!("services[{index}].listen");
        if others.contains(&service.listen)
            || service.listen == shared.config.listen
            || Some(service.listen) == admin
        {
            return Err(ApiError::field(
                409,
                field,
                format!(
                    "address {} is already used by this Server; pick another port",
                    service.listen
                ),
            ));
        }
        if !own.contains(&service.listen) {
            if let Err(error) = crate::backend::check_port_free(service.listen) {
                return Err(ApiError::field(
                    409,
                    field,
                    format!(
                        "cannot listen on {}: {error}; pick a free port",
                        service.listen
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn view(shared: &ServerShared, record: &GatewayRecord) -> GatewayView {
    let public_keys = record
        .public_keys
        .iter()
        .filter_map(|pem| PublicKey::parse(pem, std::path::Path::new("stored"), 0).ok())
        .map(|key| KeyView {
            fingerprint: key.fingerprint().to_string(),
            bits: key.bits(),
        })
        .collect();
    let sessions = shared
        .snapshot()
        .gateways
        .get(&record.id)
        .map_or(0, |state| {
            state
                .live
                .per_shard
                .iter()
                .map(|count| count.load(std::sync::atomic::Ordering::Relaxed))
                .sum()
        });
    GatewayView {
        id: record.id.clone(),
        name: record.name.clone(),
        public_keys,
        allow: record.allow.clone(),
        services: record.services.clone(),
        sessions,
    }
}

fn package_reply(shared: &ServerShared, id: &str, query: &str) -> Result<Reply, ApiError> {
    let record = shared
        .registry
        .get(id)?
        .ok_or_else(|| ApiError::new(404, format!("gateway `{id}` not found")))?;
    let format_name = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("format="))
        .unwrap_or("tar.gz");
    let format = PackageFormat::from_name(format_name)
        .map_err(|error| ApiError::field(400, "format", error.to_string()))?;

    let services: Vec<PackageService> = record
        .services
        .iter()
        .filter(|service| !service.target.is_empty())
        .map(|service| PackageService {
            name: service.name.clone(),
            target: service.target.clone(),
        })
        .collect();
    let settings = &shared.config.package;
    let spec = PackageSpec {
        gateway_id: &record.id,
        server_address: &settings.server_address,
        server_name: &settings.server_name,
        services: &services,
        pki_dir: &shared.config.pki_dir,
        artifacts_dir: Some(&settings.artifacts_dir),
    };
    let mut bytes = Cursor::new(Vec::new());
    let report = package::build(&spec, format, &mut bytes)
        .map_err(|error| ApiError::new(500, error.to_string()))?;
    tracing::info!(gateway.id = %id, format = format_name, missing = ?report.missing, "Agent package built");
    Ok(Reply::File {
        name: format!("ipaas-private-cloud-agent-{id}.{}", format.extension()),
        content_type: format.content_type(),
        bytes: bytes.into_inner(),
    })
}
