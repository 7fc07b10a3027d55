//! End-to-end tests of `ipaas-agent keygen` and `ipaas-agent check`: key files read and
//! used by the real `openssl` command, package checks on real files, and
//! `check --connect` against a real Server on 127.0.0.1.

mod common;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::*;
use ipaas_gateway::keys::{PrivateKey, PublicKey, MIN_KEY_BITS};

const LIMIT: Duration = Duration::from_secs(20);

/// Runs `ipaas-agent` with `args` in `dir`.
fn agent(args: &[&str], dir: &Path) -> Output {
    Command::new(AGENT_BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("ipaas-agent must start")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs `openssl` with `args` in `dir` and returns its output; panics when it fails.
fn openssl(args: &[&str], dir: &Path) -> String {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl must be installed");
    assert!(
        output.status.success(),
        "openssl {args:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output) + &stderr(&output)
}

/// Returns the value of the `fingerprint` line that keygen prints.
fn printed_fingerprint(output: &Output) -> String {
    let text = stdout(output);
    text.lines()
        .find_map(|line| line.strip_prefix("fingerprint "))
        .unwrap_or_else(|| panic!("no fingerprint line in:\n{text}"))
        .trim()
        .to_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keygen_files_work_with_openssl() {
    let dir = tempfile::tempdir().unwrap();
    let output = agent(&["keygen", "--out", "secret"], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let secret = dir.path().join("secret");
    let (private, public) = (secret.join("private.pem"), secret.join("public.pem"));

    // Both files are in the PKCS#1 forms and modes the Agent's docs promise.
    let private_text = std::fs::read_to_string(&private).unwrap();
    let public_text = std::fs::read_to_string(&public).unwrap();
    assert!(private_text.starts_with("-----BEGIN RSA PRIVATE KEY-----\n"));
    assert!(public_text.starts_with("-----BEGIN RSA PUBLIC KEY-----\n"));
    assert_eq!(mode(&private), 0o600);
    assert_eq!(mode(&public), 0o644);

    // The printed fingerprint is the one the Agent and the Server compute.
    let loaded = PublicKey::load(&public, MIN_KEY_BITS).unwrap();
    assert_eq!(
        printed_fingerprint(&output),
        loaded.fingerprint().to_string()
    );

    // openssl reads both files, and derives the same public key from our private key.
    let checked = openssl(&["rsa", "-in", "private.pem", "-check", "-noout"], &secret);
    assert!(checked.contains("RSA key ok"), "{checked}");
    openssl(
        &["rsa", "-RSAPublicKey_in", "-in", "public.pem", "-noout"],
        &secret,
    );
    openssl(
        &[
            "rsa",
            "-in",
            "private.pem",
            "-RSAPublicKey_out",
            "-out",
            "derived.pem",
        ],
        &secret,
    );
    let derived = std::fs::read_to_string(secret.join("derived.pem")).unwrap();
    assert_eq!(derived.replace("\r\n", "\n"), public_text);

    // Our signature verifies with openssl, against the SPKI form of our public key.
    let message = b"challenge bytes signed by the Agent";
    std::fs::write(secret.join("message"), message).unwrap();
    let key = PrivateKey::load(&private, MIN_KEY_BITS).unwrap();
    std::fs::write(secret.join("signature"), key.sign(message)).unwrap();
    openssl(
        &[
            "rsa",
            "-RSAPublicKey_in",
            "-in",
            "public.pem",
            "-pubout",
            "-out",
            "spki.pem",
        ],
        &secret,
    );
    let verified = openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "spki.pem",
            "-signature",
            "signature",
            "message",
        ],
        &secret,
    );
    assert!(verified.contains("Verified OK"), "{verified}");

    // An openssl signature with our private key verifies with our public key.
    openssl(
        &[
            "dgst",
            "-sha256",
            "-sign",
            "private.pem",
            "-out",
            "openssl-signature",
            "message",
        ],
        &secret,
    );
    let signature = std::fs::read(secret.join("openssl-signature")).unwrap();
    assert!(loaded.verify(message, &signature));
    assert!(!loaded.verify(b"another message", &signature));
}

#[test]
fn keygen_makes_requested_size() {
    let dir = tempfile::tempdir().unwrap();
    let output = agent(&["keygen", "--out", ".", "--bits", "3072"], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));
    let text = openssl(
        &["rsa", "-in", "private.pem", "-text", "-noout"],
        dir.path(),
    );
    assert!(text.contains("3072 bit"), "{text}");
    assert!(stdout(&output).contains("3072-bit"), "{}", stdout(&output));
}

#[test]
fn keygen_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let first = agent(&["keygen", "--out", "secret"], dir.path());
    assert!(first.status.success(), "{}", stderr(&first));
    let private = dir.path().join("secret/private.pem");
    let before = std::fs::read(&private).unwrap();

    let second = agent(&["keygen", "--out", "secret"], dir.path());
    assert!(!second.status.success());
    let error = stderr(&second);
    assert!(error.contains("secret/private.pem"), "{error}");
    assert!(error.contains("--force"), "{error}");
    assert_eq!(std::fs::read(&private).unwrap(), before);

    let forced = agent(&["keygen", "--out", "secret", "--force"], dir.path());
    assert!(forced.status.success(), "{}", stderr(&forced));
    assert_ne!(std::fs::read(&private).unwrap(), before);
    assert_ne!(printed_fingerprint(&forced), printed_fingerprint(&first));
    assert!(stdout(&forced).contains("replaced"), "{}", stdout(&forced));
    assert_eq!(mode(&private), 0o600);
}

#[test]
fn keygen_rejects_small_keys() {
    let dir = tempfile::tempdir().unwrap();
    let output = agent(&["keygen", "--out", "secret", "--bits", "1024"], dir.path());
    assert!(!output.status.success());
    let error = stderr(&output);
    assert!(error.contains("2048, 3072 or 4096"), "{error}");
    assert!(error.contains("openssl genrsa"), "{error}");
    assert!(!dir.path().join("secret").exists());
}

#[test]
fn keygen_default_and_public_paths() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("configs")).unwrap();
    let output = agent(&["keygen", "--public-out", "share/gw.pem"], dir.path());
    assert!(output.status.success(), "{}", stderr(&output));

    let private = dir.path().join("configs/secret/private.pem");
    let public = dir.path().join("share/gw.pem");
    assert_eq!(mode(&private), 0o600);
    assert!(!dir.path().join("configs/secret/public.pem").exists());
    assert_eq!(
        PrivateKey::load(&private, MIN_KEY_BITS)
            .unwrap()
            .fingerprint(),
        PublicKey::load(&public, MIN_KEY_BITS)
            .unwrap()
            .fingerprint()
    );
}

#[test]
fn bare_flags_still_run_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    // A missing config proves that the flags reached the Agent's startup, not a subcommand.
    let output = agent(
        &["--config", "missing.yaml", "--logger", "log.yaml"],
        dir.path(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("missing.yaml"),
        "{}",
        stderr(&output)
    );

    let mixed = agent(&["--config", "missing.yaml", "check"], dir.path());
    assert_eq!(mixed.status.code(), Some(2), "{}", stderr(&mixed));
}

/// Lays out an Agent package for gateway `gw` that points at the Server of `env`, without
/// starting the Agent. The private key is copied when given.
fn package(
    env: &Env,
    name: &str,
    private_key: Option<&Path>,
    services: &[(&str, &str)],
) -> PathBuf {
    let root = env.path(&format!("agents/{name}"));
    std::fs::create_dir_all(root.join("configs/secret")).unwrap();
    run(Command::new(SERVER_BIN)
        .args(["pki", "issue-agent", "--gateway", "gw", "--dir"])
        .arg(env.path("server/pki"))
        .arg("--out")
        .arg(root.join("configs/client")));
    if let Some(private_key) = private_key {
        let target = root.join("configs/secret/private.pem");
        std::fs::copy(private_key, &target).unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    let mut yaml = format!(
        "server: {{address: \"127.0.0.1:{}\", tls_name: localhost}}\ngateway_id: gw\nagent_name: {name}\n\
         connect_timeout: 2s\nservices:\n",
        env.agent_port
    );
    for (service, target) in services {
        yaml += &format!("  - {{name: {service}, target: \"{target}\"}}\n");
    }
    std::fs::write(root.join("configs/config.yaml"), yaml).unwrap();
    root
}

/// Finds the report line of `output` that starts with `status` and names `subject`.
fn report_line(output: &Output, status: &str, subject: &str) -> Option<String> {
    stdout(output)
        .lines()
        .find(|line| {
            let mut words = line.split_whitespace();
            words.next() == Some(status) && line[status.len()..].trim_start().starts_with(subject)
        })
        .map(str::to_owned)
}

#[test]
fn check_passes_valid_package() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 2048);
    let root = package(&env, "valid", Some(&private), &[("echo", "127.0.0.1:9")]);

    let output = agent(&["check"], &root);
    let report = stdout(&output);
    assert!(output.status.success(), "{report}{}", stderr(&output));
    for subject in ["config", "private key", "TLS files", "service"] {
        assert!(
            report_line(&output, "ok", subject).is_some(),
            "{subject}: {report}"
        );
    }
    assert!(report.contains("0 warning(s), 0 failed"), "{report}");

    // The same package checked from another folder with --config.
    let config = root.join("configs/config.yaml");
    let elsewhere = agent(
        &["check", "--config", config.to_str().unwrap()],
        env.dir.path(),
    );
    assert!(elsewhere.status.success(), "{}", stdout(&elsewhere));
}

#[test]
fn check_lists_every_config_problem() {
    let env = Env::new(Backends::TOKIO);
    let root = package(&env, "bad-config", None, &[("echo", "127.0.0.1:9")]);
    std::fs::write(
        root.join("configs/config.yaml"),
        "server: {address: 'no-port'}\ngateway_id: 'bad id'\nservices:\n  - {name: db, target: 'x'}\n",
    )
    .unwrap();

    let output = agent(&["check"], &root);
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    for key in ["server.address", "gateway_id", "services[0].target"] {
        let found = report
            .lines()
            .any(|line| line.starts_with("FAILED") && line.contains(key));
        assert!(found, "{key} missing from:\n{report}");
    }
    assert!(
        report_line(&output, "skipped", "package").is_some(),
        "{report}"
    );
}

#[test]
fn check_validates_logger_config() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 2048);
    let root = package(&env, "logger", Some(&private), &[("echo", "127.0.0.1:9")]);

    // Without a logger config the Agent logs to standard error, which is not a problem.
    let absent = agent(&["check"], &root);
    let line = report_line(&absent, "ok", "logger").expect("no logger line");
    assert!(line.contains("standard error"), "{line}");

    std::fs::write(
        root.join("configs/logger_config.yaml"),
        "level: info\nfile: log/agent.log\nmax_size: 1MiB\nmax_backups: 3\n",
    )
    .unwrap();
    let valid = agent(&["check"], &root);
    assert!(valid.status.success(), "{}", stdout(&valid));
    let line = report_line(&valid, "ok", "logger").expect("no logger line");
    assert!(line.contains("log/agent.log"), "{line}");
    assert!(line.contains("1 MiB, 3 backups"), "{line}");

    std::fs::write(
        root.join("configs/logger_config.yaml"),
        "level: info\nmax_size: lots\nmax_backups: -1\n",
    )
    .unwrap();
    let invalid = agent(&["check"], &root);
    assert_eq!(invalid.status.code(), Some(1), "{}", stdout(&invalid));
    for key in ["max_size", "max_backups"] {
        let found = stdout(&invalid).lines().any(|line| {
            line.starts_with("FAILED") && line.contains("logger") && line.contains(key)
        });
        assert!(found, "{key} missing from:\n{}", stdout(&invalid));
    }
}

#[test]
fn check_logger_wording_is_singular_and_spaced() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 2048);
    let root = package(&env, "wording", Some(&private), &[("echo", "127.0.0.1:9")]);
    std::fs::write(
        root.join("configs/logger_config.yaml"),
        "file: log/agent.log\nmax_size: 1B\nmax_backups: 1\nmax_age: 30d\ncompress: false\n",
    )
    .unwrap();

    let output = agent(&["check"], &root);
    assert!(output.status.success(), "{}", stdout(&output));
    let line = report_line(&output, "ok", "logger").expect("no logger line");
    assert!(
        line.contains("rotated past 1 byte, 1 backup kept for up to 30 days"),
        "{line}"
    );
}

#[test]
fn check_reports_unusable_log_path() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 2048);
    let root = package(&env, "log-path", Some(&private), &[("echo", "127.0.0.1:9")]);
    std::fs::create_dir_all(root.join("log/agent.log")).unwrap();
    std::fs::write(root.join("blocker"), "").unwrap();

    // A folder where the file should be, and a file where a folder should be: both fail
    // at start, so both must fail the check. Permission bits would not stop root.
    for (value, cause) in [
        ("log/agent.log", "is a folder"),
        ("blocker/agent.log", "cannot create its folder"),
    ] {
        std::fs::write(
            root.join("configs/logger_config.yaml"),
            format!("file: {value}\n"),
        )
        .unwrap();
        let output = agent(&["check"], &root);
        assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
        let line = report_line(&output, "FAILED", "logger").expect("no failed logger line");
        assert!(line.contains("logger_config.yaml: file: "), "{line}");
        assert!(line.contains(value), "{line}");
        assert!(line.contains(cause), "{line}");
        assert!(
            line.contains(
                "point `file` at a writable file, or leave it empty to log to standard error"
            ),
            "{line}"
        );
    }
}

#[test]
fn check_reports_missing_config() {
    let dir = tempfile::tempdir().unwrap();
    let output = agent(&["check", "--config", "nowhere/config.yaml"], dir.path());
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let line = report_line(&output, "FAILED", "config").unwrap();
    assert!(line.contains("nowhere/config.yaml"), "{line}");
    assert!(line.contains("--config"), "{line}");
}

#[test]
fn check_reports_missing_key() {
    let env = Env::new(Backends::TOKIO);
    let root = package(&env, "no-key", None, &[("echo", "127.0.0.1:9")]);

    let output = agent(&["check", "--connect"], &root);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let line = report_line(&output, "FAILED", "private key").unwrap();
    assert!(
        line.contains("configs/secret/private.pem not found"),
        "{line}"
    );
    assert!(line.contains("ipaas-agent keygen --out"), "{line}");
    let skipped = report_line(&output, "skipped", "server").unwrap();
    assert!(skipped.contains("not contacted"), "{skipped}");
}

#[test]
fn check_warns_about_readable_key() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 2048);
    let root = package(&env, "loose", Some(&private), &[("echo", "127.0.0.1:9")]);
    let key = root.join("configs/secret/private.pem");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();

    let output = agent(&["check"], &root);
    assert!(output.status.success(), "{}", stdout(&output));
    let line = report_line(&output, "warning", "private key").unwrap();
    assert!(line.contains("chmod 600"), "{line}");
    assert!(line.contains(key.to_str().unwrap()), "{line}");
}

#[test]
fn check_warns_about_small_key() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 1024);
    let root = package(&env, "small", Some(&private), &[("echo", "127.0.0.1:9")]);

    let output = agent(&["check"], &root);
    assert!(output.status.success(), "{}", stdout(&output));
    let line = report_line(&output, "warning", "private key").unwrap();
    assert!(line.contains("1024 bits"), "{line}");
    assert!(line.contains("keygen --out"), "{line}");
}

#[test]
fn check_fails_on_garbage_key() {
    let env = Env::new(Backends::TOKIO);
    let root = package(&env, "garbage", None, &[("echo", "127.0.0.1:9")]);
    let key = root.join("configs/secret/private.pem");
    std::fs::write(&key, "this is not a key\n").unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();

    let output = agent(&["check"], &root);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let line = report_line(&output, "FAILED", "private key").unwrap();
    assert!(line.contains(key.to_str().unwrap()), "{line}");
}

#[test]
fn check_fails_on_missing_tls_files() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 2048);
    let root = package(&env, "no-tls", Some(&private), &[("echo", "127.0.0.1:9")]);
    std::fs::remove_file(root.join("configs/client/client.pem")).unwrap();

    let output = agent(&["check"], &root);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let line = report_line(&output, "FAILED", "TLS files").unwrap();
    assert!(line.contains("client.pem"), "{line}");
    assert!(line.contains("pki issue-agent"), "{line}");
}

/// Starts the Server of `env` with gateway `gw`, routing `services`, and waits until it
/// accepts connections.
fn start_server(env: &mut Env, public_key: &Path, services: &[&str]) {
    env.start_server(&[GatewaySpec {
        id: "gw".into(),
        public_keys: vec![public_key.to_owned()],
        allow: vec!["127.0.0.0/8".into()],
        services: services
            .iter()
            .map(|name| (name.to_string(), free_port()))
            .collect(),
    }]);
    let port = env.agent_port;
    wait_for("the Server's Agent port to open", LIMIT, || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

#[test]
fn check_connect_is_welcomed() {
    for backends in [Backends::IO_URING, Backends::TOKIO] {
        let mut env = Env::new(backends);
        let root = package(&env, "welcomed", None, &[("echo", "127.0.0.1:9")]);
        let keygen = agent(&["keygen"], &root);
        assert!(keygen.status.success(), "{}", stderr(&keygen));
        start_server(
            &mut env,
            &root.join("configs/secret/public.pem"),
            &["echo", "db"],
        );

        let output = agent(&["check", "--connect"], &root);
        let report = stdout(&output);
        assert!(output.status.success(), "{backends:?}: {report}");
        let welcome = report
            .lines()
            .find(|line| line.contains("(Welcome)"))
            .unwrap_or_else(|| panic!("no Welcome in:\n{report}"));
        assert!(welcome.contains("session id"), "{welcome}");
        assert!(welcome.contains("echo, db"), "{welcome}");
        let missing = report_line(&output, "warning", "service").unwrap();
        assert!(missing.contains("`db`"), "{missing}");
        assert!(
            report.lines().any(|line| line.contains("closed session")),
            "{report}"
        );

        // The Server saw the fingerprint keygen printed, and the session ended.
        let server_log = wait_for_log(&env.server_log(), "Agent session ended", LIMIT);
        let fingerprint = printed_fingerprint(&keygen);
        assert!(server_log.contains(&fingerprint), "{server_log}");
    }
}

#[test]
fn check_connect_shows_rejection() {
    let mut env = Env::new(Backends::TOKIO);
    let (_, registered) = openssl_keys(&env.path("registered"), 2048);
    let (other, _) = openssl_keys(&env.path("other"), 2048);
    let root = package(&env, "rejected", Some(&other), &[("echo", "127.0.0.1:9")]);
    start_server(&mut env, &registered, &["echo"]);

    let output = agent(&["check", "--connect"], &root);
    let report = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{report}");
    let line = report_line(&output, "FAILED", "server").unwrap();
    assert!(line.contains("rejected this Agent"), "{line}");
    assert!(
        line.contains("is not registered for gateway `gw`"),
        "{line}"
    );
    assert!(line.contains("SHA256:"), "{line}");
    assert!(line.contains("configs/secret/private.pem"), "{line}");
    wait_for_log(&env.server_log(), "Agent rejected", LIMIT);
}

#[test]
fn check_connect_without_server() {
    let env = Env::new(Backends::TOKIO);
    let (private, _) = openssl_keys(&env.path("keys"), 2048);
    let root = package(&env, "alone", Some(&private), &[("echo", "127.0.0.1:9")]);

    let output = agent(&["check", "--connect"], &root);
    assert_eq!(output.status.code(), Some(1), "{}", stdout(&output));
    let line = report_line(&output, "FAILED", "server").unwrap();
    assert!(line.contains("cannot connect to 127.0.0.1:"), "{line}");
    assert!(line.contains("check that the Server runs"), "{line}");
}
