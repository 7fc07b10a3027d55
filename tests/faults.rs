//! Faults between and around the two programs: a link that goes silent without closing, an
//! Agent that logs in again while its old session still looks alive, and several Agents
//! serving one gateway when one of them dies.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const LIMIT: Duration = Duration::from_secs(30);

on_every_backend!(
    silent_link_is_detected_by_both_sides,
    relogin_replaces_the_old_session,
    streams_spread_over_agents_and_survive_one_dying,
    slow_consumer_keeps_memory_bounded,
    unreachable_target_closes_entry_promptly,
    no_leaks_after_streams_and_reconnects,
    server_restart_brings_agents_back,
);

/// A TCP relay in the test process. `cut` turns every connection open at that moment into
/// a black hole: bytes are read and dropped in both directions, and nothing is closed.
/// Connections made later are relayed normally.
struct Blackhole {
    port: u16,
    generation: Arc<AtomicUsize>,
    open: Arc<std::sync::Mutex<Vec<TcpStream>>>,
}

impl Blackhole {
    fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let generation = Arc::new(AtomicUsize::new(0));
        let shared = Arc::clone(&generation);
        let open = Arc::new(std::sync::Mutex::new(Vec::new()));
        let registered = Arc::clone(&open);
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                registered.lock().unwrap().push(client.try_clone().unwrap());
                let born = shared.load(Ordering::SeqCst);
                for (from, to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    let generation = Arc::clone(&shared);
                    std::thread::spawn(move || pump(from, to, born, &generation));
                }
            }
        });
        Self {
            port,
            generation,
            open,
        }
    }

    fn cut(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Closes every relayed connection, which makes the Agent reconnect.
    fn drop_all(&self) {
        for stream in self.open.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }
}

/// Copies `from` to `to` until EOF; after a cut, reads and drops instead (bounded to 10
/// minutes so that the thread ends by itself).
fn pump(mut from: TcpStream, mut to: TcpStream, born: usize, generation: &AtomicUsize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut buffer = [0u8; 16 * 1024];
    from.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    while Instant::now() < deadline {
        let n = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(_) => break,
        };
        if generation.load(Ordering::SeqCst) != born {
            continue;
        }
        if to.write_all(&buffer[..n]).is_err() {
            break;
        }
    }
    if generation.load(Ordering::SeqCst) == born {
        let _ = to.shutdown(Shutdown::Write);
    }
}

/// Waits until the Server has logged `count` established Agent sessions, so that no
/// handshake is still running when a test cuts the link.
fn wait_for_sessions(env: &Env, count: usize) {
    wait_for("the Agent sessions", LIMIT, || {
        count_in_log(&env.server_log(), "Agent session established") >= count
    });
}

/// Starts a Server with gateway `gw` and an echo service; returns the env, the entry port
/// and the private key.
fn echo_gateway(
    backends: Backends,
    env_setup: impl FnOnce(&mut Env),
) -> (Env, u16, std::path::PathBuf, TestService) {
    let mut env = Env::new(backends);
    env_setup(&mut env);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", entry)]);
    (env, entry, private, service)
}

fn silent_link_is_detected_by_both_sides(backends: Backends) {
    let (mut env, entry, private, service) = echo_gateway(backends, |env| {
        env.server_heartbeat = ("1s", "3s");
        env.agent_heartbeat = Some(("1s", "3s"));
    });
    let relay = Blackhole::start(env.agent_port);
    env.agent_dial_port = Some(relay.port);
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);
    wait_for_sessions(&env, 2);

    // An entry client in the middle of a stream when the link goes silent.
    let mut client = TcpStream::connect(("127.0.0.1", entry)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    client.write_all(b"before").unwrap();
    let mut echoed = [0u8; 6];
    client.read_exact(&mut echoed).unwrap();

    let cut_at = Instant::now();
    relay.cut();
    wait_for_log(&env.server_log(), "end=HeartbeatTimeout", LIMIT);
    wait_for_log(&root.join("log/agent.log"), "end=HeartbeatTimeout", LIMIT);
    let detected = cut_at.elapsed();
    assert!(
        detected < Duration::from_secs(10),
        "detection took {detected:?}"
    );

    // The client of the dead session is closed, not left hanging.
    let mut rest = [0u8; 16];
    let read = client.read(&mut rest);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|error| error.kind() == std::io::ErrorKind::ConnectionReset),
        "{read:?}"
    );

    // The Agent reconnects through the relay and serves traffic again.
    wait_until_routed(entry, LIMIT);
}

fn relogin_replaces_the_old_session(backends: Backends) {
    // The Server would notice the dead link only after 60 s; the Agent after 3 s.
    let (mut env, entry, private, service) = echo_gateway(backends, |env| {
        env.server_heartbeat = ("20s", "60s");
        env.agent_heartbeat = Some(("1s", "3s"));
    });
    let relay = Blackhole::start(env.agent_port);
    env.agent_dial_port = Some(relay.port);
    env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);
    wait_for_sessions(&env, 2);

    relay.cut();
    let log = wait_for_log(
        &env.server_log(),
        "the Agent logged in again; closing its old session",
        LIMIT,
    );
    // Both shards of the Agent replaced their sessions, and nothing else was replaced.
    wait_for("both old sessions replaced", LIMIT, || {
        count_in_log(&env.server_log(), "closing its old session") >= 2
    });
    assert!(
        !log.contains("end=HeartbeatTimeout"),
        "the Server waited for its own timeout: {log}"
    );

    // Every entry connection now reaches a live session.
    for _ in 0..20 {
        wait_until_routed(entry, Duration::from_secs(5));
    }
}

fn answer_a(mut stream: TcpStream) {
    let _ = stream.write_all(b"A");
}

fn answer_b(mut stream: TcpStream) {
    let _ = stream.write_all(b"B");
}

fn ask(entry: u16) -> Option<u8> {
    let mut stream = TcpStream::connect(("127.0.0.1", entry)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).ok()?;
    Some(answer[0])
}

fn streams_spread_over_agents_and_survive_one_dying(backends: Backends) {
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let (service_a, service_b) = (TestService::start(answer_a), TestService::start(answer_b));
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.0/8", &[("who", entry)]);
    env.start_agent("agent-a", "gw", &private, &[("who", service_a.target())]);
    env.start_agent("agent-b", "gw", &private, &[("who", service_b.target())]);
    wait_for("sessions of both Agents", LIMIT, || {
        count_in_log(&env.server_log(), "Agent session established") >= 4
    });

    let answers: Vec<Option<u8>> = (0..60).map(|_| ask(entry)).collect();
    assert!(answers.iter().all(Option::is_some), "{answers:?}");
    let from_a = answers
        .iter()
        .filter(|answer| **answer == Some(b'A'))
        .count();
    assert!(
        from_a > 0 && from_a < 60,
        "{from_a} of 60 streams went to Agent A"
    );

    // Agent A dies; once the Server has seen its sessions end, every stream goes to B.
    env.agents[0].child.kill().unwrap();
    wait_for("the Server to notice", LIMIT, || {
        count_in_log(&env.server_log(), "agent.name=agent-a") > 0
            && read_log(&env.server_log())
                .lines()
                .filter(|line| {
                    line.contains("agent.name=agent-a")
                        && (line.contains("session ended") || line.contains("session failed"))
                })
                .count()
                >= 2
    });
    for attempt in 0..40 {
        assert_eq!(
            ask(entry),
            Some(b'B'),
            "stream {attempt} after Agent A died"
        );
    }
}

/// Reads `/proc/PID/status` VmRSS in KiB.
fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS")
}

/// Reads slowly from a producer that pushes as fast as it can, for `seconds`, and returns
/// the largest RSS growth of Server and Agent in KiB.
fn slow_reader_growth(env: &mut Env, mut reader: TcpStream, seconds: u64) -> (u64, u64) {
    let server = env.server.as_ref().unwrap().pid();
    let agent = env.agents[0].pid();
    let (server_base, agent_base) = (rss_kib(server), rss_kib(agent));
    let (mut server_peak, mut agent_peak) = (server_base, agent_base);
    reader
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buffer = vec![0u8; 100 * 1024];
    let mut total = 0usize;
    // 1 MiB/s: ten reads of 100 KiB per second.
    for _ in 0..seconds * 10 {
        total += reader.read(&mut buffer).unwrap();
        std::thread::sleep(Duration::from_millis(100));
        server_peak = server_peak.max(rss_kib(server));
        agent_peak = agent_peak.max(rss_kib(agent));
    }
    assert!(total > 0, "nothing arrived");
    (server_peak - server_base, agent_peak - agent_base)
}

/// Reads at 1 MiB/s whatever the peer sends.
fn slow_sink(mut stream: TcpStream) {
    let mut buffer = vec![0u8; 100 * 1024];
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => return,
            Ok(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// Memory either process may add while a producer outruns a slow reader: the stream
/// window (256 KiB) and session window (16 MiB) bound what is buffered; the rest is
/// allowance for buffers and allocator slack. Without flow control a 1 GiB producer
/// would add hundreds of MiB.
const FLOW_CONTROL_BOUND_KIB: u64 = 48 * 1024;

fn slow_consumer_keeps_memory_bounded(backends: Backends) {
    // Download direction: private service pushes, entry client reads slowly.
    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let (producer, sink) = (
        TestService::start(endless_gigabyte),
        TestService::start(slow_sink),
    );
    let (down, up) = (free_port(), free_port());
    env.start_gateway(&public, "127.0.0.0/8", &[("down", down), ("up", up)]);
    env.start_agent(
        "agent-1",
        "gw",
        &private,
        &[("down", producer.target()), ("up", sink.target())],
    );
    wait_for("the gateway to route", LIMIT, || {
        TcpStream::connect(("127.0.0.1", down)).is_ok_and(|mut stream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(2)))
                .unwrap();
            stream.read(&mut [0u8; 1]).is_ok_and(|n| n == 1)
        })
    });

    let reader = TcpStream::connect(("127.0.0.1", down)).unwrap();
    let (server_growth, agent_growth) = slow_reader_growth(&mut env, reader, 6);
    assert!(
        server_growth < FLOW_CONTROL_BOUND_KIB,
        "Server grew by {server_growth} KiB"
    );
    assert!(
        agent_growth < FLOW_CONTROL_BOUND_KIB,
        "Agent grew by {agent_growth} KiB"
    );

    // Upload direction: the entry client pushes 1 GiB, the private service reads slowly.
    let server = env.server.as_ref().unwrap().pid();
    let agent = env.agents[0].pid();
    let (server_base, agent_base) = (rss_kib(server), rss_kib(agent));
    let mut writer = TcpStream::connect(("127.0.0.1", up)).unwrap();
    writer
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let chunk = vec![0xa5u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(6);
    let (mut server_peak, mut agent_peak, mut sent) = (server_base, agent_base, 0usize);
    while Instant::now() < deadline && sent < 1 << 30 {
        if let Ok(n) = writer.write(&chunk) {
            sent += n;
        }
        server_peak = server_peak.max(rss_kib(server));
        agent_peak = agent_peak.max(rss_kib(agent));
    }
    assert!(sent > 0);
    assert!(
        sent < 1 << 30,
        "the whole GiB went through a 1 MiB/s reader"
    );
    assert!(
        server_peak - server_base < FLOW_CONTROL_BOUND_KIB,
        "Server grew by {} KiB",
        server_peak - server_base
    );
    assert!(
        agent_peak - agent_base < FLOW_CONTROL_BOUND_KIB,
        "Agent grew by {} KiB",
        agent_peak - agent_base
    );
}

/// Sends up to 1 GiB as fast as the reader allows.
fn endless_gigabyte(mut stream: TcpStream) {
    let chunk = vec![0x3cu8; 64 * 1024];
    for _ in 0..16_384 {
        if stream.write_all(&chunk).is_err() {
            return;
        }
    }
}

fn unreachable_target_closes_entry_promptly(backends: Backends) {
    // One target refuses (nothing listens); the other never answers the SYN because its
    // accept queue is full.
    let refused = free_port();
    let full = TcpListener::bind("127.0.0.1:0").unwrap();
    let full_port = full.local_addr().unwrap().port();
    let mut queued = Vec::new();
    for _ in 0..512 {
        match TcpStream::connect_timeout(
            &format!("127.0.0.1:{full_port}").parse().unwrap(),
            Duration::from_millis(200),
        ) {
            Ok(stream) => queued.push(stream),
            Err(_) => break,
        }
    }

    let mut env = Env::new(backends);
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let (echo_entry, refused_entry, silent_entry) = (free_port(), free_port(), free_port());
    env.start_gateway(
        &public,
        "127.0.0.0/8",
        &[
            ("echo", echo_entry),
            ("refused", refused_entry),
            ("silent", silent_entry),
        ],
    );
    let root = env.start_agent(
        "agent-1",
        "gw",
        &private,
        &[
            ("echo", service.target()),
            ("refused", format!("127.0.0.1:{refused}")),
            ("silent", format!("127.0.0.1:{full_port}")),
        ],
    );
    wait_until_routed(echo_entry, LIMIT);

    // connect_timeout is 2 s in the test config.
    for (entry, limit) in [
        (refused_entry, Duration::from_secs(2)),
        (silent_entry, Duration::from_secs(5)),
    ] {
        let started = Instant::now();
        assert!(
            closed_without_data(entry, limit + Duration::from_secs(1)),
            "entry {entry} stayed open"
        );
        assert!(
            started.elapsed() < limit + Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
    }
    let log = wait_for_log(
        &root.join("log/agent.log"),
        &format!("target=127.0.0.1:{refused}"),
        LIMIT,
    );
    assert!(
        log.contains("cannot connect to the private service"),
        "{log}"
    );
    let log = wait_for_log(&root.join("log/agent.log"), "connect timed out", LIMIT);
    assert!(
        log.contains(&format!("target=127.0.0.1:{full_port}")),
        "{log}"
    );
    drop(queued);
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |entries| entries.count())
}

/// Sockets of `pid` in CLOSE_WAIT, from `ss`.
fn close_wait(pid: u32) -> usize {
    let output = Command::new("ss")
        .args(["-tanp", "state", "close-wait"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .count()
}

/// Short echo streams from four client threads.
fn short_streams(entry: u16, count: usize) {
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..count / 4 {
                    let mut stream = TcpStream::connect(("127.0.0.1", entry)).unwrap();
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .unwrap();
                    stream.write_all(b"x").unwrap();
                    let mut reply = [0u8; 1];
                    stream.read_exact(&mut reply).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

/// Set `IPAAS_SOAK=1` for the full run: 10,000 streams and 100 reconnects.
fn no_leaks_after_streams_and_reconnects(backends: Backends) {
    let soak = std::env::var_os("IPAAS_SOAK").is_some();
    let (streams, reconnects) = if soak { (10_000, 100) } else { (2_000, 10) };

    let (mut env, entry, private, service) = echo_gateway(backends, |_| {});
    let relay = Blackhole::start(env.agent_port);
    env.agent_dial_port = Some(relay.port);
    env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);
    wait_for_sessions(&env, 2);
    short_streams(entry, 200);
    std::thread::sleep(Duration::from_millis(500));

    let (server, agent) = (env.server.as_ref().unwrap().pid(), env.agents[0].pid());
    let fds_before = (open_fds(server), open_fds(agent));
    let rss_before = (rss_kib(server), rss_kib(agent));

    short_streams(entry, streams);
    for _ in 0..reconnects {
        relay.drop_all();
        wait_until_routed(entry, LIMIT);
    }
    // Both Agent shards must be back before counting their sockets.
    std::thread::sleep(Duration::from_secs(2));
    short_streams(entry, 200);

    wait_for("descriptors back to the baseline", LIMIT, || {
        open_fds(server) <= fds_before.0 + 2 && open_fds(agent) <= fds_before.1 + 2
    });
    let rss_after = (rss_kib(server), rss_kib(agent));
    assert!(
        rss_after.0 < rss_before.0 + 16 * 1024,
        "Server RSS {rss_before:?} -> {rss_after:?}"
    );
    assert!(
        rss_after.1 < rss_before.1 + 16 * 1024,
        "Agent RSS {rss_before:?} -> {rss_after:?}"
    );
    // Streams still closing show CLOSE_WAIT for a moment; a leaked one stays.
    wait_for("no socket in CLOSE_WAIT", LIMIT, || {
        close_wait(server) == 0 && close_wait(agent) == 0
    });
}

fn server_restart_brings_agents_back(backends: Backends) {
    let (mut env, entry, private, service) = echo_gateway(backends, |_| {});
    env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    env.start_agent("agent-2", "gw", &private, &[("echo", service.target())]);
    wait_for("four sessions", LIMIT, || {
        count_in_log(&env.server_log(), "Agent session established") >= 4
    });

    let restarted = Instant::now();
    env.restart_server();
    // Two Agents with two shards each: four sessions before, four more after.
    wait_for("every Agent session back", LIMIT, || {
        count_in_log(&env.server_log(), "Agent session established") >= 8
    });
    wait_until_routed(entry, LIMIT);
    let recovery = restarted.elapsed();
    // The Agents' backoff starts at 200 ms and is capped at 2 s in the test config.
    assert!(
        recovery < Duration::from_secs(10),
        "recovery took {recovery:?}"
    );
    eprintln!("Server restart: every Agent session back after {recovery:?}");
}
