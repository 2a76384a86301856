#![cfg(all(feature = "tls", feature = "ws"))] // tests/common builds certificates with rustls
#![allow(clippy::unwrap_used)]

mod common;

use bytes::Bytes;
use common::*;
use promptmq_transport::rustls::{self, CertificateError};
use promptmq_transport::{
    ClientCertMode, MinTlsVersion, TlsConfig, TlsConfigError, TlsSettings, Transport, TransportError,
};

/// Writes the test PKI's files and returns settings using them (no client CA).
fn settings(dir: &TempDir) -> TlsSettings {
    let pki = pki();
    TlsSettings::new(dir.write("server.pem", &pki.server_cert_pem), dir.write("server.key", &pki.server_key_pem))
}

fn mtls_settings(dir: &TempDir, mode: ClientCertMode) -> TlsSettings {
    let mut s = settings(dir);
    s.client_ca_file = Some(dir.write("ca.pem", &pki().ca_pem));
    s.client_cert = mode;
    s
}

fn load(settings: &TlsSettings) -> TlsConfig {
    settings.load().unwrap()
}

fn good_client() -> Option<(&'static str, &'static str)> {
    Some((&pki().client_cert_pem, &pki().client_key_pem))
}

fn rogue_client() -> Option<(&'static str, &'static str)> {
    Some((&pki().rogue_cert_pem, &pki().rogue_key_pem))
}

fn connected(config: &TlsConfig, client: Option<(&str, &str)>) -> Pair {
    let mut pair = Pair::new(client_config(client, BOTH_VERSIONS, &[]), Transport::tls(config));
    pair.pump().unwrap();
    assert!(!pair.client.is_handshaking());
    assert!(!pair.server.is_handshaking());
    pair
}

#[test]
fn application_data_flows_both_ways() {
    let dir = TempDir::new();
    let mut pair = connected(&load(&settings(&dir)), None);
    assert_eq!(pair.server.tls_version(), Some(rustls::ProtocolVersion::TLSv1_3));
    assert!(!pair.server.wants_write());

    pair.client_write(b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c");
    pair.pump().unwrap();
    assert_eq!(&pair.server_app[..], b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c");

    let chunks: Vec<Bytes> = (0..200u8).map(|i| Bytes::from(vec![i; 7])).collect();
    let expected: Vec<u8> = chunks.concat();
    let wire = pair.server_send(chunks).unwrap();
    // Many small chunks are packed into records together, and handed over as one chunk.
    assert_eq!(wire.len(), 1);
    assert!(wire[0].len() < expected.len() + 200, "one record per chunk would cost more: {}", wire[0].len());
    assert_eq!(pair.client_read(), (expected, false));
    assert!(!pair.server.is_closed());
}

#[test]
fn handshake_and_data_fed_one_byte_at_a_time() {
    let dir = TempDir::new();
    let mut pair = Pair::new(client_config(None, BOTH_VERSIONS, &[]), Transport::tls(&load(&settings(&dir))));
    pair.feed_size = 1;
    pair.pump().unwrap();
    assert!(!pair.server.is_handshaking());
    let data: Vec<u8> = Rng(7).bytes(40_000);
    pair.client_write(&data);
    pair.pump().unwrap();
    assert_eq!(&pair.server_app[..], &data[..]);
}

#[test]
fn large_transfers_keep_their_bytes_in_order() {
    let dir = TempDir::new();
    let mut pair = connected(&load(&settings(&dir)), None);
    let mut rng = Rng(99);
    let up = rng.bytes(1 << 20);
    pair.client_write(&up);
    pair.pump().unwrap();
    assert_eq!(pair.server_app.len(), up.len());
    assert!(pair.server_app[..] == up[..]);

    let chunks: Vec<Bytes> = (0..300).map(|i| Bytes::from(rng.bytes(1 + (i * 37) % 9000))).collect();
    let expected = chunks.concat();
    pair.server_send(chunks).unwrap();
    let (got, closed) = pair.client_read();
    assert!(!closed);
    assert!(got == expected);
}

#[test]
fn tls12_client_is_served_by_default() {
    let dir = TempDir::new();
    let config = load(&settings(&dir));
    let mut pair = Pair::new(client_config(None, &[&rustls::version::TLS12], &[]), Transport::tls(&config));
    pair.pump().unwrap();
    assert_eq!(pair.server.tls_version(), Some(rustls::ProtocolVersion::TLSv1_2));
    pair.client_write(b"over 1.2");
    pair.pump().unwrap();
    assert_eq!(&pair.server_app[..], b"over 1.2");
}

#[test]
fn tls12_client_is_refused_when_the_minimum_is_13() {
    let dir = TempDir::new();
    let mut s = settings(&dir);
    s.min_version = "1.3".parse().unwrap();
    assert_eq!(s.min_version, MinTlsVersion::Tls13);
    let mut pair = Pair::new(client_config(None, &[&rustls::version::TLS12], &[]), Transport::tls(&load(&s)));
    match pair.pump() {
        Err(Failure::Server(TransportError::Tls(rustls::Error::PeerIncompatible(_)))) => {}
        other => panic!("expected a version refusal, got {other:?}"),
    }
    assert!(pair.server.is_closed());
    assert!(pair.server.wants_write(), "the alert is pending");
    // The client is told why.
    assert!(matches!(pair.server_to_client(), Err(Failure::Client(rustls::Error::AlertReceived(_)))));
}

#[test]
fn min_version_spellings() {
    assert_eq!("1.2".parse::<MinTlsVersion>(), Ok(MinTlsVersion::Tls12));
    assert_eq!("tlsv1.3".parse::<MinTlsVersion>(), Ok(MinTlsVersion::Tls13));
    assert_eq!(" TLSv1.2 ".parse::<MinTlsVersion>(), Ok(MinTlsVersion::Tls12));
    assert!("1.1".parse::<MinTlsVersion>().is_err());
}

#[test]
fn mutual_tls_accepts_a_client_certificate_from_the_ca() {
    let dir = TempDir::new();
    let mut pair = connected(&load(&mtls_settings(&dir, ClientCertMode::Required)), good_client());
    assert_eq!(pair.server.peer_common_name().as_deref(), Some("client-1"));
    assert_eq!(pair.server.peer_certificates().map(<[_]>::len), Some(1));
    pair.client_write(b"hi");
    pair.pump().unwrap();
    assert_eq!(&pair.server_app[..], b"hi");
}

#[test]
fn mutual_tls_refuses_a_client_without_certificate() {
    let dir = TempDir::new();
    let config = load(&mtls_settings(&dir, ClientCertMode::Required));
    let mut pair = Pair::new(client_config(None, BOTH_VERSIONS, &[]), Transport::tls(&config));
    match pair.pump() {
        Err(Failure::Server(TransportError::Tls(rustls::Error::NoCertificatesPresented))) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(pair.server.is_closed());
    assert_eq!(pair.server.peer_common_name(), None);
    assert!(matches!(pair.server_to_client(), Err(Failure::Client(rustls::Error::AlertReceived(_)))));
    // Whatever comes after the failure is ignored.
    pair.feed_server(b"\x17\x03\x03\x00\x05hello").unwrap();
    assert!(pair.server_app.is_empty());
}

#[test]
fn mutual_tls_refuses_a_certificate_from_another_ca() {
    let dir = TempDir::new();
    let config = load(&mtls_settings(&dir, ClientCertMode::Required));
    let mut pair = Pair::new(client_config(rogue_client(), BOTH_VERSIONS, &[]), Transport::tls(&config));
    match pair.pump() {
        // Same issuer name, other key: the signature does not verify.
        Err(Failure::Server(TransportError::Tls(rustls::Error::InvalidCertificate(
            CertificateError::BadSignature | CertificateError::UnknownIssuer,
        )))) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(pair.server.is_closed());
    assert_eq!(pair.server.peer_common_name(), None);
}

#[test]
fn optional_client_certificates() {
    let dir = TempDir::new();
    let config = load(&mtls_settings(&dir, ClientCertMode::Optional));
    let pair = connected(&config, None);
    assert_eq!(pair.server.peer_common_name(), None);
    let pair = connected(&config, good_client());
    assert_eq!(pair.server.peer_common_name().as_deref(), Some("client-1"));
    // A certificate that is presented must still be valid.
    let mut pair = Pair::new(client_config(rogue_client(), BOTH_VERSIONS, &[]), Transport::tls(&config));
    assert!(matches!(pair.pump(), Err(Failure::Server(TransportError::Tls(_)))));
}

#[test]
fn no_client_ca_means_no_client_certificate_requested() {
    let dir = TempDir::new();
    // The client has a certificate, but is not asked for it.
    let pair = connected(&load(&settings(&dir)), good_client());
    assert_eq!(pair.server.peer_certificates(), None);
    assert_eq!(pair.server.peer_common_name(), None);
}

#[test]
fn alpn_mqtt_is_selected_when_offered_and_not_required() {
    let dir = TempDir::new();
    let config = load(&settings(&dir));
    type Offer = &'static [&'static [u8]];
    let cases: [(Offer, Option<&[u8]>); 4] = [
        (&[b"mqtt"], Some(b"mqtt")),
        (&[b"x-amzn-mqtt-ca", b"mqtt"], Some(b"mqtt")),
        (&[b"http/1.1"], None),
        (&[], None),
    ];
    for (offered, selected) in cases {
        let mut pair = Pair::new(client_config(None, BOTH_VERSIONS, offered), Transport::tls(&config));
        pair.pump().unwrap();
        assert!(!pair.server.is_handshaking(), "offered {offered:?}");
        assert_eq!(pair.server.alpn_protocol(), selected);
        assert_eq!(pair.client.alpn_protocol(), selected);
        assert_eq!(pair.server.server_name(), Some("localhost"));
    }
}

#[test]
fn client_close_notify_ends_the_stream() {
    let dir = TempDir::new();
    let mut pair = connected(&load(&settings(&dir)), None);
    pair.client_write(b"last words");
    pair.client.send_close_notify();
    pair.pump().unwrap();
    assert_eq!(&pair.server_app[..], b"last words");
    assert!(pair.server.is_closed());
    // Our own close_notify in answer.
    let mut wire = Vec::new();
    pair.server.close(&mut wire).unwrap();
    pair.deliver(&wire).unwrap();
    assert_eq!(pair.client_read(), (Vec::new(), true));
}

#[test]
fn server_close_sends_close_notify_after_pending_data_and_drops_later_data() {
    let dir = TempDir::new();
    let mut pair = connected(&load(&settings(&dir)), None);
    let mut app = vec![Bytes::from_static(b"goodbye")];
    let mut wire = Vec::new();
    pair.server.send(&mut app, &mut wire).unwrap();
    pair.server.close(&mut wire).unwrap();
    pair.deliver(&wire).unwrap();
    assert_eq!(pair.client_read(), (b"goodbye".to_vec(), true));
    let wire = pair.server_send(vec![Bytes::from_static(b"too late")]).unwrap();
    assert!(wire.is_empty());
    // Closing twice sends nothing more.
    let mut wire = Vec::new();
    pair.server.close(&mut wire).unwrap();
    assert!(wire.is_empty());
}

#[test]
fn garbage_instead_of_a_client_hello_is_refused() {
    let dir = TempDir::new();
    let mut t = Transport::tls(&load(&settings(&dir)));
    let mut wire = bytes::BytesMut::from(&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..]);
    let mut app = bytes::BytesMut::new();
    assert!(matches!(t.receive(&mut wire, &mut app), Err(TransportError::Tls(_))));
    assert!(wire.is_empty());
    assert!(t.is_closed());
    assert!(app.is_empty());
}

#[test]
fn rsa_pkcs1_key_loads_and_serves() {
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let config = TlsSettings::new(data.join("rsa-cert.pem"), data.join("rsa-pkcs1-key.pem")).load().unwrap();
    // The fixture is self-signed: trust it directly.
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(data.join("rsa-cert.pem")).unwrap();
    use rustls::pki_types::pem::PemObject;
    roots.add(rustls::pki_types::CertificateDer::from_pem_slice(&pem).unwrap()).unwrap();
    let client =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let mut pair = Pair::new(std::sync::Arc::new(client), Transport::tls(&config));
    pair.pump().unwrap();
    assert!(!pair.server.is_handshaking());
}

#[test]
fn key_formats_pkcs8_and_sec1_and_a_combined_file() {
    let dir = TempDir::new();
    let pki = pki();
    let cert = dir.write("server.pem", &pki.server_cert_pem);
    // rcgen writes PKCS#8.
    assert!(pki.server_key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
    let sec1 = sec1_from_pkcs8(&pki.server_key_pem);
    let key = dir.write("sec1.key", &sec1);
    let config = TlsSettings::new(&cert, &key).load().unwrap();
    let mut pair = Pair::new(client_config(None, BOTH_VERSIONS, &[]), Transport::tls(&config));
    pair.pump().unwrap();
    assert!(!pair.server.is_handshaking());
    // Certificate and key in one file, as some deployments keep them.
    let both = dir.write("both.pem", format!("{}{}", pki.server_cert_pem, pki.server_key_pem));
    TlsSettings::new(&both, &both).load().unwrap();
}

/// Re-encodes an EC PKCS#8 key as SEC1 (`BEGIN EC PRIVATE KEY`): the SEC1 structure is the
/// PKCS#8 privateKey OCTET STRING's content, with the curve OID added as its parameters.
fn sec1_from_pkcs8(pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes()).unwrap();
    let der = der.secret_pkcs8_der();
    // PrivateKeyInfo ::= SEQUENCE { INTEGER 0, AlgorithmIdentifier { ecPublicKey, curve }, OCTET STRING }
    fn tlv(d: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, at) = if d[1] < 0x80 { (d[1] as usize, 2) } else { (d[2] as usize, 3) };
        (d[0], &d[at..at + len], &d[at + len..])
    }
    let (_, info, _) = tlv(der);
    let (_, _, rest) = tlv(info); // version
    let (_, alg, rest) = tlv(rest);
    let (_, _ec_oid, curve) = tlv(alg);
    let (tag, octets, _) = tlv(rest);
    assert_eq!(tag, 0x04);
    // ECPrivateKey ::= SEQUENCE { INTEGER 1, OCTET STRING key, [0] curve OPTIONAL, [1] public OPTIONAL }
    let (_, ec_key, _) = tlv(octets);
    let (_, _, rest) = tlv(ec_key); // version
    let (_, private, rest) = tlv(rest);
    let mut body = vec![0x02, 0x01, 0x01, 0x04, private.len() as u8];
    body.extend_from_slice(private);
    body.push(0xA0);
    body.push(curve.len() as u8);
    body.extend_from_slice(curve);
    body.extend_from_slice(rest); // [1] public key, as ring wrote it
    let mut seq = vec![0x30];
    if body.len() < 0x80 {
        seq.push(body.len() as u8);
    } else {
        seq.extend_from_slice(&[0x81, body.len() as u8]);
    }
    seq.extend_from_slice(&body);
    let b64 = base64_lines(&seq);
    format!("-----BEGIN EC PRIVATE KEY-----\n{b64}-----END EC PRIVATE KEY-----\n")
}

fn base64_lines(data: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for g in data.chunks(3) {
        let n = (g[0] as u32) << 16 | (*g.get(1).unwrap_or(&0) as u32) << 8 | *g.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            s.push(if i <= g.len() { A[(n >> (18 - 6 * i)) as usize & 63] as char } else { '=' });
        }
    }
    let mut out = String::new();
    for line in s.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn loading_errors_name_the_file_and_the_problem() {
    let dir = TempDir::new();
    let pki = pki();
    let cert = dir.write("server.pem", &pki.server_cert_pem);
    let key = dir.write("server.key", &pki.server_key_pem);
    let missing = dir.path().join("missing.pem");
    let text = |r: Result<TlsConfig, TlsConfigError>| r.unwrap_err().to_string();

    let e = TlsSettings::new(&missing, &key).load().unwrap_err();
    assert!(matches!(e, TlsConfigError::Read { .. }));
    assert!(e.to_string().contains("missing.pem"), "{e}");

    let e = text(TlsSettings::new(&cert, &missing).load());
    assert!(e.contains("missing.pem"), "{e}");

    let no_cert = dir.write("nocert.pem", "just some text\n");
    let e = TlsSettings::new(&no_cert, &key).load().unwrap_err();
    assert!(matches!(e, TlsConfigError::NoCertificate { .. }), "{e}");
    assert!(e.to_string().contains("nocert.pem"), "{e}");

    // A key file holding only a certificate.
    let e = TlsSettings::new(&cert, &cert).load().unwrap_err();
    assert!(matches!(e, TlsConfigError::NoKey { .. }), "{e}");
    assert!(e.to_string().contains("server.pem: no private key"), "{e}");

    let truncated =
        dir.write("truncated.key", "-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n");
    let e = TlsSettings::new(&cert, &truncated).load().unwrap_err();
    assert!(matches!(e, TlsConfigError::Pem { .. }), "{e}");
    assert!(e.to_string().contains("truncated.key"), "{e}");

    let bad_base64 = dir.write("bad64.key", "-----BEGIN PRIVATE KEY-----\n!!!!\n-----END PRIVATE KEY-----\n");
    let e = TlsSettings::new(&cert, &bad_base64).load().unwrap_err();
    assert!(matches!(e, TlsConfigError::Pem { .. }), "{e}");

    // A valid key that is not the certificate's.
    let other_key = dir.write("client.key", &pki.client_key_pem);
    let e = TlsSettings::new(&cert, &other_key).load().unwrap_err();
    assert!(matches!(e, TlsConfigError::CertKey { .. }), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("server.pem") && msg.contains("client.key"), "{msg}");

    // A key that is not a key at all.
    let junk_key = dir.write("junk.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n");
    let e = TlsSettings::new(&cert, &junk_key).load().unwrap_err();
    assert!(matches!(e, TlsConfigError::CertKey { .. }), "{e}");

    let mut s = TlsSettings::new(&cert, &key);
    s.client_ca_file = Some(missing.clone());
    let e = s.load().unwrap_err();
    assert!(e.to_string().contains("missing.pem"), "{e}");
    s.client_ca_file = Some(no_cert.clone());
    assert!(matches!(s.load().unwrap_err(), TlsConfigError::NoCertificate { .. }));
    s.client_ca_file = Some(dir.write("junk-ca.pem", "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"));
    let e = s.load().unwrap_err();
    assert!(matches!(e, TlsConfigError::BadCa { .. }), "{e}");
    assert!(e.to_string().contains("junk-ca.pem"), "{e}");
}
