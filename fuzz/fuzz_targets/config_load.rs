//! Fuzzes the three config loaders (`AgentConfig::load`, `ServerConfig::load`,
//! `LoggerConfig::load`) on one YAML text.
//!
//! Input: the file's bytes. The loaders read files, so each input is written to
//! `configs/config.yaml` in a new temporary package folder, and every loader reads that
//! file. Relative paths in the input resolve against that folder.
//!
//! NOTE: the Server loader reads every `public_keys` path and `admin.token_file` that the
//! input names, absolute ones included, with no size limit. An input that names a device
//! such as `/dev/zero` would run the fuzzer out of memory. That is how the loader treats a
//! config written by the operator, not a parser bug.

#![no_main]

use ipaas_gateway::config::{AgentConfig, ConfigError, LoggerConfig, ServerConfig};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().expect("create a temporary folder");
    let configs = root.path().join("configs");
    std::fs::create_dir(&configs).expect("create configs/");
    let file = configs.join("config.yaml");
    std::fs::write(&file, data).expect("write the config file");

    if let Err(error) = AgentConfig::load(&file) {
        check_error(&error);
    }
    if let Err(error) = ServerConfig::load(&file) {
        check_error(&error);
    }
    if let Err(error) = LoggerConfig::load(&file, root.path()) {
        check_error(&error);
    }
});

/// Checks that an error lists at least one problem, because the operator must learn what
/// to fix, and that it formats.
fn check_error(error: &ConfigError) {
    assert!(!error.problems.is_empty());
    assert!(error.to_string().starts_with("invalid config file "));
}
