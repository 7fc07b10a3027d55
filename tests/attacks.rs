//! Attacks on the Agent handshake with a hand-made client over real TLS: a replayed
//! signature and a signature bound to another TLS session are rejected; the logs of a
//! full run hold no key material.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use ipaas_gateway::keys::PrivateKey;
use ipaas_gateway::protocol::frame::{self, FrameType, RejectReason};
use ipaas_gateway::protocol::handshake::{
    self, Auth, Challenge, Hello, Reject, Welcome, EXPORTER_LABEL, MAX_HANDSHAKE_PAYLOAD,
};
use ipaas_gateway::protocol::PROTOCOL_VERSION;
use ipaas_gateway::tls::TlsFiles;

const LIMIT: Duration = Duration::from_secs(20);

/// A TLS session to the Server's Agent port, driven by hand.
struct RawAgent {
    tls: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    pending: Vec<u8>,
}

/// The Server's response to an Auth message.
#[derive(Debug)]
enum Outcome {
    Welcome,
    Rejected(RejectReason, String),
}

impl RawAgent {
    fn connect(port: u16, client: &Path) -> Self {
        let config: Arc<rustls::ClientConfig> = ipaas_gateway::tls::client_config(&TlsFiles {
            ca: client.join("ca.pem"),
            cert: client.join("client.pem"),
            key: client.join("client.key"),
        })
        .unwrap();
        let connection =
            rustls::ClientConnection::new(config, "localhost".try_into().unwrap()).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        tcp.set_read_timeout(Some(LIMIT)).unwrap();
        Self {
            tls: rustls::StreamOwned::new(connection, tcp),
            pending: Vec::new(),
        }
    }

    fn send(&mut self, bytes: &[u8]) {
        self.tls.write_all(bytes).unwrap();
        self.tls.flush().unwrap();
    }

    /// Reads one handshake frame: (type, payload).
    fn receive(&mut self) -> (frame::FrameHeader, Vec<u8>) {
        loop {
            if let Some((frame, used)) =
                frame::decode(&self.pending, MAX_HANDSHAKE_PAYLOAD).unwrap()
            {
                let result = (frame.header, frame.payload.to_vec());
                self.pending.drain(..used);
                return result;
            }
            let mut chunk = [0u8; 4096];
            let n = self.tls.read(&mut chunk).unwrap();
            assert!(n > 0, "the Server closed the session");
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Sends Hello and returns the Challenge nonce and this session's exporter value.
    fn hello(&mut self) -> ([u8; 32], [u8; 32]) {
        let mut out = Vec::new();
        Hello {
            version: PROTOCOL_VERSION,
            gateway_id: "gw".into(),
            agent_name: "raw".into(),
            instance_id: [7; 16],
        }
        .encode(&mut out);
        self.send(&out);
        let (header, payload) = self.receive();
        assert_eq!(header.kind, FrameType::Challenge);
        let challenge = Challenge::decode(&frame::Frame {
            header,
            payload: &payload,
        })
        .unwrap();
        let mut exporter = [0u8; 32];
        self.tls
            .conn
            .export_keying_material(&mut exporter, EXPORTER_LABEL, None)
            .unwrap();
        (challenge.nonce, exporter)
    }

    fn auth(&mut self, signature: Vec<u8>) -> Outcome {
        let mut out = Vec::new();
        Auth { signature }.encode(&mut out);
        self.send(&out);
        let (header, payload) = self.receive();
        let frame = frame::Frame {
            header,
            payload: &payload,
        };
        match header.kind {
            FrameType::Welcome => {
                Welcome::decode(&frame).unwrap();
                Outcome::Welcome
            }
            FrameType::Reject => {
                let reject = Reject::decode(&frame).unwrap();
                Outcome::Rejected(reject.reason, reject.message)
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn sign(key: &PrivateKey, nonce: &[u8; 32], exporter: &[u8; 32]) -> Vec<u8> {
    key.sign(&handshake::signed_message(nonce, exporter, "gw", "raw"))
}

#[test]
fn replayed_and_foreign_signatures_are_rejected() {
    let mut env = Env::new(Backends::IO_URING);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    env.start_gateway(&public, "127.0.0.1", &[("echo", free_port())]);
    let client = env.path("client");
    run(Command::new(SERVER_BIN)
        .args(["pki", "issue-agent", "--gateway", "gw", "--dir"])
        .arg(env.path("server/pki"))
        .arg("--out")
        .arg(&client));
    let key = PrivateKey::load(&private, 1024).unwrap();
    wait_for("the Agent port", LIMIT, || {
        TcpStream::connect(("127.0.0.1", env.agent_port)).is_ok()
    });

    // A correct signature is accepted, so the rejections below are not harness faults.
    let mut first = RawAgent::connect(env.agent_port, &client);
    let (first_nonce, first_exporter) = first.hello();
    let first_signature = sign(&key, &first_nonce, &first_exporter);
    assert!(matches!(
        first.auth(first_signature.clone()),
        Outcome::Welcome
    ));

    // Replay: the same Auth message on a new session (new nonce, new exporter).
    let mut replay = RawAgent::connect(env.agent_port, &client);
    let (replay_nonce, _) = replay.hello();
    assert_ne!(replay_nonce, first_nonce, "the Server reused a nonce");
    let outcome = replay.auth(first_signature);
    assert!(
        matches!(outcome, Outcome::Rejected(RejectReason::BadSignature, _)),
        "{outcome:?}"
    );

    // Relay: the right nonce, but signed over another TLS session's exporter, as a
    // man in the middle holding two sessions would have to.
    let mut relayed = RawAgent::connect(env.agent_port, &client);
    let (nonce, exporter) = relayed.hello();
    assert_ne!(exporter, first_exporter);
    let outcome = relayed.auth(sign(&key, &nonce, &first_exporter));
    let Outcome::Rejected(reason, message) = outcome else {
        panic!("a signature over another session was accepted");
    };
    assert_eq!(reason, RejectReason::BadSignature);
    assert!(
        message.contains("does not match any public key registered for gateway `gw`"),
        "{message}"
    );
    wait_for_log(&env.server_log(), "rejected_total=2", LIMIT);
}

/// Lines of the base64 body of a PEM file.
fn pem_body_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

#[test]
fn logs_hold_no_key_material() {
    let mut env = Env::new(Backends::TOKIO);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let (other_private, _) = openssl_keys(&env.path("other"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.1", &[("echo", entry)]);
    let good = env.start_agent("good", "gw", &private, &[("echo", service.target())]);
    let bad = env.start_agent("bad", "gw", &other_private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);
    wait_for_log(&bad.join("log/agent.log"), "rejected this Agent", LIMIT);
    for agent in &mut env.agents {
        assert!(agent.terminate(LIMIT));
    }
    assert!(env.server.as_mut().unwrap().terminate(LIMIT));

    let secrets = [
        private.clone(),
        other_private.clone(),
        good.join("configs/client/client.key"),
        env.path("server/pki/server.key"),
        env.path("server/pki/ca.key"),
    ];
    let logs = [
        env.server_log(),
        env.path("server/console.log"),
        good.join("log/agent.log"),
        good.join("console.log"),
        bad.join("log/agent.log"),
        bad.join("console.log"),
    ];
    let text: String = logs.iter().map(|log| read_log(log)).collect();
    assert!(
        text.contains("session established"),
        "the logs are empty: {text}"
    );
    for secret in &secrets {
        for line in pem_body_lines(secret) {
            // Any 24-character piece of the base64 body counts as a leak.
            for start in (0..line.len().saturating_sub(24)).step_by(8) {
                let fragment = &line[start..start + 24];
                assert!(
                    !text.contains(fragment),
                    "{} leaked into the logs",
                    secret.display()
                );
            }
        }
    }
}

#[test]
fn flood_from_one_address_does_not_lock_out_agents() {
    let mut env = Env::new(Backends::IO_URING);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.1", &[("echo", entry)]);
    wait_for("the Agent port", LIMIT, || {
        TcpStream::connect(("127.0.0.1", env.agent_port)).is_ok()
    });

    // 127.0.0.2 opens 1,000 connections as fast as it can and keeps them idle or sends junk.
    let target: std::net::SocketAddr = ([127, 0, 0, 1], env.agent_port).into();
    let mut flood = Vec::new();
    for index in 0..1000 {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket
            .bind(&std::net::SocketAddr::from(([127, 0, 0, 2], 0)).into())
            .unwrap();
        if socket
            .connect_timeout(&target.into(), Duration::from_secs(1))
            .is_err()
        {
            continue;
        }
        let mut stream: TcpStream = socket.into();
        if index % 2 == 0 {
            let _ = stream.write_all(b"\x16\x03\x01 junk that is not a TLS hello");
        }
        flood.push(stream);
    }

    // An Agent from 127.0.0.1 logs in and relays while the flood's connections are open,
    // well before they would time out (handshake_timeout is 10 s).
    let started = std::time::Instant::now();
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "the Agent got in after {:?}",
        started.elapsed()
    );
    wait_for_log(&root.join("log/agent.log"), "session established", LIMIT);
    let log = wait_for_log(
        &env.server_log(),
        "too many new connections from this address",
        LIMIT,
    );
    assert!(log.contains("127.0.0.2"), "{log}");
    drop(flood);
}

/// A flood from a hundred addresses: idle connections, junk and TLS handshakes without a
/// client certificate, at 600 new connections per second. A live stream keeps flowing and a
/// new Agent still logs in. Throughput figures come from `cargo bench --bench flood`.
#[test]
fn flood_from_many_addresses_spares_live_sessions() {
    use common::flood::{Flood, SinkGateway};

    let mut gateway = SinkGateway::start(Backends::IO_URING);
    let stream = gateway.bulk_stream(Duration::from_secs(60));
    let window = Duration::from_secs(2);
    let before = stream.rate(window);
    assert!(before > 0.0, "the live stream does not flow");

    let flood = Flood::start(&gateway.flood(600, Duration::from_secs(60)));
    std::thread::sleep(Duration::from_secs(3));
    let during = stream.rate(window);

    // A new Agent logs in while the flood fills the handshake slots.
    let started = std::time::Instant::now();
    let root = gateway.start_agent("agent-2");
    let agent_log = root.join("log/agent.log");
    wait_for("both shards of the new Agent", LIMIT, || {
        count_in_log(&agent_log, "session established") >= 2
    });
    let login = started.elapsed();
    let counts = flood.stop();
    // Idle connections fill the handshake slots within a few seconds. A Server that then
    // only closes new connections makes the Agent retry for seconds. A Server that closes
    // the oldest idle handshake lets it in at the first or second attempt.
    let failed = count_in_log(&agent_log, "session failed");

    eprintln!(
        "live stream: {:.0} MiB/s before, {:.0} MiB/s during the flood ({:.0}%); \
         new Agent logged in after {login:?} and {failed} failures; flood {counts:?}",
        before / 1048576.0,
        during / 1048576.0,
        during / before * 100.0
    );
    assert!(during > 0.0, "the live stream stalled during the flood");
    assert!(
        failed <= 2,
        "the new Agent failed {failed} times before logging in"
    );
    assert!(
        counts.connected > 1000,
        "the flood made only {} connections",
        counts.connected
    );
    assert!(counts.tls_completed > 0, "no TLS attempt got through");
    let log = read_log(&gateway.env.server_log());
    assert!(
        log.contains("handshake failed"),
        "the Server logged no failed handshake"
    );
}

/// Idle connections from 100 addresses at 400 per second, half of them after sending one
/// byte, against a cap of 16 handshakes per shard: every slot is always taken by a
/// connection younger than a second. The Server closes the oldest one without a whole
/// ClientHello for each new connection, so a new Agent logs in at once.
#[test]
fn idle_flood_cannot_hold_the_handshake_cap() {
    use common::flood::{Flood, FloodKind, SinkGateway};

    let mut gateway = SinkGateway::start_with(Backends::TOKIO, "max_unauthenticated: 16\n");
    let settings = common::flood::FloodSettings {
        kinds: &[FloodKind::Idle, FloodKind::Partial],
        ..gateway.flood(400, Duration::from_secs(60))
    };
    let flood = Flood::start(&settings);
    std::thread::sleep(Duration::from_secs(2));

    let root = gateway.start_agent("agent-2");
    let agent_log = root.join("log/agent.log");
    wait_for("both shards of the new Agent", LIMIT, || {
        count_in_log(&agent_log, "session established") >= 2
    });
    let counts = flood.stop();
    let failed = count_in_log(&agent_log, "session failed");
    let evicted = count_in_log(
        &gateway.env.server_log(),
        "closed the oldest idle or slow one",
    );
    eprintln!("new Agent: {failed} failures; {evicted} idle connections closed; flood {counts:?}");
    assert!(counts.connected > 500, "the flood made only {counts:?}");
    assert!(evicted > 0, "no idle connection was closed to make room");
    assert!(
        failed <= 2,
        "the new Agent failed {failed} times before logging in"
    );
}
