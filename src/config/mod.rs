//! Configuration files: YAML parsed into resolved types (socket addresses, CIDRs, durations,
//! sizes, absolute paths, loaded keys) before anything starts.
//!
//! Unknown keys and YAML errors stop parsing at the first one, with its line and column;
//! every value problem after that is collected, so one run lists all of them with their keys.

pub mod agent;
pub mod logger;
pub mod server;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::backend::BackendChoice;

pub use agent::AgentConfig;
pub use logger::LoggerConfig;
pub use server::ServerConfig;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted path of the key, for example `gateways[0].allow[1]`; empty for file-level errors.
    pub key: String,
    /// Description of the problem and its fix.
    pub message: String,
}

/// A config file that could not be used, with every problem found in it.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError {
    /// The file the problems are in.
    pub file: PathBuf,
    /// The problems, in file order where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid config file {}:", self.file.display())?;
        for problem in &self.problems {
            if problem.key.is_empty() {
                write!(f, "\n  - {}", problem.message)?;
            } else {
                write!(f, "\n  - {}: {}", problem.key, problem.message)?;
            }
        }
        Ok(())
    }
}

/// Collects problems while a raw config is resolved.
pub(crate) struct Problems {
    file: PathBuf,
    list: Vec<Problem>,
}

impl Problems {
    pub(crate) fn new(file: &Path) -> Self {
        Self {
            file: file.to_owned(),
            list: Vec::new(),
        }
    }

    /// Reports whether a problem was recorded for `key`.
    pub(crate) fn has(&self, key: &str) -> bool {
        self.list.iter().any(|problem| problem.key == key)
    }

    pub(crate) fn push(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            key: key.into(),
            message: message.into(),
        });
    }

    /// Returns `value` when no problem was recorded.
    pub(crate) fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.list.is_empty() {
            return Ok(value);
        }
        Err(ConfigError {
            file: self.file,
            problems: self.list,
        })
    }

    /// Parses a duration such as `10s`, `500ms` or `2m`.
    pub(crate) fn duration(&mut self, key: &str, value: &str) -> Duration {
        match humantime::parse_duration(value.trim()) {
            Ok(duration) if !duration.is_zero() => duration,
            Ok(_) => {
                self.push(key, format!("duration `{value}` must be greater than zero"));
                Duration::from_secs(1)
            }
            Err(error) => {
                self.push(
                    key,
                    format!("invalid duration `{value}` ({error}); write it like `10s`, `500ms` or `2m`"),
                );
                Duration::from_secs(1)
            }
        }
    }

    /// Parses a size such as `100MiB`, `512KiB` or `4096B` into bytes.
    ///
    /// KiB, MiB and GiB are powers of 1024, and KB, MB and GB are powers of 1000. Units are
    /// case-insensitive. A unit is required, so that `100` cannot be mistaken for 100 MiB.
    pub(crate) fn size(&mut self, key: &str, value: &str) -> u64 {
        let message = match parse_size(value) {
            Ok(bytes) if bytes > 0 => return bytes,
            Ok(_) => format!("size `{value}` must be greater than zero"),
            Err(SizeError::Invalid) => format!(
                "invalid size `{value}`; write a whole number and a unit such as `100MiB`, `512KiB` or `1GiB`"
            ),
            Err(SizeError::UnknownUnit(unit)) => format!(
                "invalid size `{value}`: unknown unit `{unit}`; use B, KiB, MiB or GiB (powers of 1024) or KB, MB or GB (powers of 1000), such as `100MiB`"
            ),
            Err(SizeError::TooLarge) => format!(
                "size `{value}` is too large: it exceeds 2^64 - 1 bytes; write a size such as `100MiB` or `1GiB`"
            ),
        };
        self.push(key, message);
        1
    }

    /// Parses a literal socket address such as `127.0.0.1:7000` or `[::1]:7000`.
    pub(crate) fn socket_addr(&mut self, key: &str, value: &str) -> SocketAddr {
        match value.trim().parse::<SocketAddr>() {
            Ok(addr) => addr,
            Err(_) => {
                self.push(
                    key,
                    format!("invalid listen address `{value}`; write an IP address and port such as `0.0.0.0:7000` or `[::]:7000`"),
                );
                SocketAddr::from(([0, 0, 0, 0], 0))
            }
        }
    }

    /// Checks a `host:port` endpoint whose host may be a DNS name resolved later.
    pub(crate) fn endpoint(&mut self, key: &str, value: &str) -> Endpoint {
        match Endpoint::parse(value) {
            Some(endpoint) => endpoint,
            None => {
                self.push(
                    key,
                    format!("invalid address `{value}`; write `host:port` such as `10.0.0.5:3306`, `db.internal:5432` or `[fd00::5]:443`"),
                );
                Endpoint {
                    host: String::new(),
                    port: 0,
                }
            }
        }
    }

    /// Checks a gateway, agent or service name.
    pub(crate) fn name(&mut self, key: &str, kind: &str, value: &str) {
        if let Err(error) = crate::protocol::handshake::validate_name(kind, value) {
            self.push(key, error.to_string());
        }
    }
}

/// A `host:port` pair; the host is resolved again on every connection attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// DNS name or IP address, without brackets.
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    /// Parses `host:port` or `[v6]:port`; returns `None` for a missing host or a bad port.
    pub fn parse(value: &str) -> Option<Self> {
        let value = value.trim();
        let (host, port) = value.rsplit_once(':')?;
        let host = match host.strip_prefix('[') {
            Some(inner) => inner.strip_suffix(']')?,
            None if host.contains(':') => return None,
            None => host,
        };
        let port = port.parse::<u16>().ok().filter(|port| *port != 0)?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return None;
        }
        Some(Self {
            host: host.to_owned(),
            port,
        })
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Settings of the thread-per-core runtime, shared by both configs.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuntime {
    /// Number of shards (one pinned thread each); 0 or absent means one per CPU core.
    #[serde(default)]
    pub shards: usize,
    /// `auto`, `io_uring` or `tokio`; absent means `auto`.
    #[serde(default)]
    pub backend: Option<String>,
}

/// Resolved runtime settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuntimeSettings {
    /// Configured shard count; 0 means one per core (see [`shard_count`]).
    pub shards: usize,
    pub backend: BackendChoice,
}

impl Problems {
    pub(crate) fn runtime(&mut self, raw: &RawRuntime) -> RuntimeSettings {
        let backend = match raw.backend.as_deref() {
            None => BackendChoice::Auto,
            Some(value) => BackendChoice::parse(value).unwrap_or_else(|| {
                self.push(
                    "runtime.backend",
                    format!("unknown backend `{value}`; use auto, io_uring or tokio"),
                );
                BackendChoice::Auto
            }),
        };
        RuntimeSettings {
            shards: raw.shards,
            backend,
        }
    }
}

/// Heartbeat settings, shared by both configs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHeartbeat {
    #[serde(default = "default_heartbeat_interval")]
    pub interval: String,
    #[serde(default = "default_heartbeat_timeout")]
    pub timeout: String,
}

impl Default for RawHeartbeat {
    fn default() -> Self {
        Self {
            interval: default_heartbeat_interval(),
            timeout: default_heartbeat_timeout(),
        }
    }
}

fn default_heartbeat_interval() -> String {
    "10s".into()
}

fn default_heartbeat_timeout() -> String {
    "30s".into()
}

/// Resolved heartbeat settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// Idle time after which a ping is sent.
    pub interval: Duration,
    /// Silence after which the peer is declared dead.
    pub timeout: Duration,
}

impl Problems {
    pub(crate) fn heartbeat(&mut self, raw: &RawHeartbeat) -> Heartbeat {
        let interval = self.duration("heartbeat.interval", &raw.interval);
        let timeout = self.duration("heartbeat.timeout", &raw.timeout);
        // Only compare values that parsed; a placeholder would make a second, false report.
        let parsed = !self.has("heartbeat.interval") && !self.has("heartbeat.timeout");
        if parsed && timeout <= interval {
            self.push(
                "heartbeat.timeout",
                format!(
                    "timeout `{}` must be longer than interval `{}` (three intervals is usual)",
                    raw.timeout, raw.interval
                ),
            );
        }
        Heartbeat { interval, timeout }
    }
}

/// Number of shards to run: `configured`, or one per available core when 0.
pub fn shard_count(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism()
        .map(|cores| cores.get())
        .unwrap_or(1)
}

/// Reason [`parse_size`] rejected a value.
#[derive(Debug, PartialEq, Eq)]
enum SizeError {
    /// No whole number, or a unit that is missing or not made of letters.
    Invalid,
    /// A unit made of letters that is not one of the accepted ones, such as `TiB`.
    UnknownUnit(String),
    /// The size in bytes does not fit in a `u64`.
    TooLarge,
}

/// Parses `<whole number>[ ]<unit>` into bytes.
fn parse_size(value: &str) -> Result<u64, SizeError> {
    let value = value.trim();
    let digits_end = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let unit = unit.trim_start();
    if number.is_empty() || unit.is_empty() || !unit.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(SizeError::Invalid);
    }

    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "b" => 1,
        "kb" => 1000,
        "mb" => 1000 * 1000,
        "gb" => 1000 * 1000 * 1000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        _ => return Err(SizeError::UnknownUnit(unit.to_owned())),
    };

    // `number` holds only ASCII digits, so parsing can fail only by overflow.
    let number: u64 = number.parse().map_err(|_| SizeError::TooLarge)?;
    number.checked_mul(multiplier).ok_or(SizeError::TooLarge)
}

/// Reads and parses a YAML file into `T`, turning every failure into a [`ConfigError`].
pub(crate) fn read_yaml<T: DeserializeOwned>(file: &Path) -> Result<T, ConfigError> {
    let single = |message: String| ConfigError {
        file: file.to_owned(),
        problems: vec![Problem {
            key: String::new(),
            message,
        }],
    };
    let text = std::fs::read_to_string(file)
        .map_err(|error| single(format!("cannot read the file: {error}")))?;
    serde_yaml_ng::from_str(&text).map_err(|error| {
        single(format!(
            "{error}; compare the file with the commented example shipped in configs/"
        ))
    })
}

/// Resolves `value` against `root` unless it is absolute.
pub(crate) fn resolve_path(root: &Path, value: &str) -> PathBuf {
    let path = Path::new(value);
    if path.is_absolute() {
        path.to_owned()
    } else {
        root.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            Endpoint::parse("db.internal:5432"),
            Some(Endpoint {
                host: "db.internal".into(),
                port: 5432
            })
        );
        assert_eq!(Endpoint::parse("[fd00::5]:443").unwrap().host, "fd00::5");
        assert_eq!(
            Endpoint::parse("[fd00::5]:443").unwrap().to_string(),
            "[fd00::5]:443"
        );
        for bad in [
            "",
            "host",
            ":80",
            "host:0",
            "host:70000",
            "fd00::5:443",
            "[fd00::5:443",
        ] {
            assert_eq!(Endpoint::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn size_units() {
        let cases = [
            ("4096B", 4096),
            ("512KiB", 512 * 1024),
            ("100MiB", 100 * 1024 * 1024),
            ("100 MiB", 100 * 1024 * 1024),
            ("100mib", 100 * 1024 * 1024),
            ("2GiB", 2 * 1024 * 1024 * 1024),
            ("10KB", 10_000),
            ("10MB", 10_000_000),
            ("1GB", 1_000_000_000),
            (" 7kib ", 7 * 1024),
            ("18446744073709551615B", u64::MAX),
        ];
        for (text, bytes) in cases {
            assert_eq!(parse_size(text), Ok(bytes), "{text}");
        }
    }

    #[test]
    fn size_rejects_bad_values() {
        for bad in ["", "lots", "MiB", "4096", "-1MiB", "1.5GiB", "10 MiB extra"] {
            assert_eq!(parse_size(bad), Err(SizeError::Invalid), "{bad}");
        }
        assert_eq!(
            parse_size("10 TiB"),
            Err(SizeError::UnknownUnit("TiB".into()))
        );
        assert_eq!(parse_size("99999999999GiB"), Err(SizeError::TooLarge));
        assert_eq!(
            parse_size("18446744073709551616B"),
            Err(SizeError::TooLarge)
        );
        assert_eq!(
            parse_size("99999999999999999999999999MiB"),
            Err(SizeError::TooLarge)
        );

        let mut problems = Problems::new(Path::new("test.yaml"));
        problems.size("a", "lots");
        problems.size("b", "0KiB");
        assert_eq!(problems.size("c", "1KiB"), 1024);
        let error = problems.finish(()).unwrap_err();
        let keys: Vec<_> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["a", "b"]);
        assert!(error.problems[0].message.contains("`lots`"));
        assert!(error.problems[0].message.contains("100MiB"));
        assert!(error.problems[1].message.contains("greater than zero"));
    }

    #[test]
    fn size_messages_name_the_cause() {
        let mut problems = Problems::new(Path::new("test.yaml"));
        problems.size("unit", "10TiB");
        problems.size("large", "99999999999GiB");
        let error = problems.finish(()).unwrap_err();

        let unit = &error.problems[0].message;
        assert!(unit.contains("`10TiB`"), "{unit}");
        assert!(unit.contains("unknown unit `TiB`"), "{unit}");
        for accepted in ["B,", "KiB", "MiB", "GiB", "KB", "MB", "GB"] {
            assert!(unit.contains(accepted), "{accepted} missing from: {unit}");
        }

        let large = &error.problems[1].message;
        assert!(large.contains("`99999999999GiB`"), "{large}");
        assert!(large.contains("too large"), "{large}");
    }

    #[test]
    fn durations_and_addresses_are_collected() {
        let mut problems = Problems::new(Path::new("test.yaml"));
        problems.duration("a", "ten seconds");
        problems.duration("b", "0s");
        problems.socket_addr("c", "localhost:80");
        assert_eq!(problems.duration("d", "250ms"), Duration::from_millis(250));
        let error = problems.finish(()).unwrap_err();
        let keys: Vec<_> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        assert!(error.to_string().contains("test.yaml"));
    }
}
