//! Logging settings: the Agent's `configs/logger_config.yaml`, and the `log` section of the
//! Server's config.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{read_yaml, resolve_path, ConfigError, Problems};

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
}

impl Default for RawLogger {
    fn default() -> Self {
        Self {
            level: default_level(),
            file: None,
        }
    }
}

fn default_level() -> String {
    "info".into()
}

/// Resolved logging settings.
#[derive(Debug, Clone)]
pub struct LoggerConfig {
    /// A tracing filter directive.
    pub level: String,
    /// Absolute log file path, if logging to a file.
    pub file: Option<PathBuf>,
}

impl LoggerConfig {
    /// Loads a logger config file, resolving `file` against `root`.
    pub fn load(file: &Path, root: &Path) -> Result<Self, ConfigError> {
        let raw: RawLogger = read_yaml(file)?;
        let mut problems = Problems::new(file);
        let config = Self::resolve(&raw, root, &mut problems, "");
        problems.finish(config)
    }

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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_example_parses() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let config = LoggerConfig::load(&root.join("configs/logger_config.yaml"), root).unwrap();
        assert_eq!(config.file, Some(root.join("log/agent.log")));
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
}
