//! Backend selection against a real denial: the programs run under a seccomp filter that
//! fails `io_uring_setup` with EPERM, as Docker's default profile does.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const LIMIT: Duration = Duration::from_secs(20);

#[test]
fn auto_falls_back_to_tokio_when_denied() {
    let mut env = Env::new(Backends {
        server: "auto",
        agent: "auto",
    });
    env.deny_io_uring = true;
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.1/32", &[("echo", entry)]);
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);

    for log in [env.server_log(), root.join("log/agent.log")] {
        let text = wait_for_log(
            &log,
            "starting on the tokio backend: io_uring is unavailable",
            LIMIT,
        );
        assert!(text.contains("EPERM"), "{text}");
    }
}

#[test]
fn auto_picks_io_uring_when_allowed() {
    let mut env = Env::new(Backends {
        server: "auto",
        agent: "auto",
    });
    let (private, public) = openssl_keys(&env.path("keys"), 2048);
    let service = TestService::start(echo);
    let entry = free_port();
    env.start_gateway(&public, "127.0.0.1/32", &[("echo", entry)]);
    let root = env.start_agent("agent-1", "gw", &private, &[("echo", service.target())]);
    wait_until_routed(entry, LIMIT);

    for log in [env.server_log(), root.join("log/agent.log")] {
        wait_for_log(
            &log,
            "starting on the io_uring backend: io_uring is available",
            LIMIT,
        );
    }
}

#[test]
fn explicit_io_uring_fails_when_denied() {
    let env = Env::new(Backends::IO_URING);
    let (_, public) = openssl_keys(&env.path("keys"), 2048);
    let config = env.path("server/server.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: \"127.0.0.1:{}\"\ntls: {{ca: pki/ca.pem, cert: pki/server.pem, key: pki/server.key}}\n\
             runtime: {{backend: io_uring}}\ngateways:\n  - id: gw\n    public_keys: [\"{}\"]\n    allow: [127.0.0.1]\n",
            free_port(),
            public.display()
        ),
    )
    .unwrap();

    let mut command = Command::new(SERVER_BIN);
    command
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null());
    deny_io_uring(&mut command);
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("io_uring is unavailable on this host"),
        "{stderr}"
    );
    assert!(
        stderr.contains("set runtime.backend to auto or tokio"),
        "{stderr}"
    );
}
