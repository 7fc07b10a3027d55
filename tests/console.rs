//! The console flow end to end: `ipaas-server init`, gateways managed with the CLI through
//! the admin API, the Agent package downloaded, unpacked and started with its own scripts,
//! changes applied to the running Server, and the registry kept across a restart.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

/// A Server folder made by `ipaas-server init`, and the running Server.
struct Console {
    dir: tempfile::TempDir,
    agent_port: u16,
    admin_port: u16,
    server: Option<Process>,
}

impl Console {
    fn init() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (agent_port, admin_port) = (free_port(), free_port());
        run(Command::new(SERVER_BIN)
            .args([
                "init",
                "--name",
                "localhost",
                "--listen",
                &format!("127.0.0.1:{agent_port}"),
            ])
            .args(["--admin", &format!("127.0.0.1:{admin_port}"), "--dir"])
            .arg(dir.path().join("server")));
        let mut console = Self {
            dir,
            agent_port,
            admin_port,
            server: None,
        };
        console.start();
        console
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn start(&mut self) {
        let console_log = std::fs::File::create(self.path("server/console.log")).unwrap();
        self.server = Some(Process::spawn(
            "ipaas-server",
            Command::new(SERVER_BIN)
                .args(["run", "--config"])
                .arg(self.path("server/server.yaml"))
                .stdout(Stdio::null())
                .stderr(console_log),
        ));
        let deadline = std::time::Instant::now() + LIMIT;
        while !self.cli(&["gateway", "list"]).status.success() {
            assert!(
                std::time::Instant::now() < deadline,
                "the admin API did not answer within {LIMIT:?}; Server output:\n{}",
                read_log(&self.path("server/console.log"))
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn restart(&mut self) {
        let mut server = self.server.take().unwrap();
        assert!(
            server.terminate(LIMIT),
            "the Server did not stop on SIGTERM"
        );
        self.start();
    }

    /// Runs an admin CLI command against this Server.
    fn cli(&self, args: &[&str]) -> Output {
        Command::new(SERVER_BIN)
            .args(args)
            .arg("--config")
            .arg(self.path("server/server.yaml"))
            .output()
            .unwrap()
    }

    fn cli_ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            output.status.success(),
            "ipaas-server {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn cli_err(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(
            !output.status.success(),
            "ipaas-server {args:?} should fail"
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    fn server_log(&self) -> PathBuf {
        self.path("server/log/server.log")
    }
}

fn echo_once(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut reply = [0u8; 5];
    stream.write_all(b"hello").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"hello"
}

fn unpack_tar(archive: &Path, into: &Path) -> PathBuf {
    std::fs::create_dir_all(into).unwrap();
    run(Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into));
    into.join("ipaas-private-cloud-agent")
}

#[test]
fn seed_flow_with_cli_package_and_scripts() {
    let console = Console::init();
    let service = TestService::start(echo);
    let entry = free_port();

    // The seed's key commands, run as written.
    let keys = console.path("keys");
    std::fs::create_dir_all(&keys).unwrap();
    run(Command::new("openssl")
        .args(["genrsa", "-out", "private.pem", "1024"])
        .current_dir(&keys)
        .stderr(Stdio::null()));
    run(Command::new("openssl")
        .args([
            "rsa",
            "-in",
            "private.pem",
            "-RSAPublicKey_out",
            "-out",
            "public.pem",
        ])
        .current_dir(&keys)
        .stderr(Stdio::null()));

    // Create the gateway with its key, allowlist and service.
    let created = console.cli_ok(&[
        "gateway",
        "create",
        "gw-seed",
        "--name",
        "Seed flow",
        "--key",
        keys.join("public.pem").to_str().unwrap(),
        "--allow",
        "127.0.0.1/32",
        "--service",
        &format!("echo={}@127.0.0.1:{entry}", service.target()),
    ]);
    assert!(created.contains("created gateway gw-seed"), "{created}");
    assert!(created.contains("(1024 bits)"), "{created}");
    let listed = console.cli_ok(&["gateway", "list"]);
    assert!(listed.contains("gw-seed"), "{listed}");

    // Download the package in both formats, unpack the tar.gz in a fresh folder.
    let archive = console.path("agent.tar.gz");
    console.cli_ok(&["package", "gw-seed", "--out", archive.to_str().unwrap()]);
    let zip = console.path("agent.zip");
    console.cli_ok(&[
        "package",
        "gw-seed",
        "--format",
        "zip",
        "--out",
        zip.to_str().unwrap(),
    ]);
    assert!(std::fs::metadata(&zip).unwrap().len() > 0);
    let root = unpack_tar(&archive, &console.path("fresh"));
    for path in [
        "bin/Linux/ipaas-agent",
        "configs/client/ca.pem",
        "configs/config.yaml",
        "scripts/linux/start.sh",
        "log",
    ] {
        assert!(root.join(path).exists(), "{path} missing from the package");
    }
    std::fs::copy(
        keys.join("private.pem"),
        root.join("configs/secret/private.pem"),
    )
    .unwrap();

    // Start with the package's own script and send traffic through the entry.
    let started = run(&mut Command::new(root.join("scripts/linux/start.sh")));
    assert!(started.contains("Agent started"), "{started}");
    wait_for("traffic through the entry", LIMIT, || echo_once(entry));

    // Excluding the Agent from the allowlist disconnects it.
    console.cli_ok(&["gateway", "update", "gw-seed", "--allow", "127.0.0.2/32"]);
    wait_for_log(
        &console.server_log(),
        "the Agent's address is no longer in the allowlist",
        LIMIT,
    );
    wait_for("the entry to stop relaying", LIMIT, || !echo_once(entry));
    wait_for_log(
        &root.join("log/agent.log"),
        "is not in the Agent IP allowlist",
        LIMIT,
    );

    // Restoring it lets the Agent back in.
    console.cli_ok(&["gateway", "update", "gw-seed", "--allow", "127.0.0.1/32"]);
    wait_for("traffic after the allowlist is restored", LIMIT, || {
        echo_once(entry)
    });

    let stopped = run(&mut Command::new(root.join("scripts/linux/stop.sh")));
    assert!(stopped.contains("Agent stopped"), "{stopped}");
    assert!(!root.join("log/agent.pid").exists());
}

#[test]
fn registry_survives_restart_and_changes_apply_live() {
    let mut console = Console::init();
    let (_, public) = openssl_keys(&console.path("keys"), 2048);
    let (first, second) = (free_port(), free_port());
    console.cli_ok(&[
        "gateway",
        "create",
        "gw",
        "--key",
        public.to_str().unwrap(),
        "--allow",
        "127.0.0.1",
        "--service",
        &format!("a=127.0.0.1:9@127.0.0.1:{first}"),
    ]);
    wait_for("the new entry port to listen", LIMIT, || {
        TcpStream::connect(("127.0.0.1", first)).is_ok()
    });

    // A service added at run time listens at once; a removed one stops listening.
    console.cli_ok(&[
        "service",
        "add",
        "gw",
        "b",
        "--target",
        "127.0.0.1:9",
        "--listen",
        &format!("127.0.0.1:{second}"),
    ]);
    wait_for("the added service to listen", LIMIT, || {
        TcpStream::connect(("127.0.0.1", second)).is_ok()
    });
    console.cli_ok(&["service", "remove", "gw", "a"]);
    wait_for("the removed service to stop listening", LIMIT, || {
        TcpStream::connect(("127.0.0.1", first)).is_err()
    });

    console.restart();
    let shown = console.cli_ok(&["gateway", "show", "gw", "--json"]);
    let gateway: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(gateway["services"].as_array().unwrap().len(), 1);
    assert_eq!(gateway["services"][0]["name"], "b");
    assert_eq!(gateway["public_keys"][0]["bits"], 2048);
    assert!(TcpStream::connect(("127.0.0.1", second)).is_ok());

    console.cli_ok(&["gateway", "delete", "gw"]);
    wait_for("the deleted gateway's port to close", LIMIT, || {
        TcpStream::connect(("127.0.0.1", second)).is_err()
    });
    assert!(console.cli_ok(&["gateway", "list"]).contains("no gateways"));
}

#[test]
fn admin_api_rejects_bad_input() {
    let console = Console::init();
    let (_, public) = openssl_keys(&console.path("keys"), 2048);
    let key = public.to_str().unwrap();
    let entry = free_port();
    let service = format!("web=127.0.0.1:80@127.0.0.1:{entry}");

    let error = console.cli_err(&[
        "gateway",
        "create",
        "gw",
        "--key",
        key,
        "--allow",
        "10.0.0.0/33",
        "--service",
        &service,
    ]);
    assert!(
        error.contains("field `allow[0]`") && error.contains("10.0.0.0/33"),
        "{error}"
    );

    let garbage = console.path("garbage.pem");
    std::fs::write(&garbage, "not a key").unwrap();
    let error = console.cli_err(&[
        "gateway",
        "create",
        "gw",
        "--key",
        garbage.to_str().unwrap(),
        "--allow",
        "127.0.0.1",
    ]);
    assert!(error.contains("field `public_keys[0]`"), "{error}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let error = console.cli_err(&[
        "gateway",
        "create",
        "gw",
        "--key",
        key,
        "--allow",
        "127.0.0.1",
        "--service",
        &format!("web=127.0.0.1:80@127.0.0.1:{busy_port}"),
    ]);
    assert!(
        error.contains("HTTP 409") && error.contains("services[0].listen"),
        "{error}"
    );

    console.cli_ok(&[
        "gateway",
        "create",
        "gw",
        "--key",
        key,
        "--allow",
        "127.0.0.1",
        "--service",
        &service,
    ]);
    let error = console.cli_err(&[
        "gateway",
        "create",
        "gw",
        "--key",
        key,
        "--allow",
        "127.0.0.1",
    ]);
    assert!(
        error.contains("HTTP 409") && error.contains("already exists"),
        "{error}"
    );
    let error = console.cli_err(&[
        "service",
        "add",
        "gw",
        "web",
        "--target",
        "127.0.0.1:81",
        "--listen",
        "127.0.0.1:1",
    ]);
    assert!(error.contains("listed twice"), "{error}");
    let error = console.cli_err(&["gateway", "show", "missing"]);
    assert!(error.contains("HTTP 404"), "{error}");

    // A wrong token is refused, and the token never reaches the Server's log.
    let output = Command::new(SERVER_BIN)
        .args([
            "gateway",
            "list",
            "--admin-url",
            &format!("http://127.0.0.1:{}", console.admin_port),
        ])
        .args(["--token", "wrong-token-of-some-length"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("HTTP 401"));
    let token = std::fs::read_to_string(console.path("server/admin.token")).unwrap();
    let log = wait_for_log(
        &console.server_log(),
        "admin request without a valid bearer token",
        LIMIT,
    );
    assert!(!log.contains(token.trim()));
    assert!(!log.contains("wrong-token-of-some-length"));
    let _ = console.agent_port;
}

#[test]
fn acknowledged_changes_survive_a_crash() {
    let mut console = Console::init();
    let (_, public) = openssl_keys(&console.path("keys"), 2048);
    for index in 0..20 {
        console.cli_ok(&[
            "gateway",
            "create",
            &format!("gw-{index}"),
            "--key",
            public.to_str().unwrap(),
            "--allow",
            "127.0.0.1",
        ]);
    }

    // SIGKILL right after the last acknowledged write: no orderly shutdown, no flush.
    let mut server = console.server.take().unwrap();
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    console.start();

    let listed: serde_json::Value =
        serde_json::from_str(&console.cli_ok(&["gateway", "list", "--json"])).unwrap();
    let ids: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|gateway| gateway["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 20, "{ids:?}");
    for index in 0..20 {
        assert!(
            ids.contains(&format!("gw-{index}").as_str()),
            "gw-{index} lost: {ids:?}"
        );
    }
}

#[test]
fn removed_key_disconnects_its_agent() {
    let console = Console::init();
    let service = TestService::start(echo);
    let entry = free_port();
    let (private, public) = openssl_keys(&console.path("keys"), 2048);
    let (_, spare) = openssl_keys(&console.path("spare"), 2048);
    let created = console.cli_ok(&[
        "gateway",
        "create",
        "gw",
        "--key",
        public.to_str().unwrap(),
        "--key",
        spare.to_str().unwrap(),
        "--allow",
        "127.0.0.1",
        "--service",
        &format!("echo={}@127.0.0.1:{entry}", service.target()),
        "--json",
    ]);
    let gateway: serde_json::Value = serde_json::from_str(&created).unwrap();
    let fingerprint = gateway["public_keys"][0]["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();

    let archive = console.path("agent.tar.gz");
    console.cli_ok(&["package", "gw", "--out", archive.to_str().unwrap()]);
    let root = unpack_tar(&archive, &console.path("fresh"));
    std::fs::copy(&private, root.join("configs/secret/private.pem")).unwrap();
    let console_log = std::fs::File::create(console.path("agent.console.log")).unwrap();
    let _agent = Process::spawn(
        "ipaas-agent",
        Command::new(root.join("bin/Linux/ipaas-agent"))
            .arg("--config")
            .arg(root.join("configs/config.yaml"))
            .stderr(console_log),
    );
    wait_for("traffic through the entry", LIMIT, || echo_once(entry));

    // Rotating the Agent's key out closes its sessions; the spare key stays registered.
    console.cli_ok(&["key", "remove", "gw", &fingerprint]);
    wait_for_log(
        &console.server_log(),
        "the Agent's key is no longer registered",
        LIMIT,
    );
    wait_for("the entry to stop relaying", LIMIT, || !echo_once(entry));
    wait_for_log(
        &root.join("log/agent.log"),
        "is not registered for gateway `gw`",
        LIMIT,
    );
    let shown = console.cli_ok(&["gateway", "show", "gw"]);
    assert!(!shown.contains(&fingerprint), "{shown}");
}
