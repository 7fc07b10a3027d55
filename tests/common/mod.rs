//! Harness for the end-to-end tests: real `ipaas-server` and `ipaas-agent` processes with
//! TLS material from `ipaas-server pki`, RSA keys from the `openssl` command, and real
//! services, all on 127.0.0.1.
//!
//! Every process a test starts is a [`Process`], which sends SIGTERM to its own pid (and
//! SIGKILL after a grace period) when dropped.

#![allow(dead_code)]

pub mod flood;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_ipaas-server");
pub const AGENT_BIN: &str = env!("CARGO_BIN_EXE_ipaas-agent");

/// A child process that is stopped by pid when dropped.
pub struct Process {
    pub name: String,
    pub child: Child,
}

impl Process {
    pub fn spawn(name: &str, command: &mut Command) -> Self {
        let child = command
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {name}: {error}"));
        Self {
            name: name.to_owned(),
            child,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits up to `limit` for the exit; returns whether it exited.
    pub fn terminate(&mut self, limit: Duration) -> bool {
        signal(self.pid(), libc_sigterm());
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() && !self.terminate(Duration::from_secs(5)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn libc_sigterm() -> &'static str {
    "TERM"
}

/// Sends a signal to one pid with the `kill` command.
pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status();
}

/// Returns a free TCP port on 127.0.0.1; the probing listener is closed before the port is used.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs a command and panics with its output when it fails.
pub fn run(command: &mut Command) -> String {
    let output = command.output().expect("command must start");
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Creates `private.pem` and `public.pem` in `dir` with the commands users run.
pub fn openssl_keys(dir: &Path, bits: u32) -> (PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    run(Command::new("openssl")
        .args(["genrsa", "-out", "private.pem", &bits.to_string()])
        .current_dir(dir)
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
        .current_dir(dir)
        .stderr(Stdio::null()));
    (dir.join("private.pem"), dir.join("public.pem"))
}

/// A gateway as the Server's config lists it.
pub struct GatewaySpec {
    pub id: String,
    pub public_keys: Vec<PathBuf>,
    pub allow: Vec<String>,
    /// Service name and entry port.
    pub services: Vec<(String, u16)>,
}

/// The `runtime.backend` values a test runs the Server and the Agents with.
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    pub server: &'static str,
    pub agent: &'static str,
}

impl Backends {
    pub const IO_URING: Self = Self {
        server: "io_uring",
        agent: "io_uring",
    };
    pub const TOKIO: Self = Self {
        server: "tokio",
        agent: "tokio",
    };
    /// Server and Agent on different backends: the wire protocol must not depend on either.
    pub const MIXED: Self = Self {
        server: "io_uring",
        agent: "tokio",
    };
}

/// Turns each `fn name(backends: Backends)` into a module `name` with one test per
/// backend pairing: `io_uring`, `tokio` and `mixed`.
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[test]
                fn io_uring() {
                    super::$name($crate::common::Backends::IO_URING)
                }
                #[test]
                fn tokio() {
                    super::$name($crate::common::Backends::TOKIO)
                }
                #[test]
                fn mixed() {
                    super::$name($crate::common::Backends::MIXED)
                }
            }
        )*
    };
}

/// A working folder with a PKI, a running Server and any number of Agents.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub agent_port: u16,
    pub backends: Backends,
    /// Start the programs under a seccomp filter that fails `io_uring_setup` with EPERM.
    pub deny_io_uring: bool,
    /// Issue Agent client certificates for this gateway instead of the Agent's own.
    pub certificate_gateway: Option<String>,
    /// Server heartbeat interval and timeout.
    pub server_heartbeat: (&'static str, &'static str),
    /// Agent heartbeat interval and timeout; the Agent's defaults when `None`.
    pub agent_heartbeat: Option<(&'static str, &'static str)>,
    /// Port the Agents dial instead of the Server's, such as a test relay in between.
    pub agent_dial_port: Option<u16>,
    /// Extra top-level lines for the Server config.
    pub server_extra: String,
    /// Shards (sessions) per Agent.
    pub agent_shards: usize,
    /// Host name or address the Agents dial the Server at.
    pub agent_server_host: &'static str,
    /// Extra command-line arguments for the Agents; `{root}` becomes the Agent's folder.
    pub agent_args: Vec<String>,
    pub server: Option<Process>,
    pub agents: Vec<Process>,
}

impl Env {
    /// Creates the folder and the PKI.
    pub fn new(backends: Backends) -> Self {
        raise_fd_limit();
        let dir = tempfile::tempdir().unwrap();
        run(Command::new(SERVER_BIN)
            .args(["pki", "init", "--dir"])
            .arg(dir.path().join("server/pki")));
        Self {
            dir,
            agent_port: free_port(),
            backends,
            deny_io_uring: false,
            certificate_gateway: None,
            server_heartbeat: ("1s", "3s"),
            agent_heartbeat: None,
            agent_dial_port: None,
            server_extra: String::new(),
            agent_shards: 2,
            agent_server_host: "127.0.0.1",
            agent_args: Vec::new(),
            server: None,
            agents: Vec::new(),
        }
    }

    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        if self.deny_io_uring {
            deny_io_uring(&mut command);
        }
        command
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    pub fn server_log(&self) -> PathBuf {
        self.path("server/server.log")
    }

    /// Writes the Server config and starts the Server.
    pub fn start_server(&mut self, gateways: &[GatewaySpec]) {
        let mut yaml = format!(
            "listen: \"127.0.0.1:{}\"\ntls: {{ca: pki/ca.pem, cert: pki/server.pem, key: pki/server.key}}\n\
             runtime: {{shards: 2, backend: {}}}\nheartbeat: {{interval: {}, timeout: {}}}\ndrain_timeout: 5s\n\
             log: {{level: \"info,ipaas_gateway=debug\", file: server.log}}\n{}gateways:\n",
            self.agent_port,
            self.backends.server,
            self.server_heartbeat.0,
            self.server_heartbeat.1,
            self.server_extra
        );
        for gateway in gateways {
            yaml += &format!("  - id: {}\n    public_keys:\n", gateway.id);
            for key in &gateway.public_keys {
                yaml += &format!("      - \"{}\"\n", key.display());
            }
            yaml += "    allow:\n";
            for net in &gateway.allow {
                yaml += &format!("      - \"{net}\"\n");
            }
            yaml += "    services:\n";
            for (name, port) in &gateway.services {
                yaml += &format!("      - {{name: {name}, listen: \"127.0.0.1:{port}\"}}\n");
            }
        }
        std::fs::write(self.path("server/server.yaml"), yaml).unwrap();
        self.spawn_server();
    }

    fn spawn_server(&mut self) {
        let console = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("server/console.log"))
            .unwrap();
        self.server = Some(Process::spawn(
            "ipaas-server",
            self.command(SERVER_BIN)
                .args(["run", "--config", "server.yaml"])
                .current_dir(self.path("server"))
                .stdout(Stdio::null())
                .stderr(console),
        ));
    }

    /// Stops the Server with SIGTERM and starts it again with the same config and registry.
    pub fn restart_server(&mut self) {
        let mut server = self.server.take().expect("the Server runs");
        assert!(
            server.terminate(Duration::from_secs(30)),
            "the Server did not stop on SIGTERM"
        );
        self.spawn_server();
    }

    /// Starts a Server with one gateway `gw`, its public key, one allowlist entry and the
    /// given services (name and entry port).
    pub fn start_gateway(&mut self, public_key: &Path, allow: &str, services: &[(&str, u16)]) {
        self.start_server(&[GatewaySpec {
            id: "gw".into(),
            public_keys: vec![public_key.to_owned()],
            allow: vec![allow.into()],
            services: services
                .iter()
                .map(|(name, port)| (name.to_string(), *port))
                .collect(),
        }]);
    }

    /// Lays out an Agent package named `name`, writes its config and starts the Agent.
    pub fn start_agent(
        &mut self,
        name: &str,
        gateway_id: &str,
        private_key: &Path,
        services: &[(&str, String)],
    ) -> PathBuf {
        let root = self.path(&format!("agents/{name}"));
        std::fs::create_dir_all(root.join("configs/secret")).unwrap();
        run(Command::new(SERVER_BIN)
            .args(["pki", "issue-agent", "--gateway"])
            .arg(self.certificate_gateway.as_deref().unwrap_or(gateway_id))
            .arg("--dir")
            .arg(self.path("server/pki"))
            .arg("--out")
            .arg(root.join("configs/client")));
        std::fs::copy(private_key, root.join("configs/secret/private.pem")).unwrap();

        let mut yaml = format!(
            "server: {{address: \"{}:{}\", tls_name: localhost}}\ngateway_id: {gateway_id}\nagent_name: {name}\n\
             runtime: {{shards: {}, backend: {}}}\nreconnect: {{initial: 200ms, max: 2s}}\nconnect_timeout: 2s\n",
            self.agent_server_host,
            self.agent_dial_port.unwrap_or(self.agent_port),
            self.agent_shards,
            self.backends.agent
        );
        if let Some((interval, timeout)) = self.agent_heartbeat {
            yaml += &format!("heartbeat: {{interval: {interval}, timeout: {timeout}}}\n");
        }
        yaml += "services:\n";
        for (service, target) in services {
            yaml += &format!("  - {{name: {service}, target: \"{target}\"}}\n");
        }
        std::fs::write(root.join("configs/config.yaml"), yaml).unwrap();
        std::fs::write(
            root.join("configs/logger_config.yaml"),
            "level: \"info,ipaas_gateway=debug\"\nfile: log/agent.log\n",
        )
        .unwrap();

        let console = std::fs::File::create(root.join("console.log")).unwrap();
        self.agents.push(Process::spawn(
            "ipaas-agent",
            self.command(AGENT_BIN)
                .arg("--config")
                .arg(root.join("configs/config.yaml"))
                .args(
                    self.agent_args
                        .iter()
                        .map(|arg| arg.replace("{root}", &root.display().to_string())),
                )
                .stdout(Stdio::null())
                .stderr(console),
        ));
        root
    }
}

impl Drop for Env {
    /// Keeps the folder of a failed test, with its configs and logs, and prints its path.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let kept = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap()).keep();
            eprintln!("test files kept in {}", kept.display());
        }
    }
}

/// Reads a log file, or an empty string if it does not exist yet.
pub fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Waits until `path` contains `needle`; panics with the file's content after `limit`.
pub fn wait_for_log(path: &Path, needle: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text = read_log(path);
        if text.contains(needle) {
            return text;
        }
        if Instant::now() > deadline {
            panic!(
                "{} does not contain `{needle}` after {limit:?}:\n{text}",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Counts the lines of `path` that contain `needle`.
pub fn count_in_log(path: &Path, needle: &str) -> usize {
    read_log(path)
        .lines()
        .filter(|line| line.contains(needle))
        .count()
}

/// A TCP service in this test process: each connection is handled on its own thread.
pub struct TestService {
    pub port: u16,
}

impl TestService {
    pub fn start(handler: impl Fn(TcpStream) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let handler = std::sync::Arc::new(handler);
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let handler = std::sync::Arc::clone(&handler);
                std::thread::spawn(move || handler(stream));
            }
        });
        Self { port }
    }

    pub fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// Echoes every byte until EOF, then half-closes.
pub fn echo(mut stream: TcpStream) {
    let mut buffer = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if stream.write_all(&buffer[..n]).is_err() {
                    return;
                }
            }
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
}

/// Connects to an entry port, retrying until the gateway routes it (an Agent is logged in)
/// and a request through `probe` succeeds.
pub fn wait_until_routed(port: u16, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            if stream.write_all(b"ping").is_ok() && stream.shutdown(Shutdown::Write).is_ok() {
                let mut reply = Vec::new();
                if stream.read_to_end(&mut reply).is_ok() && reply == b"ping" {
                    return;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("entry port {port} did not relay to the echo service within {limit:?}");
}

/// Polls `check` every 100 ms until it returns true; panics with `what` after `limit`.
pub fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{what} did not happen within {limit:?}");
}

/// Reports whether a connection to `port` is closed by the far side within `limit`
/// without any byte arriving.
pub fn closed_without_data(port: u16, limit: Duration) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return true;
    };
    stream.set_read_timeout(Some(limit)).unwrap();
    let _ = stream.write_all(b"GET / HTTP/1.0\r\n\r\n");
    let mut buffer = [0u8; 64];
    match stream.read(&mut buffer) {
        Ok(0) => true,
        Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

/// Makes `command` run under a seccomp filter that fails `io_uring_setup` with EPERM, as
/// Docker's default profile does; every other system call is allowed.
pub fn deny_io_uring(command: &mut Command) {
    use std::os::unix::process::CommandExt;

    // Classic BPF over `struct seccomp_data`, whose first field is the system call number.
    const LOAD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JUMP_IF_EQUAL: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RETURN: u16 = 0x06; // BPF_RET | BPF_K
    const RET_ERRNO: u32 = 0x0005_0000;
    const RET_ALLOW: u32 = 0x7fff_0000;

    let filter = [
        libc::sock_filter {
            code: LOAD_NR,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: JUMP_IF_EQUAL,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: RETURN,
            jt: 0,
            jf: 0,
            k: RET_ERRNO | libc::EPERM as u32,
        },
        libc::sock_filter {
            code: RETURN,
            jt: 0,
            jf: 0,
            k: RET_ALLOW,
        },
    ];
    // SAFETY: the closure runs in the child between fork and exec and only calls prctl,
    // which is async-signal-safe; `filter` outlives the call because it is moved in.
    unsafe {
        command.pre_exec(move || {
            let program = libc::sock_fprog {
                len: filter.len() as u16,
                filter: filter.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                || libc::prctl(
                    libc::PR_SET_SECCOMP,
                    libc::SECCOMP_MODE_FILTER,
                    &program as *const _,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Raises this test process's open-file limit to the hard limit: tests that run at the same
/// time (200 echo clients among them) share it.
pub fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// Reads a memory figure in KiB, such as `VmRSS` or `VmHWM`, from `/proc/PID/status`;
/// 0 when the process is gone.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
