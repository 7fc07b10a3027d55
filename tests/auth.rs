//! End-to-end authentication and access-control tests with real processes on 127.0.0.1:
//! rejected Agents, a refused service name, 1024-bit keys, and the start/stop scripts.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::symlink;
use std::process::Command;
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(20);

on_every_backend!(
    certificate_of_another_gateway_is_rejected,
    wrong_key_is_rejected,
    unknown_gateway_is_rejected,
    address_outside_allowlist_is_rejected,
    service_missing_from_agent_is_reset,
    key_of_1024_bits_works_with_warning,
    start_and_stop_scripts,
    stop_file_drains_like_sigterm,
);

fn wrong_key_is_rejected(backends: Backends) {
    let mut env = Env::new(backends);
    let (_, registered) = openssl_keys(&env.path("registered"), 2048);
    let (other_private, _) = openssl_keys(&env.path("other"), 2048);
    let entry = free_port();
    env.start_gateway(&registered, "127.0.0.0/8", &[("echo", entry)]);
    let root = env.start_agent(
        "agent-1",
        "gw",
        &other_private,
        &[("echo", "127.0.0.1:9".into())],
    );

    let agent_log = wait_for_log(&root.join("log/agent.log"), "rejected this Agent", LIMIT);
    assert!(
        agent_log.contains("is not registered for gateway `gw`"),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("configs/secret/private.pem"),
        "{agent_log}"
    );
    assert!(agent_log.contains("SHA256:"), "{agent_log}");
    let server_log = wait_for_log(&env.server_log(), "Agent rejected", LIMIT);
    assert!(
        server_log.contains("does not match any public key registered for gateway `gw`"),
        "{server_log}"
    );
    assert!(closed_without_data(entry, Duration::from_secs(5)));
}

fn unknown_gateway_is_rejected(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", free_port())]);
    let root = env.start_agent(
        "agent-1",
        "gw-missing",
        &private,
        &[("echo", "127.0.0.1:9".into())],
    );

    let agent_log = wait_for_log(&root.join("log/agent.log"), "rejected this Agent", LIMIT);
    assert!(
        agent_log.contains("check `gateway_id: gw-missing`"),
        "{agent_log}"
    );
    let server_log = wait_for_log(&env.server_log(), "Agent rejected", LIMIT);
    assert!(
        server_log.contains("gateway `gw-missing` is not known"),
        "{server_log}"
    );
}

fn address_outside_allowlist_is_rejected(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    env.start_gateway(&public, "127.0.0.2/32", &[("echo", free_port())]);
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", "127.0.0.1:9".into())]);

    let agent_log = wait_for_log(&root.join("log/agent.log"), "rejected this Agent", LIMIT);
    assert!(
        agent_log
            .contains("source address 127.0.0.1 is not in the Agent IP allowlist of gateway `gw`"),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("add the address this Agent connects from"),
        "{agent_log}"
    );
    let server_log = wait_for_log(&env.server_log(), "Agent rejected", LIMIT);
    assert!(server_log.contains("127.0.0.1"), "{server_log}");
}

fn service_missing_from_agent_is_reset(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let (echo_entry, ghost_entry) = (free_port(), free_port());
    env.start_gateway(
        &public,
        "127.0.0.0/8",
        &[("echo", echo_entry), ("ghost", ghost_entry)],
    );
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(echo_entry, LIMIT);

    let mut stream = TcpStream::connect(("127.0.0.1", ghost_entry)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stream.write_all(b"hello");
    let mut buffer = [0u8; 16];
    let read = stream.read(&mut buffer);
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "entry connection got data: {read:?}"
    );

    let agent_log = wait_for_log(&root.join("log/agent.log"), "not in config.yaml", LIMIT);
    assert!(
        agent_log.contains("service=ghost") || agent_log.contains("service: ghost"),
        "{agent_log}"
    );
    assert!(agent_log.contains("rejected_total=1"), "{agent_log}");
    assert!(
        agent_log.contains("has no such service"),
        "Welcome check missing: {agent_log}"
    );
}

fn key_of_1024_bits_works_with_warning(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 1024);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.1/32", &[("echo", entry)]);
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);

    wait_for_log(&root.join("log/agent.log"), "fewer than 2048 bits", LIMIT);
    wait_for_log(&env.server_log(), "below 2048 bits", LIMIT);
}

/// Opens an echo stream through `entry` and checks one round trip, so that the stream is
/// in flight when the Agent is asked to stop.
fn stream_in_flight(entry: u16) -> TcpStream {
    let mut stream = TcpStream::connect(("127.0.0.1", entry)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(b"before stop").unwrap();
    let mut echoed = [0u8; 11];
    stream.read_exact(&mut echoed).unwrap();
    stream
}

/// Sends more on a stream from [`stream_in_flight`] after the stop request and checks that
/// the echo of it still arrives, which shows the Agent drained the stream.
fn finish_in_flight(mut stream: TcpStream) {
    stream.write_all(b" and after").unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b" and after");
}

fn start_and_stop_scripts(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", entry)]);

    // Lay out a package, then stop the directly started Agent so that start.sh runs the only one.
    let root = env.start_agent("package", "gw", &private, &[("echo", service.target())]);
    let mut direct = env.agents.pop().unwrap();
    assert!(direct.terminate(Duration::from_secs(10)));
    std::fs::create_dir_all(root.join("bin/Linux")).unwrap();
    symlink(AGENT_BIN, root.join("bin/Linux/ipaas-agent")).unwrap();
    let scripts = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts");
    std::fs::create_dir_all(root.join("scripts")).unwrap();
    run(Command::new("cp")
        .arg("-r")
        .arg(scripts.join("linux"))
        .arg(root.join("scripts/")));

    let started = run(&mut Command::new(root.join("scripts/linux/start.sh")));
    assert!(started.contains("Agent started"), "{started}");
    let pid_file = root.join("log/agent.pid");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_until_routed(entry, LIMIT);

    // A second start refuses while the first runs.
    let second = Command::new(root.join("scripts/linux/start.sh"))
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));

    // A stream in flight when stop.sh runs still completes (drain).
    let stream = stream_in_flight(entry);

    let stop = std::thread::spawn({
        let script = root.join("scripts/linux/stop.sh");
        move || run(&mut Command::new(script))
    });
    std::thread::sleep(Duration::from_millis(300));
    finish_in_flight(stream);

    let stopped = stop.join().unwrap();
    assert!(stopped.contains("Agent stopped"), "{stopped}");
    assert!(!pid_file.exists());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent {pid} still running"
    );
    let stopped_again = run(&mut Command::new(root.join("scripts/linux/stop.sh")));
    assert!(stopped_again.contains("not running"), "{stopped_again}");
}

fn certificate_of_another_gateway_is_rejected(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", free_port())]);
    env.certificate_gateway = Some("gw-other".into());
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", "127.0.0.1:9".into())]);

    let agent_log = wait_for_log(&root.join("log/agent.log"), "rejected this Agent", LIMIT);
    assert!(
        agent_log.contains("issued for gateway `gw-other`, not `gw`"),
        "{agent_log}"
    );
    assert!(
        agent_log.contains("configs/client/ folder of the Agent package"),
        "{agent_log}"
    );
    let server_log = wait_for_log(&env.server_log(), "Agent rejected", LIMIT);
    assert!(
        server_log.contains("issued for gateway `gw-other`"),
        "{server_log}"
    );
}

/// `--stop-file`, which `stop.bat` relies on: creating the file drains an open stream and
/// stops the Agent as SIGTERM does. A stop file left from an earlier run is removed at start.
fn stop_file_drains_like_sigterm(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", entry)]);
    let root = env.path("agents/agent-1");
    let stop_file = root.join("log/agent.stop");
    std::fs::create_dir_all(root.join("log")).unwrap();
    std::fs::write(&stop_file, "").unwrap();
    env.agent_args = vec!["--stop-file".into(), "{root}/log/agent.stop".into()];
    env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);
    let log = root.join("log/agent.log");
    assert!(read_log(&log).contains("removed a stop file left from an earlier run"));

    let stream = stream_in_flight(entry);

    std::fs::write(&stop_file, "").unwrap();
    wait_for_log(&log, "stop file found; draining sessions", LIMIT);
    finish_in_flight(stream);

    let agent = &mut env.agents[0];
    wait_for("the Agent to exit", LIMIT, || !agent.is_running());
    let status = agent.child.wait().unwrap();
    assert!(status.success(), "the Agent exited with {status}");
    assert!(!stop_file.exists(), "the Agent left its stop file behind");
}
