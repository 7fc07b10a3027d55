//! End-to-end tests of the log backup policy in `logger_config.yaml`. The real
//! `ipaas-agent` dials a port on 127.0.0.1 where nothing listens and logs every reconnect
//! attempt at debug level into a file with a 4 KiB `max_size`. The tests read the log
//! folder while the Agent runs and after it stops.

mod common;

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use common::*;

const MAX_SIZE: u64 = 4096;
/// Room for the event that crosses `max_size`, which still goes into the file. The Agent's
/// reconnect events in these tests are about 200 bytes long.
const MAX_EVENT: u64 = 1024;
const LOG_NAME: &str = "agent.log";
/// Pause between two readings of the log folder.
const SAMPLE_INTERVAL: Duration = Duration::from_millis(20);
/// Time limit for the Agent to exit after SIGTERM.
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// Lays out an Agent package in `dir` whose Server address is a closed port on 127.0.0.1,
/// with `logger_yaml` as its logger config. Returns the Agent config file.
fn agent_package(dir: &Path, logger_yaml: &str) -> PathBuf {
    let root = dir.join("agent");
    run(Command::new(SERVER_BIN)
        .args(["pki", "init", "--dir"])
        .arg(dir.join("pki")));
    run(Command::new(SERVER_BIN)
        .args(["pki", "issue-agent", "--gateway", "gw", "--dir"])
        .arg(dir.join("pki"))
        .arg("--out")
        .arg(root.join("configs/client")));
    openssl_keys(&root.join("configs/secret"), 2048);

    // free_port closes its listener, so connections to the port are refused at once and
    // the Agent retries every 5 to 20 ms.
    let config = root.join("configs/config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{address: \"127.0.0.1:{}\", tls_name: localhost}}\ngateway_id: gw\nagent_name: logging\n\
             runtime: {{shards: 2, backend: tokio}}\nreconnect: {{initial: 10ms, max: 20ms}}\nconnect_timeout: 1s\n\
             services:\n  - {{name: web, target: \"127.0.0.1:9\"}}\n",
            free_port()
        ),
    )
    .unwrap();
    std::fs::write(root.join("configs/logger_config.yaml"), logger_yaml).unwrap();
    config
}

fn start_agent(config: &Path) -> Process {
    let console = std::fs::File::create(config.with_file_name("console.log")).unwrap();
    Process::spawn(
        "ipaas-agent",
        Command::new(AGENT_BIN)
            .arg("--config")
            .arg(config)
            .stdout(Stdio::null())
            .stderr(console),
    )
}

/// Stops the Agent with SIGTERM, so that it exits between two writes, and panics when it
/// does not exit in time.
fn stop_agent(agent: &mut Process, config: &Path) {
    assert!(
        agent.terminate(STOP_LIMIT),
        "the Agent did not exit within {STOP_LIMIT:?} of SIGTERM; console:\n{}",
        read_log(&config.with_file_name("console.log"))
    );
}

/// Panics with the Agent's console output when it has exited.
fn assert_running(agent: &mut Process, config: &Path) {
    assert!(
        agent.is_running(),
        "the Agent exited; console:\n{}",
        read_log(&config.with_file_name("console.log"))
    );
}

/// Names of the backups in `dir`, sorted; the file being written is left out.
fn backup_names(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let prefix = format!("{LOG_NAME}.");
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&prefix))
        .collect();
    names.sort();
    names
}

/// Backups counted once each: while a backup is being compressed, both `name` and
/// `name.gz` exist.
fn distinct_backups(names: &[String]) -> BTreeSet<String> {
    names
        .iter()
        .map(|name| name.strip_suffix(".gz").unwrap_or(name).to_owned())
        .collect()
}

/// Reports whether `name` has the documented form `agent.log.N`, N from 1, with an
/// optional `.gz`.
fn is_backup_name(name: &str) -> bool {
    let Some(suffix) = name.strip_prefix(&format!("{LOG_NAME}.")) else {
        return false;
    };
    let number = suffix.strip_suffix(".gz").unwrap_or(suffix);
    !number.is_empty() && !number.starts_with('0') && number.bytes().all(|b| b.is_ascii_digit())
}

/// First line of `path`, or `None` while it is missing or contains no whole line. Each line of
/// the Agent starts with a timestamp in microseconds, so it names the file it starts.
fn first_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split_once('\n').map(|(line, _)| line.to_owned())
}

/// Size of `path`, or `None` when it does not exist (it was just rotated or deleted).
fn size_of(path: &Path) -> Option<u64> {
    match std::fs::metadata(path) {
        Ok(metadata) => Some(metadata.len()),
        Err(error) if error.kind() == ErrorKind::NotFound => None,
        Err(error) => panic!("cannot read the size of {}: {error}", path.display()),
    }
}

/// Checks the sizes of the file being written and of the uncompressed backups in `dir`.
/// Compressed backups may be half written while the Agent runs; they are checked after it
/// stops.
fn assert_sizes_bounded(dir: &Path, names: &[String]) {
    if let Some(size) = size_of(&dir.join(LOG_NAME)) {
        assert!(
            size <= MAX_SIZE + MAX_EVENT,
            "{LOG_NAME} has {size} bytes, more than max_size {MAX_SIZE} plus one event"
        );
    }
    for name in names.iter().filter(|name| !name.ends_with(".gz")) {
        if let Some(size) = size_of(&dir.join(name)) {
            assert!(
                size <= MAX_SIZE + MAX_EVENT,
                "{name} has {size} bytes, more than max_size {MAX_SIZE} plus one event"
            );
        }
    }
}

/// Checks the text of one backup: past `max_size`, by at most one event, and whole lines
/// of the Agent's reconnect loop.
fn assert_backup_text(name: &str, text: &str) {
    let size = text.len() as u64;
    assert!(
        size > MAX_SIZE,
        "{name} holds {size} bytes, so it was rotated before reaching max_size {MAX_SIZE}"
    );
    assert!(
        size <= MAX_SIZE + MAX_EVENT,
        "{name} holds {size} bytes, more than max_size {MAX_SIZE} plus one event"
    );
    assert!(text.ends_with('\n'), "{name} ends inside a line");
    assert!(
        text.contains("waiting before reconnecting"),
        "{name} does not hold the Agent's reconnect events:\n{text}"
    );
}

#[test]
fn backups_rotate_compress_and_stay_bounded() {
    const MAX_BACKUPS: usize = 3;
    const MAX_SAMPLES: usize = 1500;

    let dir = tempfile::tempdir().unwrap();
    let config = agent_package(
        dir.path(),
        &format!(
            "level: debug\nfile: log/{LOG_NAME}\nmax_size: \"4KiB\"\nmax_backups: {MAX_BACKUPS}\n\
             max_age: \"1h\"\ncompress: true\n"
        ),
    );
    let log_dir = dir.path().join("agent/log");
    let mut agent = start_agent(&config);

    // Read the folder until the file has rotated MAX_BACKUPS + 3 times, so the oldest
    // backup has been deleted several times over. Each rotation starts a file with a new
    // first line, which is how rotations are counted.
    //
    // file-rotate 0.8 renames every file before it deletes the oldest backup, so one
    // reading can catch MAX_BACKUPS + 1 for a moment. The test fails only when a second
    // reading 10 ms later confirms the count.
    let mut started = BTreeSet::new();
    for _ in 0..MAX_SAMPLES {
        assert_running(&mut agent, &config);
        let names = backup_names(&log_dir);
        let backups = distinct_backups(&names);
        if backups.len() > MAX_BACKUPS {
            std::thread::sleep(Duration::from_millis(10));
            let backups = distinct_backups(&backup_names(&log_dir));
            assert!(
                backups.len() <= MAX_BACKUPS,
                "{} backups exist, more than max_backups {MAX_BACKUPS}: {backups:?}",
                backups.len()
            );
        }
        assert_sizes_bounded(&log_dir, &names);
        started.extend(first_line(&log_dir.join(LOG_NAME)));
        if started.len() > MAX_BACKUPS + 3 {
            break;
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
    assert!(
        started.len() > MAX_BACKUPS + 3,
        "only {} log files were started within {MAX_SAMPLES} readings",
        started.len()
    );
    stop_agent(&mut agent, &config);

    // After the exit no rotation is under way: exactly MAX_BACKUPS backups remain, numbered
    // from 1, each compressed and each a gzip stream of whole log lines.
    let names = backup_names(&log_dir);
    let expected: Vec<String> = (1..=MAX_BACKUPS)
        .map(|number| format!("{LOG_NAME}.{number}.gz"))
        .collect();
    assert_eq!(names, expected);
    for name in &names {
        assert!(is_backup_name(name), "unexpected backup name {name}");
        assert!(name.ends_with(".gz"), "{name} is not compressed");
        let file = std::fs::File::open(log_dir.join(name)).unwrap();
        let mut text = String::new();
        flate2::read::GzDecoder::new(file)
            .read_to_string(&mut text)
            .unwrap_or_else(|error| panic!("{name} does not decompress: {error}"));
        assert_backup_text(name, &text);
    }
    let current = std::fs::metadata(log_dir.join(LOG_NAME)).unwrap().len();
    assert!(
        current <= MAX_SIZE + MAX_EVENT,
        "{LOG_NAME} has {current} bytes"
    );
}

#[test]
fn backups_expire_after_max_age() {
    const MAX_AGE: Duration = Duration::from_secs(2);
    /// The age is checked only when the file rotates, so a backup can outlive MAX_AGE by one
    /// rotation interval. The rest is room for a slow machine.
    const AGE_SLACK: Duration = Duration::from_secs(3);
    /// Long enough that backups from the first seconds must have expired.
    const RUN_TIME: Duration = Duration::from_secs(8);

    // max_backups is the largest accepted, far above the number of rotations in RUN_TIME,
    // so only the age deletes backups here.
    let dir = tempfile::tempdir().unwrap();
    let config = agent_package(
        dir.path(),
        &format!(
            "level: debug\nfile: log/{LOG_NAME}\nmax_size: \"4KiB\"\nmax_backups: 1000\n\
             max_age: \"2s\"\ncompress: false\n"
        ),
    );
    let log_dir = dir.path().join("agent/log");
    let mut agent = start_agent(&config);

    // The first line the Agent logs is in the first backup, which must expire.
    let started = Instant::now();
    let mut earliest = None;
    while started.elapsed() < RUN_TIME {
        assert_running(&mut agent, &config);
        let names = backup_names(&log_dir);
        assert_sizes_bounded(&log_dir, &names);
        if earliest.is_none() {
            earliest = first_line(&log_dir.join(LOG_NAME));
        }
        std::thread::sleep(SAMPLE_INTERVAL);
    }
    let stopped_at = SystemTime::now();
    stop_agent(&mut agent, &config);

    let earliest = earliest.expect("the Agent wrote no line");
    let names = backup_names(&log_dir);
    assert!(!names.is_empty(), "no backup is left");
    for name in names.iter().chain([&LOG_NAME.to_owned()]) {
        let text = std::fs::read_to_string(log_dir.join(name)).unwrap();
        assert!(
            !text.contains(&earliest),
            "{name} still holds the first line, so no backup was deleted: {earliest}"
        );
    }
    for name in &names {
        assert!(is_backup_name(name), "unexpected backup name {name}");
        assert!(!name.ends_with(".gz"), "{name} is compressed");
        let path = log_dir.join(name);
        assert_backup_text(name, &std::fs::read_to_string(&path).unwrap());

        // A backup's age is counted from its last write, which is about its rotation time.
        let rotated = std::fs::metadata(&path).unwrap().modified().unwrap();
        let age = stopped_at.duration_since(rotated).unwrap_or_default();
        assert!(
            age <= MAX_AGE + AGE_SLACK,
            "{name} was rotated {age:?} before the stop, past max_age {MAX_AGE:?}"
        );
    }
}

/// Runs the Agent with `config`, checks that it exits with a failure, and returns its
/// standard error.
fn failed_start(config: &Path) -> String {
    let output = Command::new(AGENT_BIN)
        .arg("--config")
        .arg(config)
        .output()
        .expect("ipaas-agent must start");
    assert!(!output.status.success());
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn invalid_backup_policy_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let config = agent_package(
        dir.path(),
        "file: log/agent.log\nmax_size: \"lots\"\nmax_backups: -1\n",
    );
    let error = failed_start(&config);
    assert!(error.contains("logger_config.yaml"), "{error}");
    assert!(error.contains("max_size: invalid size `lots`"), "{error}");
    assert!(error.contains("100MiB"), "{error}");
    assert!(
        error.contains("max_backups: invalid backup count `-1`"),
        "{error}"
    );
    assert!(!dir.path().join("agent/log").exists());
}

/// A folder that refuses new files until dropped. Permission bits do this for a normal user
/// but not for root, so for root the folder gets the immutable attribute (`chattr +i`),
/// which leaves the files inside writable.
struct ReadOnlyFolder {
    path: PathBuf,
    immutable: bool,
}

impl ReadOnlyFolder {
    /// Returns `None` when running as root without a working `chattr`.
    fn new(path: &Path) -> Option<Self> {
        let owner = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata(path).unwrap());
        if owner != 0 {
            let read_only = std::os::unix::fs::PermissionsExt::from_mode(0o555);
            std::fs::set_permissions(path, read_only).unwrap();
            return Some(Self {
                path: path.to_owned(),
                immutable: false,
            });
        }
        let status = Command::new("chattr").arg("+i").arg(path).status();
        status.is_ok_and(|status| status.success()).then(|| Self {
            path: path.to_owned(),
            immutable: true,
        })
    }
}

impl Drop for ReadOnlyFolder {
    fn drop(&mut self) {
        if self.immutable {
            let _ = Command::new("chattr").arg("-i").arg(&self.path).status();
        } else {
            let writable = std::os::unix::fs::PermissionsExt::from_mode(0o755);
            let _ = std::fs::set_permissions(&self.path, writable);
        }
    }
}

#[test]
fn read_only_log_folder_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let config = agent_package(dir.path(), &format!("file: log/{LOG_NAME}\n"));
    let log_dir = dir.path().join("agent/log");
    std::fs::create_dir_all(&log_dir).unwrap();
    std::fs::write(log_dir.join(LOG_NAME), "").unwrap();
    let Some(_read_only) = ReadOnlyFolder::new(&log_dir) else {
        println!(
            "skipped: running as root and `chattr +i` failed on {}",
            log_dir.display()
        );
        return;
    };

    // The log file takes writes, but the first rotation could not create a new one.
    let error = failed_start(&config);
    assert!(error.contains("logger_config.yaml"), "{error}");
    assert!(
        error.contains(&format!(
            "cannot create files in its folder {}",
            log_dir.display()
        )),
        "{error}"
    );
    assert!(
        error.contains(
            "point `file` at a writable file, or leave it empty to log to standard error"
        ),
        "{error}"
    );
}
