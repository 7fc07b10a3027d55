//! Writes the seed corpus in `fuzz/corpus/<target>/` with the crate's own encoders, so
//! that every seed is a valid input of the current wire format.
//!
//! Run it from the repository root after a change to the wire format or the shipped
//! configs, and commit the result:
//!
//! ```sh
//! cargo run --manifest-path fuzz/Cargo.toml --example write_seed_corpus
//! ```
//!
//! Files are overwritten by name. Seeds that this program no longer writes must be
//! deleted by hand.

use std::fs;
use std::path::{Path, PathBuf};

use ipaas_gateway::protocol::frame::{self, flags, FrameType, GoAwayReason, ResetReason};
use ipaas_gateway::protocol::{
    Auth, Challenge, Hello, Reject, RejectReason, Welcome, PROTOCOL_VERSION,
};

/// Options byte of the `mux_input` target: default limits, no stream opened by the Server.
const MUX_DEFAULTS: u8 = 0;
/// Options byte of the `mux_input` target: small limits.
const MUX_SMALL_LIMITS: u8 = 1;
/// Options byte of the `mux_input` target: the Server opens two streams, ids 1 and 3.
const MUX_TWO_STREAMS: u8 = 2 << 1;

fn main() {
    let fuzz_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = fuzz_dir.join("corpus");
    let configs = fuzz_dir
        .parent()
        .expect("fuzz/ has a parent")
        .join("configs");

    write_frame_seeds(&corpus.join("frame_decode"));
    write_handshake_seeds(&corpus.join("handshake_decode"));
    write_mux_seeds(&corpus.join("mux_input"));
    write_config_seeds(&configs, &corpus.join("config_load"));
}

fn hello() -> Hello {
    Hello {
        version: PROTOCOL_VERSION,
        gateway_id: "gw-demo".to_owned(),
        agent_name: "agent-1".to_owned(),
        instance_id: *b"0123456789abcdef",
    }
}

fn welcome() -> Welcome {
    Welcome {
        session_id: 42,
        heartbeat_interval_ms: 10_000,
        heartbeat_timeout_ms: 30_000,
        services: vec!["web".to_owned(), "mysql".to_owned()],
    }
}

/// Returns the encoding of every handshake message, by name.
fn handshake_messages() -> Vec<(&'static str, Vec<u8>)> {
    let mut messages = Vec::new();
    let mut add = |name, encode: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        encode(&mut out);
        messages.push((name, out));
    };

    add("hello", &|out| hello().encode(out));
    add("challenge", &|out| Challenge { nonce: [7; 32] }.encode(out));
    add("auth", &|out| {
        Auth {
            signature: (0..=255).collect(),
        }
        .encode(out)
    });
    add("welcome", &|out| welcome().encode(out));
    add("reject", &|out| {
        Reject::new(
            RejectReason::AddressNotAllowed,
            "203.0.113.9 is not allowed",
        )
        .encode(out)
    });
    messages
}

fn write_frame_seeds(dir: &Path) {
    let mut seeds = Vec::new();
    let mut add = |name: &str, encode: &dyn Fn(&mut Vec<u8>)| {
        let mut out = Vec::new();
        encode(&mut out);
        seeds.push((name.to_owned(), out));
    };

    add("data", &|out| {
        frame::encode_frame(FrameType::Data, 0, 1, b"GET / HTTP/1.1\r\n\r\n", out)
    });
    add("data-fin", &|out| {
        frame::encode_frame(FrameType::Data, flags::FIN, 1, b"", out)
    });
    add("open", &|out| {
        frame::encode_frame(FrameType::Open, 0, 1, b"web", out)
    });
    add("reset", &|out| {
        frame::encode_reset(3, ResetReason::ConnectRefused, out)
    });
    add("window-update-session", &|out| {
        frame::encode_window_update(0, 65_536, out)
    });
    add("window-update-stream", &|out| {
        frame::encode_window_update(1, 131_072, out)
    });
    add("ping", &|out| {
        frame::encode_ping(0, 0x0102_0304_0506_0708, out)
    });
    add("pong", &|out| {
        frame::encode_ping(flags::ACK, 0x0102_0304_0506_0708, out)
    });
    add("go-away", &|out| {
        frame::encode_go_away(5, GoAwayReason::Shutdown, out)
    });
    for (name, bytes) in handshake_messages() {
        seeds.push((name.to_owned(), bytes));
    }
    let session: Vec<u8> = seeds.iter().flat_map(|(_, bytes)| bytes.clone()).collect();
    seeds.push(("all-frames".to_owned(), session));

    write_all(dir, &seeds);
}

fn write_handshake_seeds(dir: &Path) {
    // The target takes a selector byte (the index of the type in its list) and then the
    // payload, without the frame header.
    let mut seeds: Vec<(String, Vec<u8>)> = handshake_messages()
        .into_iter()
        .enumerate()
        .map(|(index, (name, bytes))| {
            let mut input = vec![index as u8];
            input.extend_from_slice(&bytes[frame::HEADER_LEN..]);
            (name.to_owned(), input)
        })
        .collect();

    let mut newer = Vec::new();
    Hello {
        version: PROTOCOL_VERSION + 1,
        ..hello()
    }
    .encode(&mut newer);
    let mut input = vec![0];
    input.extend_from_slice(&newer[frame::HEADER_LEN..]);
    input.extend_from_slice(b"fields of a later version");
    seeds.push(("hello-later-version".to_owned(), input));

    write_all(dir, &seeds);
}

fn write_mux_seeds(dir: &Path) {
    // What a Server sends to an Agent: a stream opened, used in both directions and
    // half-closed, a second stream reset, a ping and a go-away.
    let mut to_agent = Vec::new();
    frame::encode_frame(FrameType::Open, 0, 1, b"web", &mut to_agent);
    frame::encode_frame(
        FrameType::Data,
        0,
        1,
        b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
        &mut to_agent,
    );
    frame::encode_window_update(1, 4096, &mut to_agent);
    frame::encode_frame(FrameType::Data, flags::FIN, 1, b"", &mut to_agent);
    frame::encode_frame(FrameType::Open, 0, 3, b"mysql", &mut to_agent);
    frame::encode_reset(3, ResetReason::Cancelled, &mut to_agent);
    frame::encode_ping(0, 99, &mut to_agent);
    frame::encode_go_away(3, GoAwayReason::Shutdown, &mut to_agent);

    // What an Agent sends to a Server that opened streams 1 and 3.
    let mut to_server = Vec::new();
    frame::encode_frame(
        FrameType::Data,
        0,
        1,
        b"HTTP/1.1 200 OK\r\n\r\nhello",
        &mut to_server,
    );
    frame::encode_window_update(0, 8192, &mut to_server);
    frame::encode_window_update(1, 8192, &mut to_server);
    frame::encode_frame(FrameType::Data, flags::FIN, 1, b"", &mut to_server);
    frame::encode_reset(3, ResetReason::ConnectRefused, &mut to_server);
    frame::encode_ping(flags::ACK, 99, &mut to_server);
    frame::encode_go_away(3, GoAwayReason::Shutdown, &mut to_server);

    // Data beyond the small stream window of 1 KiB, in frames of 1 KiB.
    let mut over_window = Vec::new();
    frame::encode_frame(FrameType::Open, 0, 1, b"web", &mut over_window);
    frame::encode_frame(FrameType::Data, 0, 1, &[b'x'; 1024], &mut over_window);
    frame::encode_frame(FrameType::Data, 0, 1, &[b'y'; 1024], &mut over_window);

    let seeds = [
        ("agent-session", mux_input(MUX_DEFAULTS, 255, &to_agent)),
        (
            "agent-session-byte-chunks",
            mux_input(MUX_DEFAULTS, 0, &to_agent),
        ),
        ("server-session", mux_input(MUX_TWO_STREAMS, 16, &to_server)),
        (
            "small-limits-over-window",
            mux_input(MUX_SMALL_LIMITS, 100, &over_window),
        ),
    ];
    let seeds: Vec<(String, Vec<u8>)> = seeds
        .into_iter()
        .map(|(name, bytes)| (name.to_owned(), bytes))
        .collect();
    write_all(dir, &seeds);
}

/// Builds a `mux_input` input: options byte, chunking byte, then the received bytes.
fn mux_input(options: u8, chunking: u8, received: &[u8]) -> Vec<u8> {
    let mut input = vec![options, chunking];
    input.extend_from_slice(received);
    input
}

fn write_config_seeds(configs: &Path, dir: &Path) {
    let seeds: Vec<(String, Vec<u8>)> = ["config.yaml", "logger_config.yaml", "server.yaml"]
        .into_iter()
        .map(|name| {
            let path = configs.join(name);
            let text = fs::read(&path)
                .unwrap_or_else(|error| panic!("failed to read {}: {error}", path.display()));
            (name.to_owned(), text)
        })
        .collect();
    write_all(dir, &seeds);
}

fn write_all(dir: &Path, seeds: &[(String, Vec<u8>)]) {
    fs::create_dir_all(dir)
        .unwrap_or_else(|error| panic!("failed to create {}: {error}", dir.display()));
    for (name, bytes) in seeds {
        let path: PathBuf = dir.join(name);
        fs::write(&path, bytes)
            .unwrap_or_else(|error| panic!("failed to write {}: {error}", path.display()));
        println!("{} ({} bytes)", path.display(), bytes.len());
    }
}
