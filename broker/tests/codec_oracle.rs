//! Differential test of the codec against an independent implementation, `mqttbytes` 0.6.
//!
//! Each case is a packet built with mqttbytes' types. It is checked both ways:
//! - mqttbytes encodes it, our decoder reads the bytes, and the result must equal the
//!   packet translated field by field into our types (`v4_to_ours` / `v5_to_ours`);
//! - our encoder writes that translation, mqttbytes reads the bytes back, and its packet,
//!   translated again, must equal ours.
//!
//! The translation functions are the statement of what each mqttbytes field means in our
//! model, so a disagreement in either direction points at one field of one packet.

use bytes::{Bytes, BytesMut};
use mqttbytes::{v4, v5};
use promptmq::codec::{
    check_frame, decode_packet, encode_packet, encoded_len, reason, Ack, Auth, ConnAck, Connect, Disconnect, Packet,
    Properties, ProtocolVersion, Publish, QoS, SubAck, Subscribe, SubscribeFilter, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};

const MAX: usize = 1 << 24;

fn qos(q: mqttbytes::QoS) -> QoS {
    QoS::from_u8(q as u8).expect("mqttbytes QoS is 0..=2")
}

fn text(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn opt_text(s: &Option<String>) -> Option<Bytes> {
    s.as_deref().map(text)
}

fn users(u: &[(String, String)]) -> Vec<(Bytes, Bytes)> {
    u.iter().map(|(k, v)| (text(k), text(v))).collect()
}

/// mqttbytes drops an empty user name or password (it has no way to say "present but
/// empty"), so the cases never use empty credentials.
fn login(l: &Option<impl LoginLike>) -> (Option<Bytes>, Option<Bytes>) {
    match l {
        None => (None, None),
        Some(l) => {
            let (u, p) = l.parts();
            let some = |s: &str| (!s.is_empty()).then(|| text(s));
            (some(u), some(p))
        }
    }
}

trait LoginLike {
    fn parts(&self) -> (&str, &str);
}
impl LoginLike for v4::Login {
    fn parts(&self) -> (&str, &str) {
        (&self.username, &self.password)
    }
}
impl LoginLike for v5::Login {
    fn parts(&self) -> (&str, &str) {
        (&self.username, &self.password)
    }
}

fn v4_to_ours(p: &v4::Packet) -> Packet {
    match p {
        v4::Packet::Connect(c) => {
            let (username, password) = login(&c.login);
            Packet::Connect(Connect {
                protocol: ProtocolVersion::V311,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: text(&c.client_id),
                will: c.last_will.as_ref().map(|w| Will {
                    topic: text(&w.topic),
                    payload: w.message.clone(),
                    qos: qos(w.qos),
                    retain: w.retain,
                    properties: Properties::default(),
                }),
                username,
                password,
                properties: Properties::default(),
            })
        }
        v4::Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            // Our ConnAck carries the 5.0 reason code that the 3.1.1 code stands for.
            code: match c.code {
                v4::ConnectReturnCode::Success => reason::SUCCESS,
                v4::ConnectReturnCode::RefusedProtocolVersion => reason::UNSUPPORTED_PROTOCOL_VERSION,
                v4::ConnectReturnCode::BadClientId => reason::CLIENT_IDENTIFIER_NOT_VALID,
                v4::ConnectReturnCode::ServiceUnavailable => reason::SERVER_UNAVAILABLE,
                v4::ConnectReturnCode::BadUserNamePassword => reason::BAD_USER_NAME_OR_PASSWORD,
                v4::ConnectReturnCode::NotAuthorized => reason::NOT_AUTHORIZED,
            },
            properties: Properties::default(),
        }),
        v4::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos(p.qos),
            retain: p.retain,
            topic: text(&p.topic),
            pkid: p.pkid,
            properties: Properties::default(),
            payload: p.payload.clone(),
        }),
        v4::Packet::PubAck(a) => Packet::PubAck(Ack::new(a.pkid, 0)),
        v4::Packet::PubRec(a) => Packet::PubRec(Ack::new(a.pkid, 0)),
        v4::Packet::PubRel(a) => Packet::PubRel(Ack::new(a.pkid, 0)),
        v4::Packet::PubComp(a) => Packet::PubComp(Ack::new(a.pkid, 0)),
        v4::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            properties: Properties::default(),
            filters: s
                .filters
                .iter()
                .map(|f| SubscribeFilter {
                    filter: text(&f.path),
                    options: SubscriptionOptions { qos: qos(f.qos), ..Default::default() },
                })
                .collect(),
        }),
        v4::Packet::SubAck(s) => Packet::SubAck(SubAck {
            pkid: s.pkid,
            properties: Properties::default(),
            reasons: s
                .return_codes
                .iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => *q as u8,
                    v4::SubscribeReasonCode::Failure => 0x80,
                })
                .collect(),
        }),
        v4::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            properties: Properties::default(),
            filters: u.topics.iter().map(|t| text(t)).collect(),
        }),
        v4::Packet::UnsubAck(u) => {
            Packet::UnsubAck(UnsubAck { pkid: u.pkid, properties: Properties::default(), reasons: Vec::new() })
        }
        v4::Packet::PingReq => Packet::PingReq,
        v4::Packet::PingResp => Packet::PingResp,
        v4::Packet::Disconnect => Packet::Disconnect(Disconnect { reason: 0, properties: Properties::default() }),
    }
}

fn ack_props(reason_string: &Option<String>, user: &[(String, String)]) -> Properties {
    Properties { reason_string: opt_text(reason_string), user_properties: users(user), ..Properties::default() }
}

fn v5_to_ours(p: &v5::Packet) -> Packet {
    match p {
        v5::Packet::Connect(c) => {
            let (username, password) = login(&c.login);
            let properties = c.properties.as_ref().map_or_else(Properties::default, |p| Properties {
                session_expiry_interval: p.session_expiry_interval,
                receive_maximum: p.receive_maximum,
                maximum_packet_size: p.max_packet_size,
                topic_alias_maximum: p.topic_alias_max,
                request_response_information: p.request_response_info,
                request_problem_information: p.request_problem_info,
                user_properties: users(&p.user_properties),
                authentication_method: opt_text(&p.authentication_method),
                authentication_data: p.authentication_data.clone(),
                ..Properties::default()
            });
            Packet::Connect(Connect {
                protocol: ProtocolVersion::V5,
                clean_start: c.clean_session,
                keep_alive: c.keep_alive,
                client_id: text(&c.client_id),
                will: c.last_will.as_ref().map(|w| Will {
                    topic: text(&w.topic),
                    payload: w.message.clone(),
                    qos: qos(w.qos),
                    retain: w.retain,
                    properties: w.properties.as_ref().map_or_else(Properties::default, |p| Properties {
                        will_delay_interval: p.delay_interval,
                        payload_format_indicator: p.payload_format_indicator,
                        message_expiry_interval: p.message_expiry_interval,
                        content_type: opt_text(&p.content_type),
                        response_topic: opt_text(&p.response_topic),
                        correlation_data: p.correlation_data.clone(),
                        user_properties: users(&p.user_properties),
                        ..Properties::default()
                    }),
                }),
                username,
                password,
                properties,
            })
        }
        v5::Packet::ConnAck(c) => Packet::ConnAck(ConnAck {
            session_present: c.session_present,
            code: c.code as u8,
            properties: c.properties.as_ref().map_or_else(Properties::default, |p| Properties {
                session_expiry_interval: p.session_expiry_interval,
                receive_maximum: p.receive_max,
                maximum_qos: p.max_qos,
                retain_available: p.retain_available,
                maximum_packet_size: p.max_packet_size,
                assigned_client_identifier: opt_text(&p.assigned_client_identifier),
                topic_alias_maximum: p.topic_alias_max,
                reason_string: opt_text(&p.reason_string),
                user_properties: users(&p.user_properties),
                wildcard_subscription_available: p.wildcard_subscription_available,
                subscription_identifiers_available: p.subscription_identifiers_available,
                shared_subscription_available: p.shared_subscription_available,
                server_keep_alive: p.server_keep_alive,
                response_information: opt_text(&p.response_information),
                server_reference: opt_text(&p.server_reference),
                authentication_method: opt_text(&p.authentication_method),
                authentication_data: p.authentication_data.clone(),
                ..Properties::default()
            }),
        }),
        v5::Packet::Publish(p) => Packet::Publish(Publish {
            dup: p.dup,
            qos: qos(p.qos),
            retain: p.retain,
            topic: text(&p.topic),
            pkid: p.pkid,
            properties: p.properties.as_ref().map_or_else(Properties::default, |p| Properties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: p.topic_alias,
                response_topic: opt_text(&p.response_topic),
                correlation_data: p.correlation_data.clone(),
                user_properties: users(&p.user_properties),
                subscription_identifiers: p
                    .subscription_identifiers
                    .iter()
                    .map(|&id| u32::try_from(id).expect("fits"))
                    .collect(),
                content_type: opt_text(&p.content_type),
                ..Properties::default()
            }),
            payload: p.payload.clone(),
        }),
        v5::Packet::PubAck(a) => Packet::PubAck(Ack {
            pkid: a.pkid,
            reason: a.reason as u8,
            properties: a
                .properties
                .as_ref()
                .map_or_else(Properties::default, |p| ack_props(&p.reason_string, &p.user_properties)),
        }),
        v5::Packet::PubRec(a) => Packet::PubRec(Ack {
            pkid: a.pkid,
            reason: a.reason as u8,
            properties: a
                .properties
                .as_ref()
                .map_or_else(Properties::default, |p| ack_props(&p.reason_string, &p.user_properties)),
        }),
        v5::Packet::PubRel(a) => Packet::PubRel(Ack {
            pkid: a.pkid,
            reason: a.reason as u8,
            properties: a
                .properties
                .as_ref()
                .map_or_else(Properties::default, |p| ack_props(&p.reason_string, &p.user_properties)),
        }),
        v5::Packet::PubComp(a) => Packet::PubComp(Ack {
            pkid: a.pkid,
            reason: a.reason as u8,
            properties: a
                .properties
                .as_ref()
                .map_or_else(Properties::default, |p| ack_props(&p.reason_string, &p.user_properties)),
        }),
        v5::Packet::Subscribe(s) => Packet::Subscribe(Subscribe {
            pkid: s.pkid,
            properties: s.properties.as_ref().map_or_else(Properties::default, |p| Properties {
                subscription_identifiers: p.id.map(|id| u32::try_from(id).expect("fits")).into_iter().collect(),
                user_properties: users(&p.user_properties),
                ..Properties::default()
            }),
            filters: s
                .filters
                .iter()
                .map(|f| SubscribeFilter {
                    filter: text(&f.path),
                    options: SubscriptionOptions {
                        qos: qos(f.qos),
                        no_local: f.nolocal,
                        retain_as_published: f.preserve_retain,
                        retain_handling: match f.retain_forward_rule {
                            v5::RetainForwardRule::OnEverySubscribe => 0,
                            v5::RetainForwardRule::OnNewSubscribe => 1,
                            v5::RetainForwardRule::Never => 2,
                        },
                    },
                })
                .collect(),
        }),
        v5::Packet::SubAck(s) => Packet::SubAck(SubAck {
            pkid: s.pkid,
            properties: s
                .properties
                .as_ref()
                .map_or_else(Properties::default, |p| ack_props(&p.reason_string, &p.user_properties)),
            reasons: s.return_codes.iter().map(|&c| c as u8).collect(),
        }),
        v5::Packet::Unsubscribe(u) => Packet::Unsubscribe(Unsubscribe {
            pkid: u.pkid,
            properties: u.properties.as_ref().map_or_else(Properties::default, |p| Properties {
                user_properties: users(&p.user_properties),
                ..Properties::default()
            }),
            filters: u.filters.iter().map(|t| text(t)).collect(),
        }),
        v5::Packet::UnsubAck(u) => Packet::UnsubAck(UnsubAck {
            pkid: u.pkid,
            properties: u
                .properties
                .as_ref()
                .map_or_else(Properties::default, |p| ack_props(&p.reason_string, &p.user_properties)),
            reasons: u.reasons.iter().map(|&c| c as u8).collect(),
        }),
        v5::Packet::PingReq => Packet::PingReq,
        v5::Packet::PingResp => Packet::PingResp,
        v5::Packet::Disconnect(d) => Packet::Disconnect(Disconnect {
            reason: d.reason_code as u8,
            properties: d.properties.as_ref().map_or_else(Properties::default, |p| Properties {
                session_expiry_interval: p.session_expiry_interval,
                reason_string: opt_text(&p.reason_string),
                user_properties: users(&p.user_properties),
                server_reference: opt_text(&p.server_reference),
                ..Properties::default()
            }),
        }),
    }
}

fn v4_write(p: &v4::Packet, out: &mut BytesMut) {
    let res = match p {
        v4::Packet::Connect(c) => c.write(out),
        v4::Packet::ConnAck(c) => c.write(out),
        v4::Packet::Publish(c) => c.write(out),
        v4::Packet::PubAck(c) => c.write(out),
        v4::Packet::PubRec(c) => c.write(out),
        v4::Packet::PubRel(c) => c.write(out),
        v4::Packet::PubComp(c) => c.write(out),
        v4::Packet::Subscribe(c) => c.write(out),
        v4::Packet::SubAck(c) => c.write(out),
        v4::Packet::Unsubscribe(c) => c.write(out),
        v4::Packet::UnsubAck(c) => c.write(out),
        v4::Packet::PingReq => v4::PingReq.write(out),
        v4::Packet::PingResp => v4::PingResp.write(out),
        v4::Packet::Disconnect => v4::Disconnect.write(out),
    };
    res.expect("mqttbytes encodes");
}

fn v5_write(p: &v5::Packet, out: &mut BytesMut) {
    let res = match p {
        v5::Packet::Connect(c) => c.write(out),
        v5::Packet::ConnAck(c) => c.write(out),
        v5::Packet::Publish(c) => c.write(out),
        v5::Packet::PubAck(c) => c.write(out),
        v5::Packet::PubRec(c) => c.write(out),
        v5::Packet::PubRel(c) => c.write(out),
        v5::Packet::PubComp(c) => c.write(out),
        v5::Packet::Subscribe(c) => c.write(out),
        v5::Packet::SubAck(c) => c.write(out),
        v5::Packet::Unsubscribe(c) => c.write(out),
        v5::Packet::UnsubAck(c) => c.write(out),
        v5::Packet::PingReq => v5::PingReq.write(out),
        v5::Packet::PingResp => v5::PingResp.write(out),
        v5::Packet::Disconnect(c) => c.write(out),
    };
    res.expect("mqttbytes encodes");
}

/// Decodes one frame with our codec, checking that the frame is exactly `bytes`.
fn ours_decode(bytes: &[u8], version: ProtocolVersion, is_connect: bool) -> Packet {
    let frame = check_frame(bytes, MAX).expect("frames").expect("complete frame");
    assert_eq!(frame.total_len, bytes.len(), "one packet, no trailing bytes");
    let known = if is_connect { None } else { Some(version) };
    decode_packet(Bytes::copy_from_slice(bytes), known)
        .unwrap_or_else(|e| panic!("our decoder rejects mqttbytes output {bytes:?}: {e}"))
}

fn ours_encode(p: &Packet, version: ProtocolVersion) -> BytesMut {
    let mut out = BytesMut::new();
    encode_packet(p, version, &mut out, MAX).expect("our encoder");
    assert_eq!(out.len(), encoded_len(p, version));
    out
}

fn check_v4(theirs: v4::Packet) {
    let expected = v4_to_ours(&theirs);
    let mut wire = BytesMut::new();
    v4_write(&theirs, &mut wire);
    let is_connect = matches!(theirs, v4::Packet::Connect(_));
    assert_eq!(ours_decode(&wire, ProtocolVersion::V311, is_connect), expected, "mqttbytes -> ours");

    let mut ours = ours_encode(&expected, ProtocolVersion::V311);
    let read = v4::read(&mut ours, MAX).expect("mqttbytes reads our bytes");
    assert!(ours.is_empty(), "mqttbytes consumed exactly one packet");
    assert_eq!(v4_to_ours(&read), expected, "ours -> mqttbytes");
    assert_eq!(read, theirs, "mqttbytes sees the packet it started from");
}

/// mqttbytes -> ours only; returns our reading of the packet.
fn check_v5_decode(theirs: &v5::Packet) -> Packet {
    let expected = v5_to_ours(theirs);
    let mut wire = BytesMut::new();
    v5_write(theirs, &mut wire);
    let is_connect = matches!(theirs, v5::Packet::Connect(_));
    assert_eq!(ours_decode(&wire, ProtocolVersion::V5, is_connect), expected, "mqttbytes -> ours");
    expected
}

fn check_v5(theirs: v5::Packet) {
    let expected = check_v5_decode(&theirs);
    let mut ours = ours_encode(&expected, ProtocolVersion::V5);
    let read = v5::read(&mut ours, MAX).expect("mqttbytes reads our bytes");
    assert!(ours.is_empty(), "mqttbytes consumed exactly one packet");
    assert_eq!(v5_to_ours(&read), expected, "ours -> mqttbytes");
}

#[test]
fn v311_connect() {
    let mut c = v4::Connect::new("client-1");
    check_v4(v4::Packet::Connect(c.clone()));
    c.keep_alive = 0;
    c.clean_session = false;
    c.set_login("user", "pass");
    check_v4(v4::Packet::Connect(c.clone()));
    c.last_will = Some(v4::LastWill::new("will/topic", vec![0u8, 1, 0xFF], mqttbytes::QoS::ExactlyOnce, true));
    check_v4(v4::Packet::Connect(c.clone()));
    c.login = None;
    c.last_will = Some(v4::LastWill::new("w", Vec::<u8>::new(), mqttbytes::QoS::AtLeastOnce, false));
    c.client_id = String::new();
    check_v4(v4::Packet::Connect(c.clone()));
    c.login = Some(v4::Login::new("only-user", ""));
    check_v4(v4::Packet::Connect(c));
}

#[test]
fn v311_connack() {
    for code in [
        v4::ConnectReturnCode::Success,
        v4::ConnectReturnCode::RefusedProtocolVersion,
        v4::ConnectReturnCode::BadClientId,
        v4::ConnectReturnCode::ServiceUnavailable,
        v4::ConnectReturnCode::BadUserNamePassword,
        v4::ConnectReturnCode::NotAuthorized,
    ] {
        for session_present in [false, true] {
            check_v4(v4::Packet::ConnAck(v4::ConnAck::new(code, session_present)));
        }
    }
}

#[test]
fn v311_publish() {
    check_v4(v4::Packet::Publish(v4::Publish::new("a/b", mqttbytes::QoS::AtMostOnce, "hello")));
    let mut p = v4::Publish::new("a/b/c", mqttbytes::QoS::AtLeastOnce, vec![0u8; 500]);
    p.pkid = 1;
    p.retain = true;
    check_v4(v4::Packet::Publish(p.clone()));
    p.qos = mqttbytes::QoS::ExactlyOnce;
    p.dup = true;
    p.pkid = u16::MAX;
    p.payload = Bytes::new();
    check_v4(v4::Packet::Publish(p.clone()));
    p.payload = Bytes::from(vec![0xA5; 20_000]);
    p.topic = "ünïcödé/topic".into();
    check_v4(v4::Packet::Publish(p));
}

#[test]
fn v311_acks_and_pings() {
    for pkid in [1, 0x1234, u16::MAX] {
        check_v4(v4::Packet::PubAck(v4::PubAck::new(pkid)));
        check_v4(v4::Packet::PubRec(v4::PubRec::new(pkid)));
        check_v4(v4::Packet::PubRel(v4::PubRel::new(pkid)));
        check_v4(v4::Packet::PubComp(v4::PubComp::new(pkid)));
        check_v4(v4::Packet::UnsubAck(v4::UnsubAck::new(pkid)));
    }
    check_v4(v4::Packet::PingReq);
    check_v4(v4::Packet::PingResp);
    check_v4(v4::Packet::Disconnect);
}

#[test]
fn v311_subscribe_unsubscribe() {
    let mut s = v4::Subscribe::new("a/+/c", mqttbytes::QoS::AtMostOnce);
    s.pkid = 7;
    s.add("#".into(), mqttbytes::QoS::AtLeastOnce);
    s.add("$share/g/x".into(), mqttbytes::QoS::ExactlyOnce);
    check_v4(v4::Packet::Subscribe(s));
    let codes = vec![
        v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtMostOnce),
        v4::SubscribeReasonCode::Success(mqttbytes::QoS::AtLeastOnce),
        v4::SubscribeReasonCode::Success(mqttbytes::QoS::ExactlyOnce),
        v4::SubscribeReasonCode::Failure,
    ];
    check_v4(v4::Packet::SubAck(v4::SubAck::new(7, codes)));
    let mut u = v4::Unsubscribe::new("a/+/c");
    u.pkid = 8;
    u.topics.push("#".into());
    check_v4(v4::Packet::Unsubscribe(u));
}

fn v5_connect_properties() -> v5::ConnectProperties {
    v5::ConnectProperties {
        session_expiry_interval: Some(3600),
        receive_maximum: Some(100),
        max_packet_size: Some(1 << 20),
        topic_alias_max: Some(16),
        request_response_info: Some(1),
        request_problem_info: Some(0),
        user_properties: vec![("k".into(), "v".into()), ("k".into(), "v2".into())],
        authentication_method: Some("SCRAM-SHA-256".into()),
        authentication_data: Some(Bytes::from_static(&[1, 2, 3])),
    }
}

#[test]
fn v5_connect() {
    let mut c = v5::Connect::new("client-5");
    check_v5(v5::Packet::Connect(c.clone()));
    c.properties = Some(v5_connect_properties());
    c.keep_alive = 300;
    check_v5(v5::Packet::Connect(c.clone()));
    c.set_login("user", "pass");
    c.clean_session = false;
    let mut will = v5::LastWill::new("will/t", vec![9u8; 10], mqttbytes::QoS::AtLeastOnce, true);
    check_v5(v5::Packet::Connect(v5::Connect { last_will: Some(will.clone()), ..c.clone() }));
    will.properties = Some(v5::WillProperties {
        delay_interval: Some(30),
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(120),
        content_type: Some("text/plain".into()),
        response_topic: Some("reply/to".into()),
        correlation_data: Some(Bytes::from_static(b"corr")),
        user_properties: vec![("w".into(), "x".into())],
    });
    check_v5(v5::Packet::Connect(v5::Connect { last_will: Some(will), ..c.clone() }));
    // A password without a user name is legal in 5.0.
    c.login = Some(v5::Login::new("", "token"));
    c.properties = None;
    check_v5(v5::Packet::Connect(c));
}

#[test]
fn v5_connack() {
    // mqttbytes leaves out the property length when there are no properties, which 5.0
    // does not allow (spec 3.2.2.3.1), so every case carries a property section.
    let mut props = v5::ConnAckProperties::new();
    for (code, session_present) in [
        (v5::ConnectReturnCode::Success, true),
        (v5::ConnectReturnCode::NotAuthorized, false),
        (v5::ConnectReturnCode::UnsupportedProtocolVersion, false),
        (v5::ConnectReturnCode::ServerMoved, false),
    ] {
        let mut c = v5::ConnAck::new(code, session_present);
        c.properties = Some(props.clone());
        check_v5(v5::Packet::ConnAck(c));
    }
    props.session_expiry_interval = Some(0);
    props.receive_max = Some(10);
    props.max_qos = Some(1);
    props.retain_available = Some(0);
    props.max_packet_size = Some(65_536);
    props.assigned_client_identifier = Some("auto-42".into());
    props.topic_alias_max = Some(5);
    props.reason_string = Some("welcome".into());
    props.user_properties = vec![("a".into(), "b".into())];
    props.wildcard_subscription_available = Some(1);
    props.subscription_identifiers_available = Some(0);
    props.shared_subscription_available = Some(1);
    props.server_keep_alive = Some(60);
    props.response_information = Some("resp/".into());
    props.server_reference = Some("other:1883".into());
    props.authentication_method = Some("PLAIN".into());
    props.authentication_data = Some(Bytes::from_static(b"data"));
    let mut c = v5::ConnAck::new(v5::ConnectReturnCode::Success, false);
    c.properties = Some(props);
    check_v5(v5::Packet::ConnAck(c));
}

#[test]
fn v5_publish() {
    check_v5(v5::Packet::Publish(v5::Publish::new("a/b", mqttbytes::QoS::AtMostOnce, "x")));
    let mut p = v5::Publish::new("a/b", mqttbytes::QoS::AtLeastOnce, vec![1u8; 200]);
    p.pkid = 10;
    p.retain = true;
    check_v5(v5::Packet::Publish(p.clone()));
    p.qos = mqttbytes::QoS::ExactlyOnce;
    p.dup = true;
    p.properties = Some(v5::PublishProperties {
        payload_format_indicator: Some(1),
        message_expiry_interval: Some(60),
        topic_alias: Some(2),
        response_topic: Some("resp/topic".into()),
        correlation_data: Some(Bytes::from_static(&[0, 1, 2])),
        user_properties: vec![("u".into(), "1".into()), ("u".into(), "2".into())],
        subscription_identifiers: vec![1, 200, 268_435_455],
        content_type: Some("application/json".into()),
    });
    check_v5(v5::Packet::Publish(p.clone()));
    // Empty topic with a Topic Alias (spec 3.3.2.3.4).
    p.topic = String::new();
    p.properties = Some(v5::PublishProperties {
        payload_format_indicator: None,
        message_expiry_interval: None,
        topic_alias: Some(2),
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
        subscription_identifiers: Vec::new(),
        content_type: None,
    });
    check_v5(v5::Packet::Publish(p));
}

#[test]
fn v5_acks() {
    let props = |s: &str| (Some(s.to_string()), vec![("k".to_string(), "v".to_string())]);
    for pkid in [1, 0x0102, u16::MAX] {
        check_v5(v5::Packet::PubAck(v5::PubAck::new(pkid)));
        check_v5(v5::Packet::PubRec(v5::PubRec::new(pkid)));
        check_v5(v5::Packet::PubRel(v5::PubRel::new(pkid)));
        check_v5(v5::Packet::PubComp(v5::PubComp::new(pkid)));

        let mut a = v5::PubAck::new(pkid);
        a.reason = v5::PubAckReason::NoMatchingSubscribers;
        check_v5(v5::Packet::PubAck(a.clone()));
        let (reason_string, user_properties) = props("nope");
        a.reason = v5::PubAckReason::QuotaExceeded;
        a.properties = Some(v5::PubAckProperties { reason_string, user_properties });
        check_v5(v5::Packet::PubAck(a));

        let mut r = v5::PubRec::new(pkid);
        r.reason = v5::PubRecReason::PacketIdentifierInUse;
        check_v5(v5::Packet::PubRec(r.clone()));
        let (reason_string, user_properties) = props("in use");
        r.properties = Some(v5::PubRecProperties { reason_string, user_properties });
        check_v5(v5::Packet::PubRec(r));

        let mut l = v5::PubRel::new(pkid);
        l.reason = v5::PubRelReason::PacketIdentifierNotFound;
        check_v5(v5::Packet::PubRel(l.clone()));
        let (reason_string, user_properties) = props("gone");
        l.properties = Some(v5::PubRelProperties { reason_string, user_properties });
        check_v5(v5::Packet::PubRel(l));

        let mut c = v5::PubComp::new(pkid);
        let (reason_string, user_properties) = props("done");
        c.properties = Some(v5::PubCompProperties { reason_string, user_properties });
        check_v5(v5::Packet::PubComp(c));
    }
}

#[test]
fn v5_subscribe_and_suback() {
    let mut s = v5::Subscribe::new("a/+/c", mqttbytes::QoS::AtMostOnce);
    s.pkid = 3;
    check_v5(v5::Packet::Subscribe(s.clone()));
    let mut f = v5::SubscribeFilter::new("#".into(), mqttbytes::QoS::AtLeastOnce);
    f.set_nolocal(true).set_retain_forward_rule(v5::RetainForwardRule::OnNewSubscribe);
    s.filters.push(f);
    let mut f = v5::SubscribeFilter::new("$share/g/t".into(), mqttbytes::QoS::ExactlyOnce);
    f.set_preserve_retain(true).set_retain_forward_rule(v5::RetainForwardRule::Never);
    s.filters.push(f);
    check_v5(v5::Packet::Subscribe(s.clone()));
    s.properties = Some(v5::SubscribeProperties { id: Some(4242), user_properties: vec![("s".into(), "p".into())] });
    check_v5(v5::Packet::Subscribe(s));

    let codes = vec![
        v5::SubscribeReasonCode::QoS0,
        v5::SubscribeReasonCode::QoS1,
        v5::SubscribeReasonCode::QoS2,
        v5::SubscribeReasonCode::Unspecified,
        v5::SubscribeReasonCode::NotAuthorized,
        v5::SubscribeReasonCode::TopicFilterInvalid,
        v5::SubscribeReasonCode::SharedSubscriptionsNotSupported,
        v5::SubscribeReasonCode::WildcardSubscriptionsNotSupported,
    ];
    let mut a = v5::SubAck::new(3, codes);
    check_v5(v5::Packet::SubAck(a.clone()));
    a.properties = Some(v5::SubAckProperties {
        reason_string: Some("partly".into()),
        user_properties: vec![("x".into(), "y".into())],
    });
    check_v5(v5::Packet::SubAck(a));
}

#[test]
fn v5_unsubscribe_and_unsuback() {
    let mut u = v5::Unsubscribe::new("a/+/c");
    u.pkid = 9;
    u.filters.push("#".into());
    check_v5(v5::Packet::Unsubscribe(u.clone()));
    u.properties = Some(v5::UnsubscribeProperties { user_properties: vec![("a".into(), "b".into())] });
    check_v5(v5::Packet::Unsubscribe(u));

    let mut a = v5::UnsubAck::new(9);
    a.reasons = vec![v5::UnsubAckReason::Success, v5::UnsubAckReason::NoSubscriptionExisted];
    check_v5(v5::Packet::UnsubAck(a.clone()));
    a.properties = Some(v5::UnsubAckProperties {
        reason_string: Some("r".into()),
        user_properties: vec![("k".into(), "v".into())],
    });
    check_v5(v5::Packet::UnsubAck(a));
}

#[test]
fn v5_pings_and_disconnect() {
    check_v5(v5::Packet::PingReq);
    check_v5(v5::Packet::PingResp);
    let mut d = v5::Disconnect::new();
    d.reason_code = v5::DisconnectReasonCode::DisconnectWithWillMessage;
    // A reason code without properties (Remaining Length 1, spec 3.14.2.2.1): mqttbytes
    // writes it but its reader then wants a property length, so it cannot read these bytes
    // back from itself either. Only our side of the trip is checked.
    let expected = check_v5_decode(&v5::Packet::Disconnect(d.clone()));
    let mut ours = ours_encode(&expected, ProtocolVersion::V5);
    assert_eq!(&ours[..], &[0xE0, 0x01, 0x04]);
    assert_eq!(v5::read(&mut ours, MAX), Err(mqttbytes::Error::InsufficientBytes(1)));
    d.reason_code = v5::DisconnectReasonCode::ServerMoved;
    d.properties = Some(v5::DisconnectProperties {
        session_expiry_interval: Some(10),
        reason_string: Some("moving".into()),
        user_properties: vec![("k".into(), "v".into())],
        server_reference: Some("elsewhere".into()),
    });
    check_v5(v5::Packet::Disconnect(d));
}

/// A normal v5 DISCONNECT is where the two sides differ in form but not in meaning:
/// mqttbytes writes `E0 00` (which we read as reason 0) and we write the same two bytes,
/// but mqttbytes' reader refuses any packet other than PINGREQ/PINGRESP with a Remaining
/// Length of 0 in 5.0, although spec 3.14.2.1 allows exactly that for DISCONNECT.
#[test]
fn v5_normal_disconnect() {
    let theirs = v5::Disconnect::new();
    let mut wire = BytesMut::new();
    theirs.write(&mut wire).expect("mqttbytes encodes");
    assert_eq!(&wire[..], &[0xE0, 0x00]);
    let expected = Packet::Disconnect(Disconnect { reason: 0, properties: Properties::default() });
    assert_eq!(ours_decode(&wire, ProtocolVersion::V5, false), expected);
    let mut ours = ours_encode(&expected, ProtocolVersion::V5);
    assert_eq!(&ours[..], &[0xE0, 0x00]);
    assert_eq!(v5::read(&mut ours, MAX), Err(mqttbytes::Error::PayloadRequired));
}

/// Our AUTH has no mqttbytes counterpart; a stream of both libraries' packets must still
/// frame correctly around it.
#[test]
fn mixed_stream_frames_packet_by_packet() {
    let mut stream = BytesMut::new();
    let mut expected = Vec::new();
    let mut p = v5::Publish::new("s/t", mqttbytes::QoS::AtLeastOnce, vec![3u8; 300]);
    p.pkid = 5;
    v5_write(&v5::Packet::Publish(p.clone()), &mut stream);
    expected.push(v5_to_ours(&v5::Packet::Publish(p)));
    let auth = Packet::Auth(Auth {
        reason: reason::CONTINUE_AUTHENTICATION,
        properties: Properties { authentication_method: Some(text("SCRAM")), ..Properties::default() },
    });
    encode_packet(&auth, ProtocolVersion::V5, &mut stream, MAX).expect("encodes");
    expected.push(auth);
    v5_write(&v5::Packet::PingReq, &mut stream);
    expected.push(Packet::PingReq);

    let mut got = Vec::new();
    while let Some(frame) = check_frame(&stream, MAX).expect("frames") {
        let bytes = stream.split_to(frame.total_len).freeze();
        got.push(decode_packet(bytes, Some(ProtocolVersion::V5)).expect("decodes"));
    }
    assert!(stream.is_empty());
    assert_eq!(got, expected);
}
