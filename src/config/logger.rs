//! Logging settings: the Agent's `configs/logger_config.yaml`, and the `log` section of the
//! Server's config. Both hold the level, the log file and the file's backup policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{read_yaml, resolve_path, ConfigError, Problems};

/// `max_size` when the key is absent. [`DEFAULT_MAX_SIZE_BYTES`] is the same size in bytes.
const DEFAULT_MAX_SIZE: &str = "100MiB";
const DEFAULT_MAX_SIZE_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_MAX_BACKUPS: usize = 10;

/// Longest accepted `max_age`. file-rotate 0.8 computes `Local::now() - max_age`, which
/// panics when the result falls outside chrono's date range.
const MAX_AGE_LIMIT: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// Raw logging settings as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogger {
    /// One of error, warn, info, debug, trace; or a tracing filter such as `info,ipaas_gateway=debug`.
    #[serde(default = "default_level")]
    pub level: String,
    /// Log file; empty or absent writes to standard error only.
    #[serde(default)]
    pub file: Option<String>,
    /// Size past which the log file is rotated, such as `100MiB`.
    #[serde(default = "default_max_size")]
    pub max_size: String,
    /// Number of rotated files to keep. Signed, so that a negative value gets a message
    /// with the fix instead of a type error.
    #[serde(default = "default_max_backups")]
    pub max_backups: i64,
    /// Age past which a rotated file is deleted, such as `30d`. Empty or absent keeps
    /// backups of any age.
    #[serde(default)]
    pub max_age: Option<String>,
    /// Whether rotated files are gzip-compressed.
    #[serde(default = "default_compress")]
    pub compress: bool,
}

impl Default for RawLogger {
    fn default() -> Self {
        Self {
            level: default_level(),
            file: None,
            max_size: default_max_size(),
            max_backups: default_max_backups(),
            max_age: None,
            compress: default_compress(),
        }
    }
}

fn default_level() -> String {
    "info".into()
}

fn default_max_size() -> String {
    DEFAULT_MAX_SIZE.into()
}

fn default_max_backups() -> i64 {
    DEFAULT_MAX_BACKUPS as i64
}

fn default_compress() -> bool {
    true
}

/// Resolved logging settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggerConfig {
    /// A tracing filter directive.
    pub level: String,
    /// Absolute log file path, if logging to a file.
    pub file: Option<PathBuf>,
    /// Rotation and retention of `file`.
    pub backups: BackupPolicy,
}

/// When the log file is rotated, and which rotated files (backups) are kept.
///
/// The log file and its backups take at most `max_backups + 1` times `max_size` on disk, plus
/// one log line per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupPolicy {
    /// Size in bytes past which the log file is rotated. The write that crosses it completes
    /// first, so every file ends with a whole line.
    pub max_size: u64,
    /// Number of backups kept, at least 1. A rotation beyond it deletes the oldest backup.
    pub max_backups: usize,
    /// Age past which a backup is deleted, counted from its rotation.
    pub max_age: Option<Duration>,
    /// Whether backups are gzip-compressed, with a `.gz` suffix.
    pub compress: bool,
}

impl Default for BackupPolicy {
    fn default() -> Self {
        Self {
            max_size: DEFAULT_MAX_SIZE_BYTES,
            max_backups: DEFAULT_MAX_BACKUPS,
            max_age: None,
            compress: default_compress(),
        }
    }
}

impl Default for LoggerConfig {
    /// Level `info` to standard error only, as when no logger config file exists.
    fn default() -> Self {
        Self {
            level: default_level(),
            file: None,
            backups: BackupPolicy::default(),
        }
    }
}

impl LoggerConfig {
    /// Loads a logger config file, resolving `file` against `root`.
    pub fn load(file: &Path, root: &Path) -> Result<Self, ConfigError> {
        let raw: RawLogger = read_yaml(file)?;
        let mut problems = Problems::new(file);
        let config = Self::resolve(&raw, root, &mut problems, "");
        problems.finish(config)
    }

    /// Resolves `raw`, reporting problems under keys that start with `prefix`.
    pub(crate) fn resolve(
        raw: &RawLogger,
        root: &Path,
        problems: &mut Problems,
        prefix: &str,
    ) -> Self {
        let level = raw.level.trim();
        let plain = ["error", "warn", "info", "debug", "trace", "off"].contains(&level);
        let directives =
            level.contains('=') && tracing_subscriber::EnvFilter::try_new(level).is_ok();
        if !plain && !directives {
            problems.push(
                format!("{prefix}level"),
                format!(
                    "invalid log level `{}`; use error, warn, info, debug or trace",
                    raw.level
                ),
            );
        }

        let file = raw
            .file
            .as_deref()
            .filter(|file| !file.trim().is_empty())
            .map(|file| resolve_path(root, file));

        Self {
            level: raw.level.clone(),
            file,
            backups: resolve_backups(raw, problems, prefix),
        }
    }
}

/// Resolves the four backup keys of `raw`, reporting problems under keys that start with
/// `prefix`.
fn resolve_backups(raw: &RawLogger, problems: &mut Problems, prefix: &str) -> BackupPolicy {
    let max_size = problems.size(&format!("{prefix}max_size"), &raw.max_size);

    let max_backups = match usize::try_from(raw.max_backups) {
        Ok(count) if count > 0 => count,
        _ => {
            problems.push(
                format!("{prefix}max_backups"),
                format!(
                    "invalid backup count `{}`; write how many rotated log files to keep, 1 or more, such as `10`",
                    raw.max_backups
                ),
            );
            DEFAULT_MAX_BACKUPS
        }
    };

    let max_age_key = format!("{prefix}max_age");
    let max_age = raw
        .max_age
        .as_deref()
        .filter(|age| !age.trim().is_empty())
        .map(|age| problems.duration(&max_age_key, age));
    if let (Some(age), Some(text)) = (max_age, &raw.max_age) {
        if age > MAX_AGE_LIMIT {
            problems.push(
                max_age_key,
                format!("age `{text}` is longer than 100 years; write an age such as `30d`, or leave max_age out to keep backups of any age"),
            );
        }
    }

    BackupPolicy {
        max_size,
        max_backups,
        max_age,
        compress: raw.compress,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes `yaml` to a logger config in a new folder and loads it.
    fn load(yaml: &str) -> Result<LoggerConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("logger_config.yaml");
        std::fs::write(&file, yaml).unwrap();
        LoggerConfig::load(&file, dir.path())
    }

    /// Loads `yaml`, expects exactly one problem and returns its key and message.
    fn single_problem(yaml: &str) -> (String, String) {
        let error = load(yaml).unwrap_err();
        assert_eq!(error.problems.len(), 1, "{error}");
        let problem = error.problems[0].clone();
        (problem.key, problem.message)
    }

    #[test]
    fn shipped_example_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = LoggerConfig::load(&root.join("configs/logger_config.yaml"), root).unwrap();
        assert_eq!(config.file, Some(root.join("log/agent.log")));
        assert_eq!(config.backups.max_size, 100 * 1024 * 1024);
        assert_eq!(config.backups.max_backups, 10);
        assert_eq!(
            config.backups.max_age,
            Some(Duration::from_secs(30 * 24 * 60 * 60))
        );
        assert!(config.backups.compress);
    }

    #[test]
    fn bad_level_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("logger_config.yaml");
        std::fs::write(&file, "level: loud\n").unwrap();
        let error = LoggerConfig::load(&file, dir.path()).unwrap_err();
        assert_eq!(error.problems[0].key, "level");
        assert!(error.to_string().contains("loud"));
    }

    #[test]
    fn missing_backup_keys_get_defaults() {
        let config = load("level: debug\nfile: log/agent.log\n").unwrap();
        assert_eq!(config.backups, BackupPolicy::default());
        assert_eq!(config.backups.max_size, 100 * 1024 * 1024);
        assert_eq!(config.backups.max_backups, 10);
        assert_eq!(config.backups.max_age, None);
        assert!(config.backups.compress);
    }

    #[test]
    fn raw_defaults_match_resolved_defaults() {
        let mut problems = Problems::new(Path::new("test.yaml"));
        let config =
            LoggerConfig::resolve(&RawLogger::default(), Path::new("/"), &mut problems, "");
        assert_eq!(problems.finish(config).unwrap(), LoggerConfig::default());
    }

    #[test]
    fn backup_keys_parse() {
        let config = load(
            "file: log/agent.log\nmax_size: \"4KiB\"\nmax_backups: 3\nmax_age: \"12h\"\ncompress: false\n",
        )
        .unwrap();
        assert_eq!(
            config.backups,
            BackupPolicy {
                max_size: 4096,
                max_backups: 3,
                max_age: Some(Duration::from_secs(12 * 60 * 60)),
                compress: false,
            }
        );
    }

    #[test]
    fn empty_max_age_means_no_limit() {
        let config = load("max_age: \"\"\n").unwrap();
        assert_eq!(config.backups.max_age, None);
    }

    #[test]
    fn negative_max_backups_is_reported() {
        let (key, message) = single_problem("max_backups: -1\n");
        assert_eq!(key, "max_backups");
        assert!(message.contains("`-1`"), "{message}");
        assert!(message.contains("1 or more"), "{message}");
    }

    #[test]
    fn zero_max_backups_is_reported() {
        let (key, message) = single_problem("max_backups: 0\n");
        assert_eq!(key, "max_backups");
        assert!(message.contains("`0`"), "{message}");
    }

    #[test]
    fn bad_max_size_is_reported() {
        for value in ["lots", "100", "1.5MiB", "-4KiB", "0MiB"] {
            let (key, message) = single_problem(&format!("max_size: \"{value}\"\n"));
            assert_eq!(key, "max_size", "{value}");
            assert!(message.contains(&format!("`{value}`")), "{message}");
        }
        let (_, message) = single_problem("max_size: \"lots\"\n");
        assert!(message.contains("100MiB"), "{message}");
    }

    #[test]
    fn bad_max_age_is_reported() {
        let (key, message) = single_problem("max_age: \"a month\"\n");
        assert_eq!(key, "max_age");
        assert!(message.contains("`a month`"), "{message}");

        let (key, message) = single_problem("max_age: \"0s\"\n");
        assert_eq!(key, "max_age");
        assert!(message.contains("greater than zero"), "{message}");

        let (key, message) = single_problem("max_age: \"200y\"\n");
        assert_eq!(key, "max_age");
        assert!(message.contains("100 years"), "{message}");
    }

    #[test]
    fn every_bad_backup_key_is_listed() {
        let error = load("max_size: lots\nmax_backups: -1\nmax_age: soon\n").unwrap_err();
        let keys: Vec<_> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["max_size", "max_backups", "max_age"]);
    }

    #[test]
    fn wrong_type_names_the_key() {
        let error = load("compress: maybe\n").unwrap_err();
        assert!(error.to_string().contains("compress"), "{error}");
    }

    #[test]
    fn server_section_keys_get_the_prefix() {
        let raw = RawLogger {
            max_size: "lots".into(),
            max_backups: -1,
            ..RawLogger::default()
        };
        let mut problems = Problems::new(Path::new("server.yaml"));
        LoggerConfig::resolve(&raw, Path::new("/"), &mut problems, "log.");
        let error = problems.finish(()).unwrap_err();
        let keys: Vec<_> = error.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(keys, ["log.max_size", "log.max_backups"]);
    }
}
