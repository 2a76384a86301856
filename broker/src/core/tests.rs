//! Scenario tests of the sans-IO core: several [`Core`]s wired together in memory, driven
//! with an injected clock, so that timer behaviour (keep-alive, will delay, session
//! expiry, message expiry) is tested without sleeping.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Action, Core};
use crate::codec::{
    self, reason, Ack, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe,
    SubscribeFilter, SubscriptionOptions, Will,
};
use crate::config::Config;
use crate::persist::Record;
use crate::registry::Registry;
use crate::session::ConnId;

struct Cluster {
    cores: Vec<Core>,
    inbox: HashMap<(usize, ConnId), BytesMut>,
    versions: HashMap<(usize, ConnId), ProtocolVersion>,
    closed: HashSet<(usize, ConnId)>,
    now: Instant,
}

type Client = (usize, ConnId);

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster::with_config(n, Config::default())
    }

    fn with_config(n: usize, config: Config) -> Cluster {
        let config = Arc::new(config);
        let registry = Arc::new(Registry::new());
        let clock = crate::persist::WallClock { anchor: Instant::now(), anchor_unix_ms: 1_700_000_000_000 };
        let cores = (0..n).map(|i| Core::new(i, n, Arc::clone(&config), Arc::clone(&registry), 7, clock)).collect();
        Cluster { cores, inbox: HashMap::new(), versions: HashMap::new(), closed: HashSet::new(), now: Instant::now() }
    }

    /// Runs every action until the system is quiet, as the driver would.
    fn settle(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.cores.len() {
                let mut actions = Vec::new();
                self.cores[i].take_actions(&mut actions);
                for a in actions {
                    any = true;
                    match a {
                        Action::Write(c, b) => self.inbox.entry((i, c)).or_default().extend_from_slice(&b),
                        Action::Close(c) => {
                            self.closed.insert((i, c));
                        }
                        Action::Send(to, msg) => self.cores[to].on_message(msg, self.now),
                        Action::Overloaded => {}
                        Action::CheckLogin(check) => {
                            let verdict =
                                self.cores[i].access().map_or(Ok(crate::access::Login::Anonymous), |a| check.run(&a));
                            self.cores[i].on_login(check.conn, verdict, self.now);
                        }
                    }
                }
            }
            if !any {
                break;
            }
        }
    }

    fn advance(&mut self, d: Duration) {
        // Tick in small steps, as the driver's ticker does.
        let end = self.now + d;
        while self.now < end {
            self.now = (self.now + Duration::from_millis(100)).min(end);
            for c in &mut self.cores {
                c.on_tick(self.now);
            }
            self.settle();
        }
    }

    fn send(&mut self, client: Client, packet: Packet) {
        let version = self.versions.get(&client).copied().unwrap_or(ProtocolVersion::V5);
        let mut buf = BytesMut::new();
        codec::encode_packet(&packet, version, &mut buf, usize::MAX).expect("encode");
        self.cores[client.0].on_bytes(client.1, &mut buf, self.now);
        self.settle();
    }

    fn open(&mut self, core: usize, connect: Connect) -> Client {
        let id = self.cores[core].on_accept(self.now);
        let client = (core, id);
        self.versions.insert(client, connect.protocol);
        self.send(client, Packet::Connect(connect));
        client
    }

    /// Like `open`, but leaves the messages to other cores unsent until `settle`.
    fn open_unsettled(&mut self, core: usize, connect: Connect) -> Client {
        let id = self.cores[core].on_accept(self.now);
        let client = (core, id);
        self.versions.insert(client, connect.protocol);
        let mut buf = BytesMut::new();
        codec::encode_packet(&Packet::Connect(connect), ProtocolVersion::V5, &mut buf, usize::MAX).expect("encode");
        self.cores[core].on_bytes(id, &mut buf, self.now);
        client
    }

    fn sessions(&self) -> usize {
        self.cores.iter().map(Core::session_count).sum()
    }

    fn recv(&mut self, client: Client) -> Vec<Packet> {
        let version = self.versions[&client];
        let buf = self.inbox.entry(client).or_default();
        let mut out = Vec::new();
        while let Some(frame) = codec::check_frame(buf, usize::MAX).expect("frame") {
            let bytes = buf.split_to(frame.total_len).freeze();
            out.push(codec::decode_packet(bytes, Some(version)).expect("decode"));
        }
        out
    }

    fn drop_socket(&mut self, client: Client) {
        self.cores[client.0].on_closed(client.1, self.now);
        self.settle();
    }

    fn is_closed(&self, client: Client) -> bool {
        self.closed.contains(&client)
    }

    fn subscribe(&mut self, client: Client, filter: &'static str, qos: QoS) {
        let s = Subscribe {
            pkid: 1,
            properties: Properties::default(),
            filters: vec![SubscribeFilter {
                filter: Bytes::from_static(filter.as_bytes()),
                options: SubscriptionOptions { qos, ..Default::default() },
            }],
        };
        self.send(client, Packet::Subscribe(s));
        let got = self.recv(client);
        assert!(matches!(got.as_slice(), [Packet::SubAck(_)]), "{got:?}");
    }

    fn publish(&mut self, client: Client, topic: &'static str, payload: &'static str, qos: QoS, pkid: u16) {
        let mut p = Publish::new(Bytes::from_static(topic.as_bytes()), qos, Bytes::from_static(payload.as_bytes()));
        p.pkid = pkid;
        self.send(client, Packet::Publish(p));
    }
}

fn connect(id: &'static str, version: ProtocolVersion) -> Connect {
    Connect {
        protocol: version,
        clean_start: true,
        keep_alive: 0,
        client_id: Bytes::from_static(id.as_bytes()),
        will: None,
        username: None,
        password: None,
        properties: Properties::default(),
    }
}

fn persistent(id: &'static str, expiry: u32) -> Connect {
    let mut c = connect(id, ProtocolVersion::V5);
    c.clean_start = false;
    c.properties.session_expiry_interval = Some(expiry);
    c
}

fn with_will(mut c: Connect, topic: &'static str, delay: Option<u32>) -> Connect {
    let properties = Properties { will_delay_interval: delay, ..Default::default() };
    c.will = Some(Will {
        topic: Bytes::from_static(topic.as_bytes()),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties,
    });
    c
}

fn connack(packets: &[Packet]) -> &codec::ConnAck {
    match packets.first() {
        Some(Packet::ConnAck(a)) => a,
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

fn publishes(packets: &[Packet]) -> Vec<&Publish> {
    packets
        .iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some(p),
            _ => None,
        })
        .collect()
}

#[test]
fn keep_alive_closes_after_one_and_a_half_intervals() {
    // [MQTT-3.1.2-24]: disconnect after 1.5 times the keep alive without a packet.
    let mut c = Cluster::new(2);
    let mut conn = connect("ka", ProtocolVersion::V5);
    conn.keep_alive = 10;
    let client = c.open(0, conn);
    assert_eq!(connack(&c.recv(client)).code, reason::SUCCESS);
    c.advance(Duration::from_secs(9));
    c.send(client, Packet::PingReq);
    assert_eq!(c.recv(client), vec![Packet::PingResp]);
    c.advance(Duration::from_millis(14_800));
    assert!(!c.is_closed(client), "still inside 1.5 x keep alive after the PINGREQ");
    c.advance(Duration::from_millis(400));
    assert!(c.is_closed(client));
    let got = c.recv(client);
    assert!(matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::KEEP_ALIVE_TIMEOUT), "{got:?}");
}

#[test]
fn server_keep_alive_caps_the_clients_request() {
    let config = Config { max_keep_alive: 30, ..Default::default() };
    let mut c = Cluster::with_config(1, config);
    let mut conn = connect("cap", ProtocolVersion::V5);
    conn.keep_alive = 600;
    let client = c.open(0, conn);
    assert_eq!(connack(&c.recv(client)).properties.server_keep_alive, Some(30));
    c.advance(Duration::from_secs(46));
    assert!(c.is_closed(client), "the capped keep alive (30 s x 1.5) applies");
}

#[test]
fn delayed_will_is_sent_when_the_delay_passes() {
    let mut c = Cluster::new(2);
    let watcher = c.open(1, connect("watcher", ProtocolVersion::V5));
    c.recv(watcher);
    c.subscribe(watcher, "wills/#", QoS::AtLeastOnce);
    let dying = c.open(0, with_will(persistent("dying", 100), "wills/dying", Some(5)));
    c.recv(dying);
    c.drop_socket(dying);
    c.advance(Duration::from_millis(4_900));
    assert!(publishes(&c.recv(watcher)).is_empty(), "will delay not yet over");
    c.advance(Duration::from_millis(200));
    let got = c.recv(watcher);
    let wills = publishes(&got);
    assert_eq!(wills.len(), 1);
    assert_eq!(&wills[0].topic[..], b"wills/dying");
}

#[test]
fn will_is_sent_at_session_end_when_that_comes_before_the_delay() {
    // Spec 3.1.3.2.2: the will is sent when the delay passes or the session ends,
    // whichever is first.
    let mut c = Cluster::new(2);
    let watcher = c.open(0, connect("watcher", ProtocolVersion::V5));
    c.recv(watcher);
    c.subscribe(watcher, "wills/+", QoS::AtMostOnce);
    let dying = c.open(1, with_will(persistent("dying", 3), "wills/dying", Some(100)));
    c.recv(dying);
    c.drop_socket(dying);
    c.advance(Duration::from_millis(2_900));
    assert!(publishes(&c.recv(watcher)).is_empty());
    c.advance(Duration::from_millis(200));
    assert_eq!(publishes(&c.recv(watcher)).len(), 1);
}

#[test]
fn reconnecting_within_the_will_delay_cancels_the_will() {
    // [MQTT-3.1.3-9]
    let mut c = Cluster::new(2);
    let watcher = c.open(0, connect("watcher", ProtocolVersion::V5));
    c.recv(watcher);
    c.subscribe(watcher, "wills/+", QoS::AtMostOnce);
    let first = c.open(1, with_will(persistent("flaky", 100), "wills/flaky", Some(5)));
    c.recv(first);
    c.drop_socket(first);
    c.advance(Duration::from_secs(2));
    let again = c.open(0, persistent("flaky", 100));
    assert!(connack(&c.recv(again)).session_present);
    c.advance(Duration::from_secs(10));
    assert!(publishes(&c.recv(watcher)).is_empty(), "no will after the client came back");
}

#[test]
fn normal_disconnect_discards_the_will_and_0x04_sends_it() {
    let mut c = Cluster::new(2);
    let watcher = c.open(0, connect("watcher", ProtocolVersion::V5));
    c.recv(watcher);
    c.subscribe(watcher, "wills/+", QoS::AtMostOnce);
    let polite = c.open(1, with_will(connect("polite", ProtocolVersion::V5), "wills/polite", None));
    c.recv(polite);
    c.send(
        polite,
        Packet::Disconnect(Disconnect { reason: reason::NORMAL_DISCONNECTION, properties: Properties::default() }),
    );
    // [MQTT-3.1.2-10]
    assert!(publishes(&c.recv(watcher)).is_empty());
    let asks = c.open(1, with_will(connect("asks", ProtocolVersion::V5), "wills/asks", None));
    c.recv(asks);
    c.send(
        asks,
        Packet::Disconnect(Disconnect {
            reason: reason::DISCONNECT_WITH_WILL_MESSAGE,
            properties: Properties::default(),
        }),
    );
    let got = c.recv(watcher);
    assert_eq!(publishes(&got).len(), 1);
}

#[test]
fn session_expires_after_its_interval() {
    let mut c = Cluster::new(2);
    let a = c.open(0, persistent("exp", 2));
    assert!(!connack(&c.recv(a)).session_present);
    c.subscribe(a, "t", QoS::AtLeastOnce);
    c.drop_socket(a);
    c.advance(Duration::from_secs(1));
    let b = c.open(1, persistent("exp", 2));
    assert!(connack(&c.recv(b)).session_present, "resumed within the expiry interval");
    c.drop_socket(b);
    c.advance(Duration::from_millis(2_100));
    let d = c.open(0, persistent("exp", 2));
    assert!(!connack(&c.recv(d)).session_present, "expired");
}

#[test]
fn offline_queue_keeps_qos1_and_drops_expired_messages() {
    let mut c = Cluster::new(2);
    let sub = c.open(0, persistent("sub", 100));
    c.recv(sub);
    c.subscribe(sub, "q/#", QoS::AtLeastOnce);
    c.drop_socket(sub);
    let publisher = c.open(1, connect("pub", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(publisher, "q/keep", "1", QoS::AtLeastOnce, 1);
    let mut p = Publish::new(Bytes::from_static(b"q/expire"), QoS::AtLeastOnce, Bytes::from_static(b"2"));
    p.pkid = 2;
    p.properties.message_expiry_interval = Some(2);
    c.send(publisher, Packet::Publish(p));
    let acks = c.recv(publisher);
    assert_eq!(acks.len(), 2, "{acks:?}");
    c.advance(Duration::from_secs(3));
    let sub = c.open(1, persistent("sub", 100));
    let got = c.recv(sub);
    assert!(connack(&got).session_present);
    let topics: Vec<_> = publishes(&got).iter().map(|p| p.topic.clone()).collect();
    assert_eq!(topics, vec![Bytes::from_static(b"q/keep")], "[MQTT-3.3.2-5] expired message not sent");
}

#[test]
fn takeover_on_another_core_disconnects_the_old_connection_with_0x8e() {
    // [MQTT-3.1.4-3]
    let mut c = Cluster::new(2);
    let old = c.open(0, persistent("same", 100));
    c.recv(old);
    c.subscribe(old, "x/#", QoS::AtLeastOnce);
    let new = c.open(1, persistent("same", 100));
    let got_old = c.recv(old);
    assert!(
        matches!(got_old.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::SESSION_TAKEN_OVER),
        "{got_old:?}"
    );
    assert!(c.is_closed(old));
    assert!(connack(&c.recv(new)).session_present);
    // The subscription moved with the session.
    let publisher = c.open(0, connect("p", ProtocolVersion::V311));
    c.recv(publisher);
    c.publish(publisher, "x/1", "hello", QoS::AtLeastOnce, 7);
    let got = c.recv(new);
    assert_eq!(publishes(&got).len(), 1, "{got:?}");
}

#[test]
fn unacknowledged_qos1_is_resent_with_dup_on_resume() {
    // [MQTT-4.4.0-1]
    let mut c = Cluster::new(2);
    let sub = c.open(0, persistent("slow", 100));
    c.recv(sub);
    c.subscribe(sub, "r", QoS::AtLeastOnce);
    let publisher = c.open(1, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(publisher, "r", "m", QoS::AtLeastOnce, 1);
    let first = c.recv(sub);
    let pkid = publishes(&first)[0].pkid;
    assert!(!publishes(&first)[0].dup);
    c.drop_socket(sub);
    let sub = c.open(1, persistent("slow", 100));
    let again = c.recv(sub);
    let resent = publishes(&again);
    assert_eq!(resent.len(), 1);
    assert!(resent[0].dup);
    assert_eq!(resent[0].pkid, pkid);
    c.send(sub, Packet::PubAck(Ack::new(pkid, 0)));
    let sub2 = c.open(0, persistent("slow", 100));
    assert!(publishes(&c.recv(sub2)).is_empty(), "acknowledged: not resent");
}

#[test]
fn qos2_inbound_is_delivered_once_across_a_reconnect() {
    // [MQTT-4.3.3-9]
    let mut c = Cluster::new(2);
    let sub = c.open(0, connect("s", ProtocolVersion::V5));
    c.recv(sub);
    c.subscribe(sub, "e", QoS::ExactlyOnce);
    let p1 = c.open(1, persistent("p2", 100));
    c.recv(p1);
    c.publish(p1, "e", "once", QoS::ExactlyOnce, 9);
    assert!(matches!(c.recv(p1).as_slice(), [Packet::PubRec(a)] if a.pkid == 9));
    c.drop_socket(p1);
    let p2 = c.open(0, persistent("p2", 100));
    c.recv(p2);
    let mut dup = Publish::new(Bytes::from_static(b"e"), QoS::ExactlyOnce, Bytes::from_static(b"once"));
    dup.pkid = 9;
    dup.dup = true;
    c.send(p2, Packet::Publish(dup));
    assert!(matches!(c.recv(p2).as_slice(), [Packet::PubRec(a)] if a.pkid == 9));
    c.send(p2, Packet::PubRel(Ack::new(9, 0)));
    assert!(matches!(c.recv(p2).as_slice(), [Packet::PubComp(a)] if a.pkid == 9 && a.reason == 0));
    assert_eq!(publishes(&c.recv(sub)).len(), 1, "delivered exactly once");
}

#[test]
fn exceeding_receive_maximum_is_disconnect_0x93() {
    let config = Config { max_inflight: 2, ..Default::default() };
    let mut c = Cluster::with_config(1, config);
    let client = c.open(0, connect("greedy", ProtocolVersion::V5));
    assert_eq!(connack(&c.recv(client)).properties.receive_maximum, Some(2));
    for pkid in 1..=2 {
        c.publish(client, "t", "x", QoS::ExactlyOnce, pkid);
    }
    assert!(!c.is_closed(client));
    c.publish(client, "t", "x", QoS::ExactlyOnce, 3);
    assert!(c.is_closed(client));
    let got = c.recv(client);
    assert!(
        got.iter().any(|p| matches!(p, Packet::Disconnect(d) if d.reason == reason::RECEIVE_MAXIMUM_EXCEEDED)),
        "{got:?}"
    );
}

#[test]
fn outbound_window_respects_the_clients_receive_maximum() {
    // [MQTT-3.3.4-7]
    let mut c = Cluster::new(2);
    let mut conn = connect("narrow", ProtocolVersion::V5);
    conn.properties.receive_maximum = Some(2);
    let sub = c.open(0, conn);
    c.recv(sub);
    c.subscribe(sub, "w", QoS::AtLeastOnce);
    let publisher = c.open(1, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    for i in 1..=5 {
        c.publish(publisher, "w", "x", QoS::AtLeastOnce, i);
    }
    let got = c.recv(sub);
    let first: Vec<u16> = publishes(&got).iter().map(|p| p.pkid).collect();
    assert_eq!(first.len(), 2, "only Receive Maximum unacknowledged");
    c.send(sub, Packet::PubAck(Ack::new(first[0], 0)));
    assert_eq!(publishes(&c.recv(sub)).len(), 1, "one more after one PUBACK");
}

#[test]
fn fan_out_encodes_once_yet_each_subscriber_gets_its_own_fields() {
    let mut c = Cluster::new(1);
    let v5 = c.open(0, connect("v5", ProtocolVersion::V5));
    let v4 = c.open(0, connect("v4", ProtocolVersion::V311));
    let with_id = c.open(0, connect("with-id", ProtocolVersion::V5));
    for s in [v5, v4, with_id] {
        c.recv(s);
    }
    c.subscribe(v5, "f/+", QoS::AtMostOnce);
    c.subscribe(v4, "f/+", QoS::AtMostOnce);
    let sub = Subscribe {
        pkid: 2,
        properties: Properties { subscription_identifiers: vec![77], ..Default::default() },
        filters: vec![SubscribeFilter { filter: Bytes::from_static(b"f/#"), options: SubscriptionOptions::default() }],
    };
    c.send(with_id, Packet::Subscribe(sub));
    c.recv(with_id);
    let publisher = c.open(0, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    // Two publishes in one read, handled at the same instant: the cache must not serve the
    // first message's bytes for the second.
    let mut buf = BytesMut::new();
    let big = Bytes::from(vec![b'x'; 2048]);
    for (topic, payload) in [(&b"f/1"[..], Bytes::from_static(b"small")), (&b"f/2"[..], big.clone())] {
        let p = Publish::new(Bytes::copy_from_slice(topic), QoS::AtMostOnce, payload);
        codec::encode_packet(&Packet::Publish(p), ProtocolVersion::V5, &mut buf, usize::MAX).expect("encode");
    }
    c.cores[0].on_bytes(publisher.1, &mut buf, c.now);
    c.settle();
    for s in [v5, v4, with_id] {
        let got = c.recv(s);
        let p = publishes(&got);
        assert_eq!(p.len(), 2, "{got:?}");
        assert_eq!((&p[0].topic[..], &p[0].payload[..]), (&b"f/1"[..], &b"small"[..]));
        assert_eq!((&p[1].topic[..], &p[1].payload), (&b"f/2"[..], &big));
        let ids = if s == with_id { vec![77] } else { vec![] };
        assert_eq!(p[0].properties.subscription_identifiers, ids);
        assert_eq!(p[1].properties.subscription_identifiers, ids);
    }
}

#[test]
fn a_socket_that_never_sends_connect_is_closed() {
    let mut c = Cluster::new(1);
    let id = c.cores[0].on_accept(c.now);
    c.advance(crate::session::CONNECT_TIMEOUT - Duration::from_millis(200));
    assert!(!c.is_closed((0, id)));
    c.advance(Duration::from_millis(300));
    assert!(c.is_closed((0, id)));
}

fn queued_payloads(policy: crate::config::DropPolicy) -> (Vec<Bytes>, u64) {
    let config = Config { max_queued_messages: 3, queue_drop_policy: policy, ..Default::default() };
    let mut c = Cluster::with_config(2, config);
    let sub = c.open(0, persistent("offline", 100));
    c.recv(sub);
    c.subscribe(sub, "b", QoS::AtLeastOnce);
    c.drop_socket(sub);
    let publisher = c.open(1, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    for (i, payload) in ["1", "2", "3", "4", "5"].into_iter().enumerate() {
        c.publish(publisher, "b", payload, QoS::AtLeastOnce, i as u16 + 1);
    }
    let sub = c.open(1, persistent("offline", 100));
    let got = c.recv(sub);
    let dropped = c.cores.iter().map(|core| core.stats.dropped_queue_full).sum();
    (publishes(&got).iter().map(|p| p.payload.clone()).collect(), dropped)
}

#[test]
fn full_queue_drops_by_the_configured_policy_and_counts_it() {
    use crate::config::DropPolicy;
    let b = |s: &'static str| Bytes::from_static(s.as_bytes());
    assert_eq!(queued_payloads(DropPolicy::DropOldest), (vec![b("3"), b("4"), b("5")], 2));
    assert_eq!(queued_payloads(DropPolicy::DropNewest), (vec![b("1"), b("2"), b("3")], 2));
}

#[test]
fn short_keep_alive_is_enforced_on_time() {
    // A keep alive shorter than the CONNECT timeout must not wait for it.
    let mut c = Cluster::new(1);
    let mut conn = connect("short", ProtocolVersion::V311);
    conn.keep_alive = 2;
    let client = c.open(0, conn);
    c.recv(client);
    c.advance(Duration::from_millis(2_900));
    assert!(!c.is_closed(client));
    c.advance(Duration::from_millis(200));
    assert!(c.is_closed(client), "closed at 1.5 x 2 s");
}

#[test]
fn a_topic_alias_is_only_established_by_a_packet_that_was_sent() {
    // [MQTT-3.3.2-10] / [MQTT-3.1.2-25]: the first message is too large for the client and
    // is not sent, so the alias it would have established must not be used later.
    let mut c = Cluster::new(1);
    let mut conn = connect("aliased", ProtocolVersion::V5);
    conn.properties.topic_alias_maximum = Some(4);
    conn.properties.maximum_packet_size = Some(64);
    let sub = c.open(0, conn);
    c.recv(sub);
    c.subscribe(sub, "al/t", QoS::AtMostOnce);
    let publisher = c.open(0, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(
        publisher,
        "al/t",
        "this payload is far too long for a 64 byte maximum packet size...",
        QoS::AtMostOnce,
        0,
    );
    c.publish(publisher, "al/t", "small", QoS::AtMostOnce, 0);
    c.publish(publisher, "al/t", "again", QoS::AtMostOnce, 0);
    let got = c.recv(sub);
    let p = publishes(&got);
    assert_eq!(p.len(), 2, "{got:?}");
    assert_eq!((&p[0].topic[..], p[0].properties.topic_alias), (&b"al/t"[..], Some(1)), "alias established with topic");
    assert_eq!((&p[1].topic[..], p[1].properties.topic_alias), (&b""[..], Some(1)), "then used alone");
}

#[test]
fn a_client_publish_with_a_subscription_identifier_is_a_protocol_error() {
    // [MQTT-3.3.4-6]
    let mut c = Cluster::new(1);
    let client = c.open(0, connect("sid", ProtocolVersion::V5));
    c.recv(client);
    let mut p = Publish::new(Bytes::from_static(b"t"), QoS::AtMostOnce, Bytes::from_static(b"x"));
    p.properties.subscription_identifiers = vec![3];
    c.send(client, Packet::Publish(p));
    assert!(c.is_closed(client));
    let got = c.recv(client);
    assert!(matches!(got.as_slice(), [Packet::Disconnect(d)] if d.reason == reason::PROTOCOL_ERROR), "{got:?}");
}

/// A topic whose shard is `core` in a cluster of `n`.
fn topic_on(core: usize, n: usize) -> &'static str {
    let t = (0..).map(|i| format!("owned/{i}")).find(|t| super::shard_of(t.as_bytes(), n) == core).expect("some topic");
    Box::leak(t.into_boxed_str())
}

#[test]
fn resuming_on_the_same_core_keeps_deliveries_already_routed() {
    // Review finding: a same-core resume must not invalidate messages the shard routed
    // to the session just before the reconnect [MQTT-4.3.2], [MQTT-4.5.0-1].
    let mut c = Cluster::new(2);
    let topic = topic_on(1, 2);
    let sub = c.open(0, persistent("resume-same", 100));
    c.recv(sub);
    c.subscribe(sub, topic, QoS::AtLeastOnce);
    c.drop_socket(sub);
    let publisher = c.open(1, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    // The shard (core 1) routes the message; the Deliver for core 0 is still in the ring...
    let mut buf = BytesMut::new();
    let mut p = Publish::new(Bytes::from_static(topic.as_bytes()), QoS::AtLeastOnce, Bytes::from_static(b"in flight"));
    p.pkid = 1;
    codec::encode_packet(&Packet::Publish(p), ProtocolVersion::V5, &mut buf, usize::MAX).expect("encode");
    c.cores[1].on_bytes(publisher.1, &mut buf, c.now);
    let mut pending = Vec::new();
    c.cores[1].take_actions(&mut pending);
    // ...when the client comes back on core 0.
    let again = c.open_unsettled(0, persistent("resume-same", 100));
    for a in pending {
        if let Action::Send(to, msg) = a {
            c.cores[to].on_message(msg, c.now);
        }
    }
    c.settle();
    let got = c.recv(again);
    assert!(connack(&got).session_present);
    assert_eq!(publishes(&got).len(), 1, "{got:?}");
}

#[test]
fn takeover_of_a_session_with_expiry_zero_starts_fresh() {
    // Spec 3.1.4: the old session ends on takeover when its expiry interval is 0; a 3.1.1
    // Clean Session=1 session must not be reused [MQTT-3.1.2-6].
    let mut c = Cluster::new(2);
    let old = c.open(0, connect("zero", ProtocolVersion::V5));
    c.recv(old);
    c.subscribe(old, "z/#", QoS::AtLeastOnce);
    let new = c.open(1, persistent("zero", 100));
    assert!(!connack(&c.recv(new)).session_present);
    let publisher = c.open(0, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(publisher, "z/1", "x", QoS::AtMostOnce, 0);
    assert!(publishes(&c.recv(new)).is_empty(), "the old subscription did not survive");
}

#[test]
fn a_connection_lost_while_its_session_is_in_transit_still_ends_the_session() {
    let mut c = Cluster::new(2);
    let old = c.open(0, persistent("transit", 100));
    c.recv(old);
    c.subscribe(old, "tr/#", QoS::AtLeastOnce);
    // A new connection asks for the session with expiry 0, and is gone before it arrives.
    let mut conn = persistent("transit", 0);
    conn.properties.session_expiry_interval = Some(0);
    let new = c.open_unsettled(1, conn);
    c.cores[1].on_closed(new.1, c.now);
    c.settle();
    assert_eq!(c.sessions(), 0, "expiry 0 from the last connection: the session ended");
    let fresh = c.open(1, persistent("transit", 100));
    assert!(!connack(&c.recv(fresh)).session_present);
}

#[test]
fn two_takeovers_racing_hand_the_session_to_the_last_connection() {
    // Review finding: a takeover that reaches a core whose own connection is still waiting
    // for the session must not answer "no session".
    let mut c = Cluster::new(3);
    let first = c.open(0, persistent("raced", 100));
    c.recv(first);
    c.subscribe(first, "race/#", QoS::AtLeastOnce);
    let second = c.open_unsettled(1, persistent("raced", 100));
    let third = c.open_unsettled(2, persistent("raced", 100));
    c.settle();
    let got = c.recv(third);
    assert!(connack(&got).session_present, "{got:?}");
    assert!(c.is_closed(second), "the middle connection was taken over");
    assert_eq!(c.sessions(), 1);
    let publisher = c.open(0, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(publisher, "race/1", "x", QoS::AtLeastOnce, 3);
    assert_eq!(publishes(&c.recv(third)).len(), 1, "subscriptions route to the winner");
}

fn with_receive_max(mut c: Connect, rm: u16, max_packet: Option<u32>) -> Connect {
    c.properties.receive_maximum = Some(rm);
    c.properties.maximum_packet_size = max_packet;
    c
}

#[test]
fn resume_resends_only_what_the_new_receive_maximum_allows() {
    // [MQTT-3.3.4-9]: the quota is not carried over; the new connection's applies.
    let mut c = Cluster::new(2);
    let sub = c.open(0, with_receive_max(persistent("rm", 100), 10, None));
    c.recv(sub);
    c.subscribe(sub, "rm", QoS::AtLeastOnce);
    let publisher = c.open(1, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    for i in 1..=5 {
        c.publish(publisher, "rm", "x", QoS::AtLeastOnce, i);
    }
    assert_eq!(publishes(&c.recv(sub)).len(), 5);
    c.drop_socket(sub);
    let sub = c.open(1, with_receive_max(persistent("rm", 100), 2, None));
    let got = c.recv(sub);
    let first = publishes(&got);
    assert_eq!(first.len(), 2, "{got:?}");
    assert!(first.iter().all(|p| p.dup));
    let pkid = first[0].pkid;
    c.send(sub, Packet::PubAck(Ack::new(pkid, 0)));
    let more = c.recv(sub);
    assert_eq!(publishes(&more).len(), 1, "one freed slot, one more resend");
}

#[test]
fn a_resend_too_large_for_the_new_connection_is_abandoned_not_stuck() {
    // [MQTT-3.1.2-25]: act as if it were sent; the window must not stay blocked by it.
    let mut c = Cluster::new(1);
    let sub = c.open(0, with_receive_max(persistent("big", 100), 1, None));
    c.recv(sub);
    c.subscribe(sub, "big/+", QoS::AtLeastOnce);
    let publisher = c.open(0, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(publisher, "big/1", "a payload too large for 40 bytes in total, surely", QoS::AtLeastOnce, 1);
    assert_eq!(publishes(&c.recv(sub)).len(), 1);
    c.drop_socket(sub);
    let sub = c.open(0, with_receive_max(persistent("big", 100), 1, Some(40)));
    assert!(publishes(&c.recv(sub)).is_empty(), "too large to resend");
    c.publish(publisher, "big/2", "small", QoS::AtLeastOnce, 2);
    let got = c.recv(sub);
    assert_eq!(publishes(&got).len(), 1, "the window is free: {got:?}");
}

#[test]
fn disconnect_with_an_error_reason_publishes_the_will() {
    // [MQTT-3.1.2-8]: only reason 0x00 discards the will.
    let mut c = Cluster::new(1);
    let watcher = c.open(0, connect("watcher", ProtocolVersion::V5));
    c.recv(watcher);
    c.subscribe(watcher, "wills/+", QoS::AtMostOnce);
    let failing = c.open(0, with_will(connect("failing", ProtocolVersion::V5), "wills/failing", None));
    c.recv(failing);
    c.send(
        failing,
        Packet::Disconnect(Disconnect { reason: reason::UNSPECIFIED_ERROR, properties: Properties::default() }),
    );
    assert_eq!(publishes(&c.recv(watcher)).len(), 1);
}

#[test]
fn connection_churn_does_not_grow_the_timer_heap() {
    // Review finding: timer entries of closed connections (keep alive up to 65535 s) must
    // not accumulate.
    let mut c = Cluster::new(1);
    for i in 0..5_000 {
        let mut conn = connect("churn", ProtocolVersion::V311);
        conn.keep_alive = 65_535;
        let client = c.open(0, conn);
        c.drop_socket(client);
        if i % 500 == 0 {
            c.advance(Duration::from_millis(100));
        }
    }
    c.advance(Duration::from_millis(100));
    let entries = c.cores[0].timers.len() + c.cores[0].conn_timers.len();
    assert!(entries <= 1_100, "{entries} timer entries for no connection");
}

#[test]
fn a_retained_message_is_not_overtaken_by_a_live_one_during_a_wildcard_subscribe() {
    // Review finding: with a wildcard filter, one shard's retained message must reach the
    // subscriber before the live messages that shard routes after it [MQTT-4.6.0-5].
    let mut c = Cluster::new(3);
    let topic = topic_on(0, 3);
    let publisher = c.open(0, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    let mut retained = Publish::new(Bytes::from_static(topic.as_bytes()), QoS::AtMostOnce, Bytes::from_static(b"old"));
    retained.retain = true;
    c.send(publisher, Packet::Publish(retained));
    let sub = c.open(2, connect("s", ProtocolVersion::V5));
    c.recv(sub);
    let s = Subscribe {
        pkid: 1,
        properties: Properties::default(),
        filters: vec![SubscribeFilter {
            filter: Bytes::from_static(b"owned/#"),
            options: SubscriptionOptions::default(),
        }],
    };
    let mut buf = BytesMut::new();
    codec::encode_packet(&Packet::Subscribe(s), ProtocolVersion::V5, &mut buf, usize::MAX).expect("encode");
    c.cores[2].on_bytes(sub.1, &mut buf, c.now);
    let mut to_shards = Vec::new();
    c.cores[2].take_actions(&mut to_shards);
    // Shard 0 learns of the subscription (and answers with the retained message) first;
    // shard 1 later.
    let mut later = Vec::new();
    for a in to_shards {
        match a {
            Action::Send(0, msg) => c.cores[0].on_message(msg, c.now),
            other => later.push(other),
        }
    }
    // A live message on the same topic, routed by shard 0 right after.
    let mut buf = BytesMut::new();
    let live = Publish::new(Bytes::from_static(topic.as_bytes()), QoS::AtMostOnce, Bytes::from_static(b"new"));
    codec::encode_packet(&Packet::Publish(live), ProtocolVersion::V5, &mut buf, usize::MAX).expect("encode");
    c.cores[0].on_bytes(publisher.1, &mut buf, c.now);
    let mut from_shard0 = Vec::new();
    c.cores[0].take_actions(&mut from_shard0);
    for a in from_shard0 {
        if let Action::Send(to, msg) = a {
            c.cores[to].on_message(msg, c.now);
        }
    }
    for a in later {
        if let Action::Send(to, msg) = a {
            c.cores[to].on_message(msg, c.now);
        }
    }
    c.settle();
    let got = c.recv(sub);
    let payloads: Vec<_> = publishes(&got).iter().map(|p| p.payload.clone()).collect();
    assert_eq!(payloads, vec![Bytes::from_static(b"old"), Bytes::from_static(b"new")], "{got:?}");
}

/// An in-memory journal whose durable mark and failure the test moves by hand.
#[derive(Clone, Default)]
struct FakeJournal(std::rc::Rc<std::cell::RefCell<FakeState>>);

#[derive(Default)]
struct FakeState {
    records: Vec<Vec<u8>>,
    durable: u64,
    failing: bool,
}

impl super::Journal for FakeJournal {
    fn append(&mut self, _ts: u64, body: Vec<u8>) -> Result<u64, Vec<u8>> {
        let mut s = self.0.borrow_mut();
        s.records.push(body);
        Ok(s.records.len() as u64)
    }
    fn durable_seq(&self) -> u64 {
        self.0.borrow().durable
    }
    fn failing(&self) -> bool {
        self.0.borrow().failing
    }
    fn next_seq(&self) -> u64 {
        self.0.borrow().records.len() as u64 + 1
    }
}

/// A fake journal per core, in `immediate` mode.
fn immediate_journals(c: &mut Cluster) -> Vec<FakeJournal> {
    let n = c.cores.len();
    let journals: Vec<FakeJournal> = (0..n).map(|_| FakeJournal::default()).collect();
    for (core, j) in c.cores.iter_mut().zip(&journals) {
        core.set_journal(Box::new(j.clone()), true, Arc::new(super::RetentionPins::new(n)));
    }
    journals
}

/// Every record of every journal is durable now, and every core has heard of it.
fn everything_durable(c: &mut Cluster, journals: &[FakeJournal]) {
    for j in journals {
        let n = j.0.borrow().records.len() as u64;
        j.0.borrow_mut().durable = n;
    }
    for core in 0..c.cores.len() {
        c.cores[core].on_durable(c.now);
    }
    c.settle();
}

#[test]
fn immediate_mode_acknowledges_only_after_the_record_is_durable() {
    let mut c = Cluster::new(2);
    let journals = immediate_journals(&mut c);
    let publisher = c.open(0, connect("durable", ProtocolVersion::V5));
    c.recv(publisher);
    let topic = topic_on(1, 2);
    c.publish(publisher, topic, "m", QoS::AtLeastOnce, 5);
    assert!(c.recv(publisher).is_empty(), "no PUBACK before the sync");
    assert_eq!(journals[1].0.borrow().records.len(), 1, "appended by the owning shard");
    journals[1].0.borrow_mut().durable = 1;
    c.cores[1].on_durable(c.now);
    c.settle();
    let got = c.recv(publisher);
    assert!(matches!(got.as_slice(), [Packet::PubAck(a)] if a.pkid == 5), "{got:?}");
    // QoS 0 without RETAIN is not logged.
    c.publish(publisher, topic, "q0", QoS::AtMostOnce, 0);
    assert_eq!(journals[1].0.borrow().records.len(), 1);
}

#[test]
fn a_durable_record_is_acknowledged_at_once_when_publisher_and_shard_share_a_core() {
    // The PUBACK goes through the core's local inbox; it used to wait for the next tick
    // (50 ms per acknowledgement, found by the e2e bench).
    let mut c = Cluster::new(2);
    let journal = FakeJournal::default();
    c.cores[0].set_journal(Box::new(journal.clone()), true, Arc::new(super::RetentionPins::new(2)));
    let publisher = c.open(0, connect("local", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(publisher, topic_on(0, 2), "m", QoS::AtLeastOnce, 9);
    assert!(c.recv(publisher).is_empty(), "no PUBACK before the sync");
    journal.0.borrow_mut().durable = 1;
    c.cores[0].on_durable(c.now);
    c.settle(); // carries out actions only: no tick runs
    let got = c.recv(publisher);
    assert!(matches!(got.as_slice(), [Packet::PubAck(a)] if a.pkid == 9), "{got:?}");
}

#[test]
fn a_failing_log_fails_the_acknowledgement_instead_of_faking_success() {
    let mut c = Cluster::new(1);
    let journal = FakeJournal::default();
    c.cores[0].set_journal(Box::new(journal.clone()), true, Arc::new(super::RetentionPins::new(1)));
    let v5 = c.open(0, connect("v5", ProtocolVersion::V5));
    c.recv(v5);
    let v4 = c.open(0, connect("v4", ProtocolVersion::V311));
    c.recv(v4);
    c.publish(v5, "full/disk", "m", QoS::ExactlyOnce, 1);
    c.publish(v4, "full/disk", "m", QoS::AtLeastOnce, 2);
    journal.0.borrow_mut().failing = true;
    c.advance(Duration::from_millis(100));
    let got = c.recv(v5);
    assert!(
        matches!(got.as_slice(), [Packet::PubRec(a)] if a.pkid == 1 && a.reason == reason::UNSPECIFIED_ERROR),
        "{got:?}"
    );
    assert!(c.is_closed(v4), "3.1.1 has no failure code: the connection is closed so the client resends");
    // The QoS 2 exchange ended: the same packet id is a new message.
    journal.0.borrow_mut().failing = false;
    c.publish(v5, "full/disk", "again", QoS::ExactlyOnce, 1);
    assert_eq!(journal.0.borrow().records.len(), 3, "logged again, not treated as a duplicate");
}

#[test]
fn a_persistent_sessions_qos2_exchange_is_logged_and_pubcomp_waits_for_its_release() {
    // Logged with the message, released in the same log; the packet id is free again
    // only after the release is durable [MQTT-4.3.3-9, MQTT-4.3.3-13].
    let mut c = Cluster::new(2);
    let journals = immediate_journals(&mut c);
    let clock = c.cores[0].clock;
    // The shard's records but session snapshots (the client id's home shard may be this one).
    let logged = |j: &FakeJournal| -> Vec<Record> {
        let records = j.0.borrow().records.clone();
        let decoded =
            records.into_iter().map(|b| crate::persist::decode_record(&Bytes::from(b), &clock, Instant::now()));
        decoded.map(|r| r.expect("decodes")).filter(|r| !matches!(r, Record::Session(_))).collect()
    };
    let record = |j: &FakeJournal, i: usize| logged(j).swap_remove(i);
    let publisher = c.open(0, persistent("p2", 100));
    c.recv(publisher);
    let incarnation = c.cores[0].sessions.get(&Bytes::from_static(b"p2")).expect("session").incarnation;
    let topic = topic_on(1, 2);
    c.publish(publisher, topic, "m", QoS::ExactlyOnce, 3);
    let exchange = crate::persist::Exchange { incarnation, pkid: 3 };
    assert!(matches!(record(&journals[1], 0), Record::Message(_, Some(x), _) if x == exchange));
    let all_durable = |j: &FakeJournal| {
        let n = j.0.borrow().records.len() as u64;
        j.0.borrow_mut().durable = n;
    };
    all_durable(&journals[1]);
    c.cores[1].on_durable(c.now);
    c.settle();
    assert!(matches!(c.recv(publisher).as_slice(), [Packet::PubRec(a)] if a.pkid == 3));

    c.send(publisher, Packet::PubRel(Ack::new(3, 0)));
    assert!(c.recv(publisher).is_empty(), "no PUBCOMP before the release is durable");
    assert!(matches!(record(&journals[1], 1), Record::Released(id, x) if id == "p2" && x == exchange));
    // A resent PUBLISH is still a duplicate, and a resent PUBREL logs nothing more.
    let mut dup = Publish::new(Bytes::from_static(topic.as_bytes()), QoS::ExactlyOnce, Bytes::from_static(b"m"));
    dup.pkid = 3;
    dup.dup = true;
    c.send(publisher, Packet::Publish(dup));
    c.send(publisher, Packet::PubRel(Ack::new(3, 0)));
    assert!(matches!(c.recv(publisher).as_slice(), [Packet::PubRec(a)] if a.pkid == 3));
    assert_eq!(logged(&journals[1]).len(), 2);
    all_durable(&journals[1]);
    c.cores[1].on_durable(c.now);
    c.settle();
    let got = c.recv(publisher);
    assert!(matches!(got.as_slice(), [Packet::PubComp(a)] if a.pkid == 3 && a.reason == 0), "{got:?}");
    // The id is free: the same id is a new message.
    c.publish(publisher, topic, "m2", QoS::ExactlyOnce, 3);
    assert!(matches!(record(&journals[1], 2), Record::Message(m, Some(x), _) if x == exchange && m.payload == "m2"));

    // A session that is not persistent logs no exchange.
    let clean = c.open(0, connect("clean", ProtocolVersion::V5));
    c.recv(clean);
    c.publish(clean, topic, "c", QoS::ExactlyOnce, 4);
    assert!(matches!(record(&journals[1], 3), Record::Message(_, None, _)));
}

#[test]
fn an_outbound_qos2_exchange_of_a_persistent_session_sends_each_packet_after_its_record_is_durable() {
    // The PUBLISH waits for `sent`, the PUBREL for `received`; PUBCOMP logs `completed`
    // (see `persist.rs`). A step that fails to log (full disk) is retried at the checkpoint.
    let mut c = Cluster::new(2);
    let journals = immediate_journals(&mut c);
    let clock = c.cores[0].clock;
    let deliveries_of = |j: &FakeJournal, client: &str| -> Vec<crate::persist::Delivery> {
        let records = j.0.borrow().records.clone();
        records
            .into_iter()
            .filter_map(|b| match crate::persist::decode_record(&Bytes::from(b), &clock, Instant::now()) {
                Ok(Record::Delivery(id, d)) if id == client => Some(d),
                _ => None,
            })
            .collect()
    };
    let deliveries = |j: &FakeJournal| deliveries_of(j, "s2");
    let all_durable = |c: &mut Cluster, j: &FakeJournal| {
        let n = j.0.borrow().records.len() as u64;
        j.0.borrow_mut().durable = n;
        c.cores[1].on_durable(c.now);
        c.settle();
    };
    let subscriber = c.open(0, persistent("s2", 100));
    c.recv(subscriber);
    let topic = topic_on(1, 2);
    // In `immediate` mode the SUBACK waits for the session's snapshot to be durable.
    let sub = Subscribe {
        pkid: 1,
        properties: Properties::default(),
        filters: vec![SubscribeFilter {
            filter: Bytes::from_static(topic.as_bytes()),
            options: SubscriptionOptions { qos: QoS::ExactlyOnce, ..Default::default() },
        }],
    };
    c.send(subscriber, Packet::Subscribe(sub));
    assert!(c.recv(subscriber).is_empty(), "no SUBACK before the snapshot is durable");
    everything_durable(&mut c, &journals);
    let got = c.recv(subscriber);
    assert!(matches!(got.as_slice(), [Packet::SubAck(_)]), "{got:?}");
    let publisher = c.open(0, connect("p", ProtocolVersion::V5));
    c.recv(publisher);
    c.publish(publisher, topic, "m", QoS::ExactlyOnce, 1);
    assert!(c.recv(subscriber).is_empty(), "no PUBLISH before `sent` is durable");
    let pkid = match deliveries(&journals[1]).as_slice() {
        [d] if d.state == crate::persist::DeliveryState::Sent => d.pkid,
        other => panic!("one `sent` record expected: {other:?}"),
    };
    // Only once the record is durable does the PUBLISH go out.
    all_durable(&mut c, &journals[1]);
    let got = c.recv(subscriber);
    assert!(matches!(got.as_slice(), [Packet::Publish(p)] if p.pkid == pkid && p.qos == QoS::ExactlyOnce), "{got:?}");

    // PUBREC: no PUBREL until `received` is durable; a failure is retried at the checkpoint.
    journals[1].0.borrow_mut().failing = true;
    c.send(subscriber, Packet::PubRec(Ack::new(pkid, 0)));
    assert!(c.recv(subscriber).is_empty(), "no PUBREL before `received` is durable");
    c.cores[1].on_durable(c.now);
    c.settle();
    assert!(c.recv(subscriber).is_empty(), "no PUBREL when `received` could not be logged");
    journals[1].0.borrow_mut().failing = false;
    c.advance(Duration::from_secs(2));
    let states: Vec<_> = deliveries(&journals[1]).iter().map(|d| d.state).collect();
    use crate::persist::DeliveryState::*;
    assert_eq!(states, [Sent, Received, Received], "logged again after the failure");
    assert!(c.recv(subscriber).is_empty(), "no PUBREL before the retried `received` is durable");
    all_durable(&mut c, &journals[1]);
    let got = c.recv(subscriber);
    assert!(matches!(got.as_slice(), [Packet::PubRel(a)] if a.pkid == pkid), "{got:?}");

    c.send(subscriber, Packet::PubComp(Ack::new(pkid, 0)));
    let last = deliveries(&journals[1]).pop().expect("records");
    assert_eq!((last.state, last.pkid), (Completed, pkid));
    assert!(c.cores[0].sessions.get(&Bytes::from_static(b"s2")).expect("session").inflight.is_empty());

    // A clean session's QoS 2 is not logged and not held back.
    let clean = c.open(0, connect("clean", ProtocolVersion::V5));
    c.recv(clean);
    c.subscribe(clean, topic, QoS::ExactlyOnce);
    c.publish(publisher, topic, "m2", QoS::ExactlyOnce, 2);
    let got = c.recv(clean);
    assert!(matches!(got.as_slice(), [Packet::Publish(p)] if p.payload == "m2"), "{got:?}");
    all_durable(&mut c, &journals[1]);
    assert!(deliveries_of(&journals[1], "clean").is_empty());
    assert_eq!(deliveries(&journals[1]).last().map(|d| d.state), Some(Sent), "the persistent one's is");
}

/// One core, a subscriber to `topic` with an outbound window of one (so that what it has not
/// acknowledged queues), and a publisher: what the overload tests load.
fn one_window_pair(topic: &'static str) -> (Cluster, Client, Client) {
    let config = Config { max_inflight: 1, ..Config::default() };
    let mut c = Cluster::with_config(1, config);
    let sub = c.open(0, connect("window-sub", ProtocolVersion::V5));
    c.recv(sub);
    c.subscribe(sub, topic, QoS::AtLeastOnce);
    let publisher = c.open(0, connect("window-pub", ProtocolVersion::V5));
    (c, sub, publisher)
}

/// Publishes one QoS 1 message per packet id in `pkids`.
fn publish_qos1(c: &mut Cluster, publisher: Client, topic: &'static str, pkids: std::ops::RangeInclusive<u16>) {
    for pkid in pkids {
        c.publish(publisher, topic, "m", QoS::AtLeastOnce, pkid);
    }
}

#[test]
fn overload_from_one_queue_ends_as_soon_as_that_queue_drains_not_at_the_next_tick() {
    // Publishers wait while the broker is overloaded and look again every millisecond
    // (`overload_level_now`). A queue that made it overloaded is measured again each time:
    // once the subscriber has taken it, publishers go on (they used to wait for the tick).
    let (mut c, sub, publisher) = one_window_pair("load/q");
    // The subscriber acknowledges (a client counts towards overload once it acknowledges
    // or is written to; this harness reports no writes).
    c.publish(publisher, "load/q", "m", QoS::AtLeastOnce, 1);
    let first = c.recv(sub);
    assert!(matches!(first.as_slice(), [Packet::Publish(p)] if p.pkid == 1), "{first:?}");
    c.send(sub, Packet::PubAck(Ack::new(1, 0)));
    publish_qos1(&mut c, publisher, "load/q", 2..=300);
    assert!(c.cores[0].overload_level_now() >= 1.0, "a queue a quarter full (250 of 1,000) is overload");
    // The subscriber takes everything, one in flight at a time, without a tick in between.
    let mut acked = 1;
    loop {
        let got = c.recv(sub);
        if got.is_empty() {
            break;
        }
        for p in got {
            if let Packet::Publish(p) = p {
                c.send(sub, Packet::PubAck(Ack::new(p.pkid, 0)));
                acked += 1;
            }
        }
    }
    assert_eq!(acked, 300);
    assert!(c.cores[0].overload_level_now() < 0.25, "the drained queue ends the overload at once");
}

#[test]
fn inbound_acknowledgements_wait_while_the_broker_is_overloaded_and_at_most_the_pause() {
    let mut c = Cluster::new(1);
    let publisher = c.open(0, connect("held-pub", ProtocolVersion::V5));
    c.recv(publisher);
    c.cores[0].set_hold_acks(true);
    c.publish(publisher, "held/a", "m", QoS::AtLeastOnce, 1);
    c.publish(publisher, "held/b", "m", QoS::ExactlyOnce, 2);
    assert!(c.recv(publisher).is_empty(), "no PUBACK/PUBREC while overloaded");
    assert_eq!(c.cores[0].held_acks(), 2);
    // Bounded in time: those held since before the given instant go out.
    c.cores[0].release_held_acks(Some(c.now - Duration::from_millis(1)));
    c.settle();
    assert!(c.recv(publisher).is_empty(), "held for less than the bound");
    c.cores[0].release_held_acks(Some(c.now));
    c.settle();
    let got = c.recv(publisher);
    assert!(matches!(got.as_slice(), [Packet::PubAck(a), Packet::PubRec(b)] if a.pkid == 1 && b.pkid == 2), "{got:?}");
    // The end of the overload sends the rest at once; then nothing is held.
    c.publish(publisher, "held/a", "m", QoS::AtLeastOnce, 3);
    assert!(c.recv(publisher).is_empty());
    c.cores[0].set_hold_acks(false);
    c.settle();
    assert!(matches!(c.recv(publisher).as_slice(), [Packet::PubAck(a)] if a.pkid == 3));
    c.publish(publisher, "held/a", "m", QoS::AtLeastOnce, 4);
    assert!(matches!(c.recv(publisher).as_slice(), [Packet::PubAck(a)] if a.pkid == 4));
}

#[test]
fn a_subscriber_neither_acknowledging_nor_written_to_does_not_count_towards_overload() {
    // The control of the test below: the same queue, no acknowledgement, no write.
    let (mut c, sub, publisher) = one_window_pair("load/s");
    c.publish(publisher, "load/s", "m", QoS::AtLeastOnce, 1);
    assert_eq!(c.recv(sub).len(), 1, "in flight, not acknowledged");
    publish_qos1(&mut c, publisher, "load/s", 2..=300);
    assert!(c.cores[0].overload_level_now() < 1.0, "a client that takes nothing holds nobody up");
}

#[test]
fn a_subscriber_being_written_to_counts_towards_overload_before_it_acknowledges() {
    // One that has not acknowledged since the last tick but still takes bytes (the socket
    // was written to within the last 500 ms) is slow, not stopped: its queue a quarter full
    // is overload. Counting only clients that acknowledged since the tick let a subscriber
    // stalled for a few milliseconds after a tick lose its standing, and publishers overflow
    // its queue meanwhile.
    let (mut c, sub, publisher) = one_window_pair("load/r");
    c.publish(publisher, "load/r", "m", QoS::AtLeastOnce, 1);
    assert_eq!(c.recv(sub).len(), 1, "in flight, not acknowledged");
    c.cores[0].on_written(sub.1, 64);
    publish_qos1(&mut c, publisher, "load/r", 2..=300);
    assert!(c.cores[0].overload_level_now() >= 1.0, "299 queued of 1,000 for a client that reads");
}

#[test]
fn a_persistent_sessions_unsuback_waits_for_its_snapshot_in_immediate_mode() {
    // As the SUBACK does: an acknowledged UNSUBSCRIBE must not come back after a crash.
    let mut c = Cluster::new(2);
    let journals = immediate_journals(&mut c);
    let durable_all = |c: &mut Cluster| everything_durable(c, &journals);
    let sub = c.open(0, persistent("unsub-1", 100));
    c.recv(sub);
    let filter = SubscribeFilter { filter: Bytes::from_static(b"u/t"), options: SubscriptionOptions::default() };
    c.send(sub, Packet::Subscribe(Subscribe { pkid: 1, properties: Properties::default(), filters: vec![filter] }));
    durable_all(&mut c);
    assert!(matches!(c.recv(sub).as_slice(), [Packet::SubAck(_)]));
    let u = crate::codec::Unsubscribe {
        pkid: 2,
        properties: Properties::default(),
        filters: vec![Bytes::from_static(b"u/t")],
    };
    c.send(sub, Packet::Unsubscribe(u));
    assert!(c.recv(sub).is_empty(), "no UNSUBACK before the snapshot is durable");
    durable_all(&mut c);
    let got = c.recv(sub);
    assert!(matches!(got.as_slice(), [Packet::UnsubAck(a)] if a.pkid == 2), "{got:?}");
}
