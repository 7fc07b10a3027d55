//! End-to-end relay tests: real Server and Agent processes, real TLS, and real services
//! (curl against python's HTTP server, redis-server with redis-cli and redis-benchmark, and
//! TCP services in the test process), all on 127.0.0.1.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use sha2::{Digest, Sha256};

on_every_backend!(
    http_64_mib_download_is_byte_exact,
    redis_keep_alive_and_new_connections,
    half_close_still_gets_the_reply,
    two_hundred_concurrent_echo_streams,
    lost_agent_resets_entry_connection,
    sessions_spread_over_server_shards,
    names_resolve_for_server_and_targets,
);

const STARTUP: Duration = Duration::from_secs(20);

/// Starts a Server with one gateway `gw` and an Agent serving `services`; returns the env
/// and the entry port of each service, in order.
fn gateway_with(backends: Backends, services: &[(&str, String)]) -> (Env, Vec<u16>) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let ports: Vec<u16> = services.iter().map(|_| free_port()).collect();
    env.start_server(&[GatewaySpec {
        id: "gw".into(),
        public_keys: vec![public],
        allow: vec!["127.0.0.0/8".into()],
        services: services
            .iter()
            .zip(&ports)
            .map(|((name, _), port)| (name.to_string(), *port))
            .collect(),
    }]);
    env.start_agent("agent-1", "gw", &private, services);
    (env, ports)
}

fn http_64_mib_download_is_byte_exact(backends: Backends) {
    let www = tempfile::tempdir().unwrap();
    let mut content = vec![0u8; 64 * 1024 * 1024];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in content.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    std::fs::write(www.path().join("big.bin"), &content).unwrap();
    let expected = Sha256::digest(&content);

    let http_port = free_port();
    let _http = Process::spawn(
        "http.server",
        Command::new("python3")
            .args([
                "-m",
                "http.server",
                &http_port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .current_dir(www.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let (env, ports) = gateway_with(backends, &[("web", format!("127.0.0.1:{http_port}"))]);
    let url = format!("http://127.0.0.1:{}/big.bin", ports[0]);
    let output = env.path("download.bin");

    wait_for("a curl through the gateway", STARTUP, || {
        Command::new("curl")
            .args(["-sSf", "--max-time", "60", "-o"])
            .arg(&output)
            .arg(&url)
            .status()
            .is_ok_and(|status| status.success())
    });
    let downloaded = std::fs::read(&output).unwrap();
    assert_eq!(downloaded.len(), content.len());
    assert_eq!(Sha256::digest(&downloaded), expected);
}

fn start_redis() -> (Process, u16) {
    let port = free_port();
    let process = Process::spawn(
        "redis-server",
        Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null()),
    );
    wait_for("redis-server accepting", Duration::from_secs(10), || {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    (process, port)
}

/// Sends RESP commands on `stream` and returns the raw replies once `replies` lines arrived.
fn redis_roundtrip(stream: &mut TcpStream, commands: &str, replies: usize) -> String {
    stream.write_all(commands.as_bytes()).unwrap();
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while received.iter().filter(|&&byte| byte == b'\n').count() < replies {
        let n = stream.read(&mut buffer).unwrap();
        assert!(
            n > 0,
            "connection closed after {:?}",
            String::from_utf8_lossy(&received)
        );
        received.extend_from_slice(&buffer[..n]);
    }
    String::from_utf8(received).unwrap()
}

fn resp(args: &[&str]) -> String {
    let mut command = format!("*{}\r\n", args.len());
    for arg in args {
        command += &format!("${}\r\n{arg}\r\n", arg.len());
    }
    command
}

fn redis_keep_alive_and_new_connections(backends: Backends) {
    let (_redis, redis_port) = start_redis();
    let (_env, ports) = gateway_with(backends, &[("redis", format!("127.0.0.1:{redis_port}"))]);
    let entry = ports[0];
    wait_for("a redis PING through the gateway", STARTUP, || {
        Command::new("redis-cli")
            .args(["-p", &entry.to_string(), "PING"])
            .output()
            .is_ok_and(|output| output.stdout.starts_with(b"PONG"))
    });

    // Keep-alive: 500 pipelined SET/GET pairs on one connection, every answer checked.
    let mut stream = TcpStream::connect(("127.0.0.1", entry)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut commands = String::new();
    for i in 0..500 {
        commands += &resp(&["SET", &format!("key:{i}"), &format!("value-{i}")]);
        commands += &resp(&["GET", &format!("key:{i}")]);
    }
    let replies = redis_roundtrip(&mut stream, &commands, 1500);
    let mut expected = String::new();
    for i in 0..500 {
        let value = format!("value-{i}");
        expected += &format!("+OK\r\n${}\r\n{value}\r\n", value.len());
    }
    assert_eq!(replies, expected);
    drop(stream);

    // A new connection per request.
    for i in 0..100 {
        let mut stream = TcpStream::connect(("127.0.0.1", entry)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let reply = redis_roundtrip(&mut stream, &resp(&["GET", &format!("key:{i}")]), 2);
        let value = format!("value-{i}");
        assert_eq!(reply, format!("${}\r\n{value}\r\n", value.len()));
    }

    // redis-benchmark with and without keep-alive; it exits non-zero on connection errors.
    for keep_alive in ["1", "0"] {
        let output = Command::new("redis-benchmark")
            .args([
                "-p",
                &entry.to_string(),
                "-n",
                "2000",
                "-c",
                "20",
                "-t",
                "set,get",
                "-q",
                "-k",
                keep_alive,
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "redis-benchmark -k {keep_alive}: {text}"
        );
        assert_eq!(text.matches("requests per second").count(), 2, "{text}");
    }
}

/// Reads the whole request until EOF, then answers with its length and SHA-256.
fn digest_after_eof(mut stream: TcpStream) {
    let mut request = Vec::new();
    if stream.read_to_end(&mut request).is_err() {
        return;
    }
    let reply = format!("{} {:x}\n", request.len(), Sha256::digest(&request));
    let _ = stream.write_all(reply.as_bytes());
}

fn half_close_still_gets_the_reply(backends: Backends) {
    let service = TestService::start(digest_after_eof);
    let (_env, ports) = gateway_with(backends, &[("digest", service.target())]);
    let request: Vec<u8> = (0..1024 * 1024).map(|i| (i % 251) as u8).collect();
    let expected = format!("{} {:x}\n", request.len(), Sha256::digest(&request));

    let mut reply = String::new();
    wait_for("a reply after half-close", STARTUP, || {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", ports[0])) else {
            return false;
        };
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        // Before the Agent logs in, the Server closes entry connections at once.
        if stream.write_all(&request).is_err() || stream.shutdown(Shutdown::Write).is_err() {
            return false;
        }
        reply.clear();
        stream.read_to_string(&mut reply).is_ok() && !reply.is_empty()
    });
    assert_eq!(reply, expected);
}

fn two_hundred_concurrent_echo_streams(backends: Backends) {
    let service = TestService::start(echo);
    let (_env, ports) = gateway_with(backends, &[("echo", service.target())]);
    let entry = ports[0];
    wait_until_routed(entry, STARTUP);

    let clients: Vec<_> = (0..200u32)
        .map(|client| {
            std::thread::spawn(move || {
                let payload: Vec<u8> = (0..1024 * 1024u32)
                    .map(|i| (i.wrapping_mul(31) ^ client) as u8)
                    .collect();
                let mut stream = TcpStream::connect(("127.0.0.1", entry)).unwrap();
                stream
                    .set_read_timeout(Some(Duration::from_secs(60)))
                    .unwrap();
                let mut writer = stream.try_clone().unwrap();
                let sent = payload.clone();
                let send = std::thread::spawn(move || {
                    writer.write_all(&sent).unwrap();
                    writer.shutdown(Shutdown::Write).unwrap();
                });
                let mut echoed = Vec::with_capacity(payload.len());
                stream.read_to_end(&mut echoed).unwrap();
                send.join().unwrap();
                echoed == payload
            })
        })
        .collect();
    let exact = clients
        .into_iter()
        .map(|client| client.join())
        .filter(|result| matches!(result, Ok(true)))
        .count();
    assert_eq!(exact, 200);
}

/// Sends a bounded endless stream (at most 4 GiB) until the reader goes away.
fn endless(mut stream: TcpStream) {
    let chunk = [0x5au8; 64 * 1024];
    for _ in 0..65_536 {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
}

fn lost_agent_resets_entry_connection(backends: Backends) {
    let service = TestService::start(endless);
    let (mut env, ports) = gateway_with(backends, &[("endless", service.target())]);
    let mut stream = None;
    wait_for("data through the gateway", STARTUP, || {
        let Ok(mut candidate) = TcpStream::connect(("127.0.0.1", ports[0])) else {
            return false;
        };
        candidate
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut first = [0u8; 1024];
        let ok = candidate.read_exact(&mut first).is_ok();
        stream = ok.then_some(candidate);
        ok
    });
    let mut stream = stream.unwrap();

    // The Agent dies mid-transfer: the entry client must see a reset, not a clean end.
    env.agents[0].child.kill().unwrap();
    let mut buffer = vec![0u8; 64 * 1024];
    let outcome = loop {
        match stream.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(_) => continue,
            Err(error) => break Err(error.kind()),
        }
    };
    assert_eq!(outcome, Err(std::io::ErrorKind::ConnectionReset));
}

/// Checks that the 16 sessions of a 16-shard Agent run 8 on each of the Server's 2 shards,
/// whichever shard accepted them, and that streams relay over sessions on both.
fn sessions_spread_over_server_shards(backends: Backends) {
    let mut env = Env::new(backends);
    env.agent_shards = 16;
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", entry)]);
    env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    let log = env.server_log();
    wait_for("16 Agent sessions", STARTUP, || {
        count_in_log(&log, "Agent session established") >= 16
    });

    // The session span sits inside the `agent` span, which names the shard running it.
    let established: Vec<String> = read_log(&log)
        .lines()
        .filter(|line| line.contains("Agent session established"))
        .map(str::to_owned)
        .collect();
    for shard in 0..2 {
        let running = established
            .iter()
            .filter(|line| line.contains(&format!("shard={shard}}}")))
            .count();
        assert_eq!(running, 8, "shard {shard}:\n{}", established.join("\n"));
    }

    // Each stream runs on the shard that accepted its entry connection, with one of that
    // shard's own sessions.
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", entry)).unwrap();
        stream.write_all(b"spread").unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply, b"spread");
    }
    assert_eq!(
        count_in_log(&log, "no Agent of this gateway is connected"),
        0,
        "an entry connection found no session"
    );
}

/// Checks that the Agent dials the Server and a private target by DNS name (`localhost`,
/// from the hosts file), with the lookups on their own threads.
fn names_resolve_for_server_and_targets(backends: Backends) {
    let mut env = Env::new(backends);
    env.agent_server_host = "localhost";
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", entry)]);
    env.start_agent(
        "agent-1",
        "gw",
        &private,
        &[("echo", format!("localhost:{}", service.port))],
    );
    wait_until_routed(entry, STARTUP);
}
