#![cfg(all(feature = "tls", feature = "ws"))]
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use promptmq_transport::{ClientCertMode, TlsConfig, TlsSettings, Transport, TransportError, WsError, WsSettings};

const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;
const MASK: [u8; 4] = [9, 8, 7, 6];

fn config(dir: &TempDir, mtls: bool) -> TlsConfig {
    let pki = pki();
    let mut s =
        TlsSettings::new(dir.write("server.pem", &pki.server_cert_pem), dir.write("server.key", &pki.server_key_pem));
    if mtls {
        s.client_ca_file = Some(dir.write("ca.pem", &pki.ca_pem));
        s.client_cert = ClientCertMode::Required;
    }
    s.load().unwrap()
}

/// A TLS client that has completed the WebSocket handshake through the server.
fn open_wss(config: &TlsConfig, client_cert: Option<(&str, &str)>, alpn: &[&[u8]], feed_size: usize) -> Pair {
    let mut pair =
        Pair::new(client_config(client_cert, BOTH_VERSIONS, alpn), Transport::wss(config, &WsSettings::default()));
    pair.feed_size = feed_size;
    pair.pump().unwrap();
    assert!(pair.server.is_handshaking(), "TLS is done, the WebSocket handshake is not");
    pair.client_write(upgrade_request("Sec-WebSocket-Protocol: mqtt\r\n").as_bytes());
    pair.pump().unwrap();
    let (response, closed) = pair.client_read();
    assert!(!closed);
    let response = String::from_utf8(response).unwrap();
    assert!(response.starts_with("HTTP/1.1 101 Switching Protocols\r\n"), "{response}");
    assert!(response.contains(&format!("Sec-WebSocket-Accept: {RFC_ACCEPT}\r\n")));
    assert!(!pair.server.is_handshaking());
    assert_eq!(pair.server.ws_subprotocol(), Some("mqtt"));
    pair
}

#[test]
fn mqtt_bytes_flow_both_ways_through_websocket_inside_tls() {
    let dir = TempDir::new();
    for feed_size in [0, 1, 7] {
        let mut pair = open_wss(&config(&dir, false), None, &[b"http/1.1"], feed_size);
        // Browsers offer http/1.1: no ALPN is selected, and the handshake goes on.
        assert_eq!(pair.server.alpn_protocol(), None);

        let mut rng = Rng(5);
        let big = rng.bytes(100_000);
        let frames = [
            client_frame(true, BINARY, b"\x10\x10", MASK),
            client_frame(false, BINARY, b"\x00\x04MQTT", MASK),
            client_frame(true, PING, b"ka", MASK),
            client_frame(true, 0x0, b"\x05\x02\x00\x3c", MASK),
            client_frame(true, BINARY, &big, MASK),
        ]
        .concat();
        pair.client_write(&frames);
        pair.pump().unwrap();
        let mut expected = b"\x10\x10\x00\x04MQTT\x05\x02\x00\x3c".to_vec();
        expected.extend_from_slice(&big);
        assert!(pair.server_app[..] == expected[..], "feed size {feed_size}");
        // The pong went out on its own, encrypted.
        let (bytes, _) = pair.client_read();
        assert_eq!(server_frames(&bytes), vec![ServerFrame { fin: true, opcode: PONG, payload: b"ka".to_vec() }]);

        let chunks: Vec<Bytes> = (0..50u8).map(|i| Bytes::from(vec![i; 1 + i as usize * 100])).collect();
        let sent = chunks.concat();
        let wire = pair.server_send(chunks).unwrap();
        assert_eq!(wire.len(), 1, "one TLS write per send");
        let (bytes, _) = pair.client_read();
        assert_eq!(server_frames(&bytes), vec![ServerFrame { fin: true, opcode: BINARY, payload: sent }]);
    }
}

#[test]
fn client_close_frame_is_echoed_then_close_notify() {
    let dir = TempDir::new();
    let mut pair = open_wss(&config(&dir, false), None, &[], 0);
    pair.client_write(&client_frame(true, CLOSE, b"\x03\xE8", MASK));
    pair.pump().unwrap();
    assert!(pair.server.is_closed());
    let (bytes, closed) = pair.client_read();
    assert!(!closed);
    assert_eq!(server_frames(&bytes), vec![ServerFrame { fin: true, opcode: CLOSE, payload: vec![0x03, 0xE8] }]);
    let mut wire = Vec::new();
    pair.server.close(&mut wire).unwrap();
    pair.deliver(&wire).unwrap();
    assert_eq!(pair.client_read(), (Vec::new(), true));
}

#[test]
fn server_close_sends_close_frame_then_close_notify() {
    let dir = TempDir::new();
    let mut pair = open_wss(&config(&dir, true), Some((&pki().client_cert_pem, &pki().client_key_pem)), &[b"mqtt"], 0);
    assert_eq!(pair.server.peer_common_name().as_deref(), Some("client-1"));
    assert_eq!(pair.server.alpn_protocol(), Some(&b"mqtt"[..]));
    let mut app = vec![Bytes::from_static(b"\xE0\x00")];
    let mut wire = Vec::new();
    pair.server.send(&mut app, &mut wire).unwrap();
    pair.server.close(&mut wire).unwrap();
    pair.deliver(&wire).unwrap();
    let (bytes, closed) = pair.client_read();
    assert!(closed, "close_notify came last");
    let frames = server_frames(&bytes);
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].payload, b"\xE0\x00");
    assert_eq!(frames[1], ServerFrame { fin: true, opcode: CLOSE, payload: vec![0x03, 0xE8] });
}

#[test]
fn websocket_violation_inside_tls_gets_an_encrypted_close_frame() {
    let dir = TempDir::new();
    let mut pair = open_wss(&config(&dir, false), None, &[], 0);
    // Unmasked.
    pair.client_write(&[0x82, 0x01, 0x00]);
    match pair.pump() {
        Err(Failure::Server(TransportError::WebSocket(WsError::Unmasked))) => {}
        other => panic!("expected a WebSocket error, got {other:?}"),
    }
    assert!(pair.server.is_closed());
    pair.server_to_client().unwrap();
    let (bytes, _) = pair.client_read();
    assert_eq!(
        server_frames(&bytes),
        vec![ServerFrame { fin: true, opcode: CLOSE, payload: 1002u16.to_be_bytes().to_vec() }]
    );
}

#[test]
fn bad_upgrade_request_inside_tls_gets_an_encrypted_http_error() {
    let dir = TempDir::new();
    let mut pair = Pair::new(
        client_config(None, BOTH_VERSIONS, &[]),
        Transport::wss(&config(&dir, false), &WsSettings::default()),
    );
    pair.pump().unwrap();
    pair.client_write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n");
    assert!(matches!(pair.pump(), Err(Failure::Server(TransportError::Upgrade(_)))));
    pair.server_to_client().unwrap();
    let (bytes, _) = pair.client_read();
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
}
