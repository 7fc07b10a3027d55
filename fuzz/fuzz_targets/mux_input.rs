//! Fuzzes `Mux::handle_input` on both roles with bytes from a hostile peer.
//!
//! Input: an options byte, a chunking byte, then the received bytes.
//! - Options bit 0 selects small limits (1 KiB windows, frames and outbox, 4 streams)
//!   instead of the defaults, so that flow control and stream limits are reached quickly.
//!   Bits 1 and 2 give the number of streams (0 to 3) that the Server opens before any
//!   input arrives, so that Data, Reset and WindowUpdate frames find open streams.
//! - The chunking byte seeds the split of the received bytes into `handle_input` calls of
//!   1 to chunking byte + 1 bytes each.
//!
//! Each role runs the input twice:
//! 1. Without an application: the bytes are passed in chunks and then in one call, and
//!    both runs must fail or succeed alike, with the same events and the same outbox.
//! 2. With an application that reads every readable stream, sends FIN once it has read
//!    the peer's FIN, sends data on opened and writable streams, and writes the whole
//!    outbox after each chunk. The outbox must always contain whole, valid frames.

#![no_main]

use ipaas_gateway::protocol::frame::{self, HEADER_LEN};
use ipaas_gateway::protocol::{Event, Mux, MuxConfig, Role, StreamRead};
use libfuzzer_sys::fuzz_target;

/// Bytes an application sends on a stream per event.
const SEND_SIZE: usize = 1500;

/// Stream ids that the driver refers to, beyond those it learns from events.
const SERVER_STREAMS: [u32; 3] = [1, 3, 5];

fuzz_target!(|data: &[u8]| {
    let [options, chunking, received @ ..] = data else {
        return;
    };
    let config = if options & 1 == 0 {
        MuxConfig::default()
    } else {
        small_config()
    };
    let server_streams = usize::from((options >> 1) & 0b11);

    for role in [Role::Agent, Role::Server] {
        compare_chunked_with_whole(role, &config, server_streams, *chunking, received);
        run_with_application(role, &config, server_streams, *chunking, received);
    }
});

fn small_config() -> MuxConfig {
    let config = MuxConfig {
        stream_window: 1024,
        session_window: 4096,
        max_streams: 4,
        max_frame_payload: 1024,
        max_outbox: 1024,
    };
    config.validate().expect("small fuzz config is valid");
    config
}

/// Creates a multiplexer, and on the Server opens `server_streams` streams.
fn new_mux(role: Role, config: &MuxConfig, server_streams: usize) -> Mux {
    let mut mux = Mux::new(role, config.clone());
    if role == Role::Server {
        for _ in 0..server_streams {
            mux.open_stream("svc").expect("a new Server opens a stream");
        }
    }
    mux
}

/// Splits `bytes` into chunks whose sizes come from a xorshift sequence seeded by
/// `chunking`, each 1 to `chunking + 1` bytes long.
fn chunks(chunking: u8, bytes: &[u8]) -> Vec<&[u8]> {
    let mut state = u32::from(chunking) | 0x100;
    let mut rest = bytes;
    let mut chunks = Vec::new();
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let size = 1 + state as usize % (usize::from(chunking) + 1);
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// Feeds the bytes in chunks to one multiplexer and in one call to another, and checks
/// that the two end in the same state when neither failed.
fn compare_chunked_with_whole(
    role: Role,
    config: &MuxConfig,
    server_streams: usize,
    chunking: u8,
    received: &[u8],
) {
    let mut chunked = new_mux(role, config, server_streams);
    let mut chunked_events = Vec::new();
    let mut chunked_result = Ok(());
    for chunk in chunks(chunking, received) {
        chunked_result = chunked.handle_input(chunk);
        chunked_events.extend(std::iter::from_fn(|| chunked.poll_event()));
        if chunked_result.is_err() {
            break;
        }
    }

    let mut whole = new_mux(role, config, server_streams);
    let whole_result = whole.handle_input(received);
    let whole_events: Vec<Event> = std::iter::from_fn(|| whole.poll_event()).collect();

    // After an error the two may have processed different numbers of frames, because a
    // chunk boundary checks the outbox limit earlier than the end of one large call.
    assert_eq!(
        chunked_result.is_ok(),
        whole_result.is_ok(),
        "chunked: {chunked_result:?}, whole: {whole_result:?}"
    );
    if whole_result.is_ok() {
        assert_eq!(chunked_events, whole_events);
        assert_eq!(chunked.outbox(), whole.outbox());
        assert_eq!(chunked.stream_count(), whole.stream_count());
    }
}

/// Feeds the bytes in chunks while an application reacts to every event, and checks the
/// multiplexer's limits and output after each chunk.
fn run_with_application(
    role: Role,
    config: &MuxConfig,
    server_streams: usize,
    chunking: u8,
    received: &[u8],
) {
    let mut mux = new_mux(role, config, server_streams);
    let mut buf = vec![0u8; 4096];
    let payload = [0x5a; SEND_SIZE];

    for chunk in chunks(chunking, received) {
        let result = mux.handle_input(chunk);

        while let Some(event) = mux.poll_event() {
            match event {
                Event::Opened { id, .. } | Event::Writable(id) => {
                    // Errors here report a stream the peer has reset since, which the
                    // application learns on its next read.
                    let _ = mux.send_data(id, &payload);
                }
                Event::Readable(id) => read_stream(&mut mux, id, &mut buf),
                Event::Pong(_) | Event::GoAway { .. } => {}
            }
        }
        if role == Role::Server {
            for id in SERVER_STREAMS {
                let _ = mux.send_data(id, &payload[..100]);
            }
        }

        assert!(mux.stream_count() <= config.max_streams as usize);
        check_outbox(mux.outbox(), config.max_frame_payload);
        mux.consume_outbox(mux.outbox_len());

        if result.is_err() {
            return;
        }
    }
}

/// Reads stream `id` until nothing is left, and sends FIN once the peer's FIN is read.
fn read_stream(mux: &mut Mux, id: u32, buf: &mut [u8]) {
    loop {
        match mux.read(id, buf) {
            StreamRead::Data(n) => assert!(n > 0 && n <= buf.len()),
            StreamRead::Fin => {
                if mux.is_send_open(id) {
                    mux.send_fin(id).expect("FIN on a stream that can send");
                }
                return;
            }
            StreamRead::Reset(_) | StreamRead::Pending | StreamRead::Closed => return,
        }
    }
}

/// Checks that the outbox is a sequence of whole frames that a peer with the same
/// limits accepts.
fn check_outbox(mut outbox: &[u8], max_payload: u32) {
    while !outbox.is_empty() {
        let (frame, used) = frame::decode(outbox, max_payload)
            .expect("the multiplexer queued an invalid frame")
            .expect("the multiplexer queued a partial frame");
        assert!(used >= HEADER_LEN);
        assert!(!frame.header.kind.is_handshake());
        outbox = &outbox[used..];
    }
}
