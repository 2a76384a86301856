#![cfg(all(feature = "tls", feature = "ws"))] // tests/common builds certificates with rustls
#![allow(clippy::unwrap_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use promptmq_transport::{Transport, TransportError, UpgradeError, WsError, WsSettings};

const BINARY: u8 = 0x2;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MASK: [u8; 4] = [0x37, 0xFA, 0x21, 0x3D];

fn receive(t: &mut Transport, bytes: &[u8], app: &mut BytesMut) -> Result<(), TransportError> {
    let mut wire = BytesMut::from(bytes);
    let r = t.receive(&mut wire, app);
    assert!(wire.is_empty(), "receive must take all of wire");
    r
}

/// A WebSocket transport past its handshake (the 101 already flushed).
fn open(settings: &WsSettings) -> Transport {
    let mut t = Transport::ws(settings);
    receive(&mut t, upgrade_request("Sec-WebSocket-Protocol: mqtt\r\n").as_bytes(), &mut BytesMut::new()).unwrap();
    let response = String::from_utf8(flush(&mut t)).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 "), "{response}");
    t
}

/// The close code of the single close frame in `bytes`.
fn close_code(bytes: &[u8]) -> Option<u16> {
    let frames = server_frames(bytes);
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0].opcode, CLOSE);
    let p = &frames[0].payload;
    (p.len() >= 2).then(|| u16::from_be_bytes([p[0], p[1]]))
}

#[test]
fn handshake_answers_the_rfc_example_key() {
    let mut t = Transport::ws(&WsSettings::default());
    assert!(t.is_handshaking());
    let mut app = BytesMut::new();
    receive(
        &mut t,
        upgrade_request("Sec-WebSocket-Protocol: mqtt\r\nOrigin: http://example.com\r\n").as_bytes(),
        &mut app,
    )
    .unwrap();
    assert!(app.is_empty());
    assert!(t.wants_write());
    assert!(!t.is_handshaking());
    let response = String::from_utf8(flush(&mut t)).unwrap();
    assert_eq!(
        response,
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {RFC_ACCEPT}\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
        )
    );
    assert!(!t.wants_write());
    assert!(flush(&mut t).is_empty());
    assert_eq!(t.ws_subprotocol(), Some("mqtt"));
    assert_eq!(t.ws_path(), Some("/mqtt"));
    assert!(!t.is_closed());
}

#[test]
fn handshake_split_at_every_byte() {
    let request = upgrade_request("Sec-WebSocket-Protocol: mqtt\r\n");
    let whole = {
        let mut t = Transport::ws(&WsSettings::default());
        receive(&mut t, request.as_bytes(), &mut BytesMut::new()).unwrap();
        flush(&mut t)
    };
    for split in 0..=request.len() {
        let mut t = Transport::ws(&WsSettings::default());
        let mut app = BytesMut::new();
        receive(&mut t, &request.as_bytes()[..split], &mut app).unwrap();
        assert_eq!(t.wants_write(), split == request.len());
        receive(&mut t, &request.as_bytes()[split..], &mut app).unwrap();
        assert_eq!(flush(&mut t), whole, "split at {split}");
        assert!(app.is_empty());
    }
}

#[test]
fn frames_right_after_the_request_are_decoded() {
    let mut bytes = upgrade_request("").into_bytes();
    bytes.extend(client_frame(true, BINARY, b"\xC0\x00", MASK));
    let mut t = Transport::ws(&WsSettings::default());
    let mut app = BytesMut::new();
    receive(&mut t, &bytes, &mut app).unwrap();
    assert_eq!(&app[..], b"\xC0\x00");
    let response = String::from_utf8(flush(&mut t)).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 "));
    // No subprotocol offered: none chosen, and the client is not refused.
    assert!(!response.contains("Sec-WebSocket-Protocol"), "{response}");
    assert_eq!(t.ws_subprotocol(), None);
}

#[test]
fn subprotocol_selection() {
    let cases: [(&str, Option<&str>); 5] = [
        ("Sec-WebSocket-Protocol: mqttv3.1\r\n", Some("mqttv3.1")),
        ("Sec-WebSocket-Protocol: wamp, mqtt\r\n", Some("mqtt")),
        ("Sec-WebSocket-Protocol: wamp\r\nSec-WebSocket-Protocol: MQTT\r\n", Some("MQTT")),
        ("Sec-WebSocket-Protocol: mqttv3.1, mqtt\r\n", Some("mqttv3.1")),
        ("", None),
    ];
    for (header, want) in cases {
        let mut t = Transport::ws(&WsSettings::default());
        receive(&mut t, upgrade_request(header).as_bytes(), &mut BytesMut::new()).unwrap();
        assert_eq!(t.ws_subprotocol(), want, "{header}");
        let response = String::from_utf8(flush(&mut t)).unwrap();
        match want {
            Some(p) => assert!(response.contains(&format!("\r\nSec-WebSocket-Protocol: {p}\r\n")), "{response}"),
            None => assert!(!response.contains("Sec-WebSocket-Protocol")),
        }
    }
}

fn refused(settings: &WsSettings, request: &[u8]) -> (UpgradeError, String) {
    let mut t = Transport::ws(settings);
    let mut app = BytesMut::new();
    let error = match receive(&mut t, request, &mut app) {
        Err(TransportError::Upgrade(e)) => e,
        other => panic!("expected a refusal of {:?}, got {other:?}", String::from_utf8_lossy(request)),
    };
    assert!(t.is_closed());
    let response = String::from_utf8(flush(&mut t)).unwrap();
    // Refused once: later input is ignored, nothing more is sent.
    receive(&mut t, b"more", &mut app).unwrap();
    assert!(flush(&mut t).is_empty());
    assert!(app.is_empty());
    (error, response)
}

#[test]
fn bad_upgrade_requests_get_an_http_error() {
    let good = upgrade_request("");
    let without = |line: &str| good.replace(line, "");
    type Check = fn(&UpgradeError) -> bool;
    let cases: Vec<(String, &str, Check)> = vec![
        (good.replace("GET", "POST"), "400", |e| matches!(e, UpgradeError::Method(m) if m == "POST")),
        (good.replace("HTTP/1.1", "HTTP/1.0"), "400", |e| *e == UpgradeError::HttpVersion),
        (without("Upgrade: websocket\r\n"), "400", |e| *e == UpgradeError::NotWebSocket),
        (good.replace("Upgrade: websocket", "Upgrade: h2c"), "400", |e| *e == UpgradeError::NotWebSocket),
        (without("Connection: Upgrade\r\n"), "400", |e| *e == UpgradeError::NoConnectionUpgrade),
        (good.replace("Connection: Upgrade", "Connection: keep-alive"), "400", |e| {
            *e == UpgradeError::NoConnectionUpgrade
        }),
        (good.replace("Version: 13", "Version: 8"), "426", |e| *e == UpgradeError::Version),
        (without("Sec-WebSocket-Version: 13\r\n"), "426", |e| *e == UpgradeError::Version),
        (without(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n")), "400", |e| *e == UpgradeError::Key),
        (good.replace(RFC_KEY, "c2hvcnQ="), "400", |e| *e == UpgradeError::Key),
        (upgrade_request(&format!("Sec-WebSocket-Key: {RFC_KEY}\r\n")), "400", |e| *e == UpgradeError::Key),
        (upgrade_request("Sec-WebSocket-Protocol: wamp, stomp\r\n"), "400", |e| *e == UpgradeError::Subprotocol),
        ("\x16\x03\x01\x02\x00\x01\x00\x01\x7c\x03\x03\r\n\r\n".to_owned(), "400", |e| {
            matches!(e, UpgradeError::Malformed(_))
        }),
        (upgrade_request(&"X-Filler: x\r\n".repeat(70)), "431", |e| *e == UpgradeError::TooManyHeaders),
    ];
    for (request, status, check) in cases {
        let (error, response) = refused(&WsSettings::default(), request.as_bytes());
        assert!(check(&error), "{request:?} gave {error:?}");
        assert!(response.starts_with(&format!("HTTP/1.1 {status} ")), "{response}");
        assert!(response.contains("Connection: close\r\n"));
        assert!(response.ends_with(&format!("\r\n\r\n{error}\n")), "{response}");
    }
    let (_, response) = refused(&WsSettings::default(), good.replace("Version: 13", "Version: 8").as_bytes());
    assert!(response.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{response}");
}

#[test]
fn oversized_request_heads_get_431() {
    let settings = WsSettings::default();
    // Never ends: refused once the limit is passed, without waiting for the end.
    let endless = format!("GET /mqtt HTTP/1.1\r\nX-Filler: {}", "a".repeat(settings.max_request_size));
    let (error, response) = refused(&settings, endless.as_bytes());
    assert_eq!(error, UpgradeError::TooLarge { limit: 8192 });
    assert!(response.starts_with("HTTP/1.1 431 "), "{response}");

    // Ends, but past the limit.
    let long = upgrade_request(&format!("X-Filler: {}\r\n", "a".repeat(9000)));
    let (error, _) = refused(&settings, long.as_bytes());
    assert_eq!(error, UpgradeError::TooLarge { limit: 8192 });

    // Exactly at the limit is fine, also when it arrives in pieces.
    let base = upgrade_request("X-Filler: \r\n");
    let exact = upgrade_request(&format!("X-Filler: {}\r\n", "a".repeat(settings.max_request_size - base.len())));
    assert_eq!(exact.len(), settings.max_request_size);
    let mut t = Transport::ws(&settings);
    let mut app = BytesMut::new();
    for piece in exact.as_bytes().chunks(1000) {
        receive(&mut t, piece, &mut app).unwrap();
    }
    assert!(!t.is_handshaking());
    let mut over = Transport::ws(&settings);
    let one_more =
        upgrade_request(&format!("X-Filler: {}\r\n", "a".repeat(settings.max_request_size - base.len() + 1)));
    assert!(matches!(receive(&mut over, one_more.as_bytes(), &mut app), Err(TransportError::Upgrade(_))));
}

#[test]
fn request_path_check() {
    let settings = WsSettings { path: Some("/mqtt".into()), ..WsSettings::default() };
    let (error, response) = refused(&settings, upgrade_request("").replace("GET /mqtt ", "GET /other ").as_bytes());
    assert_eq!(error, UpgradeError::Path("/other".into()));
    assert!(response.starts_with("HTTP/1.1 404 "), "{response}");
    let mut t = Transport::ws(&settings);
    let request = upgrade_request("").replace("GET /mqtt ", "GET /mqtt?client=1 ");
    receive(&mut t, request.as_bytes(), &mut BytesMut::new()).unwrap();
    assert_eq!(t.ws_path(), Some("/mqtt"));
    // Any path by default.
    let mut t = Transport::ws(&WsSettings::default());
    receive(&mut t, upgrade_request("").replace("GET /mqtt ", "GET / ").as_bytes(), &mut BytesMut::new()).unwrap();
    assert_eq!(t.ws_path(), Some("/"));
}

/// Frames of every length encoding, fragmentation with control frames in between, and the
/// application bytes they carry.
fn frame_stream(rng: &mut Rng, big: bool) -> (Vec<u8>, Vec<u8>) {
    let mut wire = Vec::new();
    let mut app = Vec::new();
    let mut add = |wire: &mut Vec<u8>, fin, op, payload: &[u8], mask| {
        wire.extend(client_frame(fin, op, payload, mask));
        if op == BINARY || op == CONTINUATION {
            app.extend_from_slice(payload);
        }
    };
    add(&mut wire, true, BINARY, b"hello", MASK);
    add(&mut wire, false, BINARY, b"wor", [1, 2, 3, 4]);
    add(&mut wire, true, PING, b"p1", [5, 6, 7, 8]);
    add(&mut wire, false, CONTINUATION, b"", [9, 9, 9, 9]);
    add(&mut wire, true, PONG, b"unsolicited", MASK);
    add(&mut wire, true, CONTINUATION, b"ld", MASK);
    add(&mut wire, true, BINARY, &rng.bytes(126), MASK);
    add(&mut wire, true, BINARY, &rng.bytes(300), [0xFF, 0, 0xFF, 0]);
    add(&mut wire, true, BINARY, b"", MASK);
    add(&mut wire, true, PING, b"", MASK);
    if big {
        add(&mut wire, true, BINARY, &rng.bytes(70_000), MASK);
        add(&mut wire, false, BINARY, &rng.bytes(5000), MASK);
        add(&mut wire, true, CONTINUATION, &rng.bytes(5000), [0, 0, 0, 1]);
    }
    add(&mut wire, true, BINARY, b"end", MASK);
    (wire, app)
}

#[test]
fn frames_split_at_every_byte_boundary() {
    let (stream, expected) = frame_stream(&mut Rng(1), false);
    for split in 0..=stream.len() {
        let mut t = open(&WsSettings::default());
        let mut app = BytesMut::new();
        receive(&mut t, &stream[..split], &mut app).unwrap();
        receive(&mut t, &stream[split..], &mut app).unwrap();
        assert_eq!(&app[..], &expected[..], "split at {split}");
        assert_eq!(server_frames(&flush(&mut t)), vec![ServerFrame { fin: true, opcode: PONG, payload: vec![] }]);
        assert!(!t.is_closed());
    }
}

#[test]
fn frames_fed_one_byte_at_a_time_and_in_random_pieces() {
    let (stream, expected) = frame_stream(&mut Rng(2), true);
    let mut t = open(&WsSettings::default());
    let mut app = BytesMut::new();
    for b in &stream {
        receive(&mut t, std::slice::from_ref(b), &mut app).unwrap();
    }
    assert!(app[..] == expected[..]);

    let mut rng = Rng(3);
    for _ in 0..20 {
        let mut t = open(&WsSettings::default());
        let mut app = BytesMut::new();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let n = (1 + rng.next() as usize % 20_000).min(rest.len());
            receive(&mut t, &rest[..n], &mut app).unwrap();
            // The consumer takes some of it now and then, as the MQTT layer would.
            if rng.next() & 1 == 0 {
                let _ = app.split();
            }
            rest = &rest[n..];
        }
    }
    let mut t = open(&WsSettings::default());
    let mut app = BytesMut::new();
    receive(&mut t, &stream, &mut app).unwrap();
    assert!(app[..] == expected[..]);
}

#[test]
fn ping_gets_a_pong_and_only_the_latest_is_answered() {
    let mut t = open(&WsSettings::default());
    let mut app = BytesMut::new();
    receive(&mut t, &client_frame(true, PING, b"are you there", MASK), &mut app).unwrap();
    assert!(t.wants_write());
    assert_eq!(
        server_frames(&flush(&mut t)),
        vec![ServerFrame { fin: true, opcode: PONG, payload: b"are you there".to_vec() }]
    );
    assert!(!t.wants_write());

    let mut flood = Vec::new();
    for i in 0..1000u32 {
        flood.extend(client_frame(true, PING, &i.to_be_bytes(), MASK));
    }
    receive(&mut t, &flood, &mut app).unwrap();
    assert_eq!(
        server_frames(&flush(&mut t)),
        vec![ServerFrame { fin: true, opcode: PONG, payload: 999u32.to_be_bytes().to_vec() }]
    );
    assert!(app.is_empty());
}

#[test]
fn pending_pong_goes_before_data_in_the_same_send() {
    let mut t = open(&WsSettings::default());
    receive(&mut t, &client_frame(true, PING, b"x", MASK), &mut BytesMut::new()).unwrap();
    let mut app = vec![Bytes::from_static(b"\xD0\x00")];
    let mut wire = Vec::new();
    t.send(&mut app, &mut wire).unwrap();
    let frames = server_frames(&wire.concat());
    assert_eq!(frames[0].opcode, PONG);
    assert_eq!(frames[1], ServerFrame { fin: true, opcode: BINARY, payload: b"\xD0\x00".to_vec() });
}

#[test]
fn outgoing_chunks_share_one_frame_and_are_not_copied() {
    let mut t = open(&WsSettings::default());
    let chunks = vec![Bytes::from_static(b"\x30\x05\x00\x01t"), Bytes::new(), Bytes::from(b"ab".to_vec())];
    let pointers: Vec<*const u8> = vec![chunks[0].as_ptr(), chunks[2].as_ptr()];
    let mut app = chunks;
    let mut wire = Vec::new();
    t.send(&mut app, &mut wire).unwrap();
    assert!(app.is_empty());
    assert_eq!(wire.len(), 3, "header, then the non-empty chunks");
    assert_eq!(&wire[0][..], &[0x82, 7]);
    assert_eq!(wire[1].as_ptr(), pointers[0]);
    assert_eq!(wire[2].as_ptr(), pointers[1]);

    for len in [125usize, 126, 65535, 65536, 200_000] {
        let mut app = vec![Bytes::from(vec![0xAB; len])];
        let mut wire = Vec::new();
        t.send(&mut app, &mut wire).unwrap();
        let frames = server_frames(&wire.concat());
        assert_eq!(frames.len(), 1);
        assert_eq!(frames[0].payload.len(), len);
        assert_eq!(frames[0].opcode, BINARY);
    }
    // Nothing to send: nothing sent, not even an empty frame.
    let mut wire = Vec::new();
    t.send(&mut vec![Bytes::new()], &mut wire).unwrap();
    assert!(wire.is_empty());
}

#[test]
fn data_before_the_handshake_is_dropped() {
    let mut t = Transport::ws(&WsSettings::default());
    let mut wire = Vec::new();
    t.send(&mut vec![Bytes::from_static(b"early")], &mut wire).unwrap();
    assert!(wire.is_empty());
}

fn violation(settings: &WsSettings, frames: &[u8]) -> (WsError, Option<u16>, BytesMut) {
    let mut t = open(settings);
    let mut app = BytesMut::new();
    let error = match receive(&mut t, frames, &mut app) {
        Err(TransportError::WebSocket(e)) => e,
        other => panic!("expected a protocol error, got {other:?}"),
    };
    assert!(t.is_closed());
    assert!(t.wants_write());
    let code = close_code(&flush(&mut t));
    assert_eq!(code, Some(error.close_code()));
    // Closed: more input is ignored and no data frame follows the close frame.
    receive(&mut t, &client_frame(true, BINARY, b"more", MASK), &mut BytesMut::new()).unwrap();
    let mut wire = Vec::new();
    t.send(&mut vec![Bytes::from_static(b"late")], &mut wire).unwrap();
    assert!(wire.is_empty());
    (error, code, app)
}

#[test]
fn unmasked_frame_is_closed_with_1002() {
    let (error, code, _) = violation(&WsSettings::default(), &[0x82, 0x02, b'h', b'i']);
    assert_eq!(error, WsError::Unmasked);
    assert_eq!(code, Some(1002));
}

#[test]
fn text_frame_is_closed_with_1003() {
    let (error, code, _) = violation(&WsSettings::default(), &client_frame(true, TEXT, b"{}", MASK));
    assert_eq!(error, WsError::TextFrame);
    assert_eq!(code, Some(1003));
}

#[test]
fn protocol_violations_are_closed_with_1002() {
    let mut reserved = client_frame(true, BINARY, b"x", MASK);
    reserved[0] |= 0x40;
    let mut cases: Vec<(Vec<u8>, WsError)> = vec![
        (reserved, WsError::ReservedBits),
        (client_frame(true, 0x3, b"x", MASK), WsError::UnknownOpcode(3)),
        (client_frame(true, 0xB, b"x", MASK), WsError::UnknownOpcode(0xB)),
        (client_frame(true, PING, &[0; 126], MASK), WsError::BadControlFrame),
        (client_frame(false, PING, b"x", MASK), WsError::BadControlFrame),
        (client_frame(true, CONTINUATION, b"x", MASK), WsError::UnexpectedContinuation),
        (
            [client_frame(false, BINARY, b"a", MASK), client_frame(true, BINARY, b"b", MASK)].concat(),
            WsError::UnfinishedMessage,
        ),
        (client_frame(true, CLOSE, &[3], MASK), WsError::BadClose),
        (client_frame(true, CLOSE, &1005u16.to_be_bytes(), MASK), WsError::BadClose),
    ];
    // A 64-bit length with its top bit set.
    let mut huge = vec![0x82, 0xFF];
    huge.extend_from_slice(&u64::MAX.to_be_bytes());
    huge.extend_from_slice(&MASK);
    cases.push((huge, WsError::BadLength));
    for (frames, want) in cases {
        let (error, code, _) = violation(&WsSettings::default(), &frames);
        assert_eq!(error, want);
        assert_eq!(code, Some(1002), "{want:?}");
    }
    let (error, code, _) = violation(&WsSettings::default(), &client_frame(true, CLOSE, b"\x03\xE8\xFF", MASK));
    assert_eq!((error, code), (WsError::CloseReasonNotUtf8, Some(1007)));
}

#[test]
fn oversized_messages_are_closed_with_1009_before_any_payload() {
    let settings = WsSettings { max_message_size: 1000, ..WsSettings::default() };
    // A header announcing 2^63 - 1 bytes, and no payload: refused from the header alone.
    let mut header = vec![0x82, 0xFF];
    header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
    header.extend_from_slice(&MASK);
    let (error, code, app) = violation(&settings, &header);
    assert_eq!(error, WsError::TooBig { size: u64::MAX >> 1, limit: 1000 });
    assert_eq!(code, Some(1009));
    assert!(app.is_empty());

    // Fragments adding up past the limit: the first fragment was fine and was delivered.
    let frames =
        [client_frame(false, BINARY, &[1; 600], MASK), client_frame(true, CONTINUATION, &[2; 401], MASK)].concat();
    let (error, code, app) = violation(&settings, &frames);
    assert_eq!(error, WsError::TooBig { size: 1001, limit: 1000 });
    assert_eq!(code, Some(1009));
    assert_eq!(&app[..], &[1; 600][..]);

    // Exactly the limit, also fragmented, and again in the next message.
    let mut t = open(&settings);
    let mut app = BytesMut::new();
    let frames = [
        client_frame(false, BINARY, &[1; 600], MASK),
        client_frame(true, PING, b"", MASK),
        client_frame(true, CONTINUATION, &[2; 400], MASK),
        client_frame(true, BINARY, &[3; 1000], MASK),
    ]
    .concat();
    receive(&mut t, &frames, &mut app).unwrap();
    assert_eq!(app.len(), 2000);
}

#[test]
fn client_close_is_echoed_and_ends_the_stream() {
    let mut t = open(&WsSettings::default());
    let mut app = BytesMut::new();
    let frames = [
        client_frame(true, BINARY, b"\xE0\x00", MASK),
        client_frame(true, CLOSE, b"\x03\xE9going away", MASK),
        client_frame(true, BINARY, b"after close", MASK),
    ]
    .concat();
    receive(&mut t, &frames, &mut app).unwrap();
    assert_eq!(&app[..], b"\xE0\x00");
    assert!(t.is_closed());
    assert!(t.wants_write());
    // Data the broker still had queued is not sent after the close frame.
    let mut wire = Vec::new();
    t.send(&mut vec![Bytes::from_static(b"queued")], &mut wire).unwrap();
    assert_eq!(
        server_frames(&wire.concat()),
        vec![ServerFrame { fin: true, opcode: CLOSE, payload: vec![0x03, 0xE9] }]
    );
    // The broker's own close afterwards adds nothing.
    let mut wire = Vec::new();
    t.close(&mut wire).unwrap();
    assert!(wire.is_empty());
}

#[test]
fn empty_close_is_echoed_empty() {
    let mut t = open(&WsSettings::default());
    receive(&mut t, &client_frame(true, CLOSE, b"", MASK), &mut BytesMut::new()).unwrap();
    assert!(t.is_closed());
    assert_eq!(close_code(&flush(&mut t)), None);
}

#[test]
fn server_close_goes_after_pending_data_and_waits_for_the_client() {
    let mut t = open(&WsSettings::default());
    let mut wire = Vec::new();
    t.send(&mut vec![Bytes::from_static(b"\xE0\x00")], &mut wire).unwrap();
    t.close(&mut wire).unwrap();
    let frames = server_frames(&wire.concat());
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].opcode, BINARY);
    assert_eq!(frames[1], ServerFrame { fin: true, opcode: CLOSE, payload: vec![0x03, 0xE8] });
    assert!(!t.is_closed(), "the client has not answered yet");
    // Data still coming from the client before its close answer is delivered.
    let mut app = BytesMut::new();
    let answer = [client_frame(true, BINARY, b"x", MASK), client_frame(true, CLOSE, b"\x03\xE8", MASK)].concat();
    receive(&mut t, &answer, &mut app).unwrap();
    assert_eq!(&app[..], b"x");
    assert!(t.is_closed());
    assert!(!t.wants_write(), "no second close frame");
}

#[test]
fn closing_before_the_handshake_sends_nothing() {
    let mut t = Transport::ws(&WsSettings::default());
    let mut wire = Vec::new();
    t.close(&mut wire).unwrap();
    assert!(wire.is_empty());
}
