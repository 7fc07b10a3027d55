//! In-memory throughput of the protocol core, without sockets or TLS.
//!
//! - `frame/encode_decode_16k`: encodes one 16 KiB Data frame and decodes it again.
//! - `mux/one_stream_64m`: a Server `Mux` sends 64 MiB on one stream to an Agent `Mux`,
//!   which reads every byte. Window updates flow back, so flow control is part of the cost.
//!
//! Run with `cargo bench --bench mux` (add `-- --quick` for a shorter run). Criterion
//! reports bytes per second because every benchmark sets `Throughput::Bytes`.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};

use ipaas_gateway::protocol::frame::{self, FrameType, DEFAULT_MAX_PAYLOAD};
use ipaas_gateway::protocol::mux::{Event, Mux, MuxConfig, Role, StreamRead};

/// Payload of one Data frame, the protocol's default maximum.
const FRAME_PAYLOAD: usize = DEFAULT_MAX_PAYLOAD as usize;

/// Bytes pushed through one stream per iteration of the mux benchmark.
const STREAM_BYTES: usize = 64 * 1024 * 1024;

/// Bytes the sender offers to `send_data` per call, and the size of the reader's buffer.
/// It spans four frames, so one call queues several frames.
const CHUNK: usize = 64 * 1024;

/// Service name sent in the Open frame. The Agent `Mux` does not check that it exists.
const SERVICE: &str = "bench";

fn frame_encode_decode(c: &mut Criterion) {
    let payload = vec![0x5a_u8; FRAME_PAYLOAD];
    let mut wire = Vec::with_capacity(frame::HEADER_LEN + FRAME_PAYLOAD);

    let mut group = c.benchmark_group("frame");
    group.throughput(Throughput::Bytes(FRAME_PAYLOAD as u64));
    group.bench_function("encode_decode_16k", |b| {
        b.iter(|| {
            wire.clear();
            frame::encode_frame(FrameType::Data, 0, 1, black_box(&payload), &mut wire);
            let decoded = frame::decode(black_box(&wire), DEFAULT_MAX_PAYLOAD)
                .expect("an encoded frame decodes")
                .expect("the buffer contains the whole frame");
            black_box(decoded.0.payload.len())
        });
    });
    group.finish();
}

/// Sends `STREAM_BYTES` from a Server `Mux` to an Agent `Mux` on one stream and returns the
/// number of bytes the Agent read.
///
/// Each round moves the whole outbox of one side into the other side's `handle_input`, as
/// a session driver does after a TLS write and read.
fn push_one_stream(data: &[u8], buf: &mut [u8]) -> usize {
    let mut server = Mux::new(Role::Server, MuxConfig::default());
    let mut agent = Mux::new(Role::Agent, MuxConfig::default());
    let id = server
        .open_stream(SERVICE)
        .expect("a new Server mux opens a stream");

    let mut sent = 0;
    let mut received = 0;
    while received < STREAM_BYTES {
        // Server: queue as much as the flow control and the outbox allow.
        while sent < STREAM_BYTES && server.send_capacity(id) > 0 {
            let len = (STREAM_BYTES - sent).min(data.len());
            sent += server
                .send_data(id, &data[..len])
                .expect("the stream is open");
        }

        // Deliver the Server's outbox to the Agent, as the TLS connection would.
        let len = server.outbox_len();
        agent.handle_input(server.outbox()).expect("valid frames");
        server.consume_outbox(len);

        // Agent: read everything that arrived, which queues window updates.
        while let Some(event) = agent.poll_event() {
            if event != Event::Readable(id) {
                continue;
            }
            loop {
                match agent.read(id, buf) {
                    StreamRead::Data(n) => received += n,
                    StreamRead::Pending => break,
                    other => panic!("unexpected read result {other:?}"),
                }
            }
        }

        // Deliver the Agent's window updates to the Server.
        let len = agent.outbox_len();
        server
            .handle_input(agent.outbox())
            .expect("valid window updates");
        agent.consume_outbox(len);
        while server.poll_event().is_some() {}
    }
    received
}

fn mux_one_stream(c: &mut Criterion) {
    let data = vec![0xa5_u8; CHUNK];
    let mut buf = vec![0_u8; CHUNK];

    let mut group = c.benchmark_group("mux");
    group.throughput(Throughput::Bytes(STREAM_BYTES as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("one_stream_64m", |b| {
        b.iter(|| {
            let received = push_one_stream(&data, &mut buf);
            assert_eq!(received, STREAM_BYTES);
        });
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = frame_encode_decode, mux_one_stream
}
criterion_main!(benches);
