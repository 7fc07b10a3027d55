//! Logging settings: the Agent's `configs/logger_config.yaml`, and the `log` section of the
//! Server's config. Both hold the level, the log file and the file's backup policy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use super::{read_yaml, resolve_path, ConfigError, Problem, Problems};
use crate::telemetry::LogPathError;

/// `max_size` when the key is absent. [`DEFAULT_MAX_SIZE_BYTES`] is the same size in bytes.
const DEFAULT_MAX_SIZE: &str = "100MiB";
const DEFAULT_MAX_SIZE_BYTES: u64 = 100 * 1024 * 1024;
const DEFAULT_MAX_BACKUPS: usize = 10;

/// Largest accepted `max_backups`. Each rotation renames every backup to the next number
/// on the writer thread, so rotation time grows with the count.
const MAX_BACKUPS_LIMIT: usize = 1000;

/// The end of every error about the log file path.
const FILE_FIX: &str = "at a writable file, or leave it empty to log to standard error";

/// Raw logging settings as written in YAML.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogger {
    /// One of error, warn, info, debug, trace, off in any case; or a tracing filter such as
    /// `info,ipaas_gateway=debug`.
    #[serde(default = "default_level")]
    pub level: String,
    /// Log file; empty or absent writes to standard error only.
    #[serde(default)]
    pub file: Option<String>,
    /// Size past which the log file is rotated, such as `100MiB`.
    #[serde(default = "default_max_size")]
    pub max_size: String,
    /// Number of rotated files to keep, 1 to 1000. Signed, so that a negative value gets a
    /// message with the fix instead of a type error.
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
    /// The config file these settings were read from, named in errors about `file`. It is
    /// empty in [`LoggerConfig::default`], which has no `file`.
    pub config_file: PathBuf,
    /// Dotted key of `file` in `config_file`: `file`, or `log.file` in the Server's config.
    pub file_key: String,
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
    /// Number of backups kept, 1 to 1000. A rotation beyond it deletes the oldest backup.
    pub max_backups: usize,
    /// Age past which a backup is deleted, counted from its modification time: the time of
    /// its last line, or of its rotation once compressed.
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
            config_file: PathBuf::new(),
            file_key: "file".into(),
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
        // tracing parses level names in any case, so `INFO` works as well as `info`. A bare
        // word that is not a level would be taken as a target name, hence the list.
        let level = raw.level.trim();
        let plain = ["error", "warn", "info", "debug", "trace", "off"]
            .iter()
            .any(|name| name.eq_ignore_ascii_case(level));
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
            level: level.to_owned(),
            file,
            backups: resolve_backups(raw, problems, prefix),
            config_file: problems.file.clone(),
            file_key: format!("{prefix}file"),
        }
    }

    /// Checks that `file` can be written and rotated, as the logger does at start: creates
    /// its folder when missing and a probe file in it. Does nothing without a `file`.
    pub fn check_file(&self) -> Result<(), ConfigError> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        crate::telemetry::check_log_path(path)
            .map(drop)
            .map_err(|error| self.file_error(&error))
    }

    /// Turns a problem with the log file path into a config error on `file`.
    pub(crate) fn file_error(&self, error: &LogPathError) -> ConfigError {
        ConfigError {
            file: self.config_file.clone(),
            problems: vec![Problem {
                key: self.file_key.clone(),
                message: format!("{error}; point `{}` {FILE_FIX}", self.file_key),
            }],
        }
    }
}

/// Resolves the four backup keys of `raw`, reporting problems under keys that start with
/// `prefix`.
fn resolve_backups(raw: &RawLogger, problems: &mut Problems, prefix: &str) -> BackupPolicy {
    let max_size = problems.size(&format!("{prefix}max_size"), &raw.max_size);

    let max_backups = match usize::try_from(raw.max_backups) {
        Ok(count) if (1..=MAX_BACKUPS_LIMIT).contains(&count) => count,
        _ => {
            problems.push(
                format!("{prefix}max_backups"),
                format!(
                    "invalid backup count `{}`; write how many rotated log files to keep, from 1 to {MAX_BACKUPS_LIMIT}, such as `10`",
                    raw.max_backups
                ),
            );
            DEFAULT_MAX_BACKUPS
        }
    };

    let max_age = raw
        .max_age
        .as_deref()
        .filter(|age| !age.trim().is_empty())
        .and_then(|age| parse_max_age(problems, &format!("{prefix}max_age"), age));

    BackupPolicy {
        max_size,
        max_backups,
        max_age,
        compress: raw.compress,
    }
}

/// Parses a `max_age` value such as `30d`, reporting a problem under `key` when it is
/// invalid.
fn parse_max_age(problems: &mut Problems, key: &str, value: &str) -> Option<Duration> {
    const EXAMPLES: &str =
        "such as `30d`, `12h` or `1w`, or leave max_age empty to keep backups of any age";
    let message = match humantime::parse_duration(value.trim()) {
        Ok(age) if !age.is_zero() => return Some(age),
        Ok(_) => format!("age `{value}` must be greater than zero; write an age {EXAMPLES}"),
        Err(humantime::DurationError::NumberOverflow) => {
            format!("age `{value}` is too large; write an age {EXAMPLES}")
        }
        Err(_) => format!("invalid age `{value}`; write a whole number and a unit {EXAMPLES}"),
    };
    problems.push(key, message);
    None
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
        let expected = LoggerConfig {
            config_file: "test.yaml".into(),
            ..LoggerConfig::default()
        };
        assert_eq!(problems.finish(config).unwrap(), expected);
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
        assert!(message.contains("from 1 to 1000"), "{message}");
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
        assert!(message.contains("`30d`"), "{message}");
        assert!(message.contains("`12h`"), "{message}");
        assert!(!message.contains("expected"), "{message}");

        let (key, message) = single_problem("max_age: \"0s\"\n");
        assert_eq!(key, "max_age");
        assert!(message.contains("greater than zero"), "{message}");

        let (key, message) = single_problem("max_age: \"99999999999999999999999d\"\n");
        assert_eq!(key, "max_age");
        assert!(message.contains("too large"), "{message}");
    }

    #[test]
    fn long_max_age_is_accepted() {
        let config = load("max_age: \"200y\"\n").unwrap();
        assert!(config.backups.max_age.unwrap() > Duration::from_secs(199 * 365 * 24 * 3600));
    }

    #[test]
    fn max_backups_has_an_upper_bound() {
        assert_eq!(
            load("max_backups: 1000\n").unwrap().backups.max_backups,
            1000
        );
        let (key, message) = single_problem("max_backups: 1001\n");
        assert_eq!(key, "max_backups");
        assert!(message.contains("`1001`"), "{message}");
        assert!(message.contains("from 1 to 1000"), "{message}");
    }

    #[test]
    fn level_names_ignore_case() {
        for level in ["INFO", "Debug", "WARN", " trace "] {
            let config = load(&format!("level: \"{level}\"\n")).unwrap();
            assert_eq!(config.level, level.trim());
            // The filter that telemetry::init builds accepts the same text.
            assert!(tracing_subscriber::EnvFilter::try_new(&config.level).is_ok());
        }
        let filter = tracing_subscriber::EnvFilter::try_new("INFO").unwrap();
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::INFO)
        );
    }

    #[test]
    fn file_check_passes_for_a_new_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("logger_config.yaml");
        std::fs::write(&file, "file: log/agent.log\n").unwrap();
        let config = LoggerConfig::load(&file, dir.path()).unwrap();
        config.check_file().unwrap();
        assert!(dir.path().join("log").is_dir());
        assert!(!dir.path().join("log/agent.log").exists());
    }

    #[test]
    fn file_check_names_key_value_and_fix() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("blocker"), "").unwrap();
        std::fs::create_dir(dir.path().join("folder")).unwrap();
        let file = dir.path().join("logger_config.yaml");

        for (value, cause) in [
            ("folder", "is a folder"),
            ("blocker/agent.log", "cannot create its folder"),
        ] {
            std::fs::write(&file, format!("file: {value}\n")).unwrap();
            let config = LoggerConfig::load(&file, dir.path()).unwrap();
            let error = config.check_file().unwrap_err();
            assert_eq!(error.file, file);
            assert_eq!(error.problems.len(), 1);
            assert_eq!(error.problems[0].key, "file");
            let message = &error.problems[0].message;
            assert!(message.contains(value), "{message}");
            assert!(message.contains(cause), "{message}");
            assert!(
                message.contains(
                    "point `file` at a writable file, or leave it empty to log to standard error"
                ),
                "{message}"
            );
        }
    }

    #[test]
    fn server_file_error_names_the_log_key() {
        let dir = tempfile::tempdir().unwrap();
        let raw = RawLogger {
            file: Some(dir.path().display().to_string()),
            ..RawLogger::default()
        };
        let mut problems = Problems::new(Path::new("server.yaml"));
        let config = LoggerConfig::resolve(&raw, Path::new("/"), &mut problems, "log.");
        let error = config.check_file().unwrap_err();
        assert_eq!(error.file, Path::new("server.yaml"));
        assert_eq!(error.problems[0].key, "log.file");
        assert!(
            error.problems[0].message.contains("point `log.file` at"),
            "{error}"
        );
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
