//! The Server's Prometheus metrics, scraped with curl from the admin API while real
//! Agents relay streams and one Agent with an unregistered key is rejected.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::process::Command;
use std::time::Duration;

use common::*;

const TOKEN: &str = "metrics-test-admin-token";
const LIMIT: Duration = Duration::from_secs(30);

/// Runs curl against the admin API and returns its exit status and body.
fn curl(admin_port: u16, path: &str, token: Option<&str>) -> (bool, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "-f", "--max-time", "10"]);
    if let Some(token) = token {
        command.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    let output = command
        .arg(format!("http://127.0.0.1:{admin_port}{path}"))
        .output()
        .expect("curl is installed");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

/// Returns the value of the sample `name` (with its labels, if any) in `text`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample `{name}` in:\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn metrics_count_sessions_streams_and_bytes() {
    let mut env = Env::new(Backends::MIXED);
    let admin_port = free_port();
    env.server_extra = format!("admin: {{listen: \"127.0.0.1:{admin_port}\", token: {TOKEN}}}\n");
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let (unregistered, _) = openssl_keys(&env.path("other"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.0/8", &[("echo", entry)]);
    env.start_agent("good", "gw", &private, &[("echo", service.target())]);
    let bad = env.start_agent("bad", "gw", &unregistered, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);
    wait_for_log(&bad.join("log/agent.log"), "rejected this Agent", LIMIT);
    // The rejected Agent keeps retrying; stop it so that no handshake is left in progress.
    assert!(env.agents[1].terminate(LIMIT));

    let (refused, _) = curl(admin_port, "/metrics", None);
    assert!(!refused, "metrics were served without the token");

    let (_, before) = curl(admin_port, "/metrics", Some(TOKEN));
    let streams_before = sample(&before, "ipaas_server_streams_total");
    let received_before = sample(&before, "ipaas_server_entry_received_bytes_total");
    let payload = vec![b'm'; 100_000];
    for _ in 0..5 {
        let mut stream = TcpStream::connect(("127.0.0.1", entry)).unwrap();
        stream.write_all(&payload).unwrap();
        stream.shutdown(Shutdown::Write).unwrap();
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply).unwrap();
        assert_eq!(reply.len(), payload.len());
    }

    // A stream's bytes are counted when it ends, just after the client sees its end.
    let mut after = String::new();
    wait_for("the byte counters", LIMIT, || {
        let (ok, text) = curl(admin_port, "/metrics", Some(TOKEN));
        after = text;
        ok && sample(&after, "ipaas_server_entry_sent_bytes_total") >= 500_000.0
    });
    assert!(after.ends_with("# EOF\n"), "not OpenMetrics text:\n{after}");
    assert_eq!(
        sample(&after, "ipaas_server_streams_total") - streams_before,
        5.0
    );
    assert_eq!(
        sample(&after, "ipaas_server_entry_received_bytes_total") - received_before,
        500_000.0
    );
    assert_eq!(
        sample(&after, "ipaas_server_live_sessions{gateway=\"gw\"}"),
        2.0
    );
    assert!(sample(&after, "ipaas_server_rejections_total") >= 1.0);
    assert!(sample(&after, "ipaas_server_handshake_seconds_count") >= 2.0);
    wait_for("no handshake in progress", LIMIT, || {
        let (_, text) = curl(admin_port, "/metrics", Some(TOKEN));
        sample(&text, "ipaas_server_handshakes_in_progress") == 0.0
    });
}
