//! An application message as the broker routes it: decoded once, shared by `Arc` between
//! the shard that orders it, every core that delivers it and every queue that holds it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{Properties, Publish, QoS};

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: Bytes,
    pub payload: Bytes,
    /// The QoS it was published with; each subscriber gets min(this, granted).
    pub qos: QoS,
    /// The RETAIN flag of the PUBLISH that carried it.
    pub retain: bool,
    /// The properties forwarded unchanged to subscribers [MQTT-3.3.2-17]: payload format,
    /// content type, response topic, correlation data, user properties. Expiry is kept as
    /// `expires_at` instead, so the remaining interval can be computed on each send.
    pub properties: Properties,
    /// Client id of the publisher, for No Local.
    pub publisher: Bytes,
    pub expires_at: Option<Instant>,
}

pub type SharedMessage = Arc<Message>;

/// A copy of `b` in its own allocation (see [`Message::detached`]).
pub fn owned(b: &Bytes) -> Bytes {
    Bytes::copy_from_slice(b)
}

/// Makes every byte field of `p` own its bytes.
pub fn detach_properties(p: &mut Properties) {
    for b in [&mut p.content_type, &mut p.response_topic, &mut p.correlation_data].into_iter().flatten() {
        *b = owned(b);
    }
    for (k, v) in &mut p.user_properties {
        *k = owned(k);
        *v = owned(v);
    }
}

impl Message {
    /// Builds the routed message from an inbound PUBLISH whose topic alias is already
    /// resolved into `topic`.
    pub fn from_publish(p: Publish, topic: Bytes, publisher: Bytes, now: Instant) -> Message {
        let mut properties = p.properties;
        let expires_at =
            properties.message_expiry_interval.take().map(|secs| now + Duration::from_secs(u64::from(secs)));
        // Not forwarded: the alias is per connection, subscription ids are set per
        // subscriber [MQTT-3.3.4-6].
        properties.topic_alias = None;
        properties.subscription_identifiers.clear();
        Message { topic, payload: p.payload, qos: p.qos, retain: p.retain, properties, publisher, expires_at }
    }

    /// A copy that owns its bytes. Decoded fields are slices of the read buffer, and a slice
    /// keeps the whole buffer allocation alive; a message that may be stored for long (QoS
    /// 1/2 in queues, retained) is detached once so it pins only its own bytes.
    pub fn detached(mut self) -> Message {
        let mut buf = bytes::BytesMut::with_capacity(self.topic.len() + self.payload.len());
        buf.extend_from_slice(&self.topic);
        buf.extend_from_slice(&self.payload);
        let mut all = buf.freeze();
        self.payload = all.split_off(self.topic.len());
        self.topic = all;
        self.publisher = owned(&self.publisher);
        detach_properties(&mut self.properties);
        self
    }

    /// Whether the message has expired; expired messages are never sent [MQTT-3.3.2-5].
    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// The Message Expiry Interval to send: the time that remains, in whole seconds,
    /// never 0 for a message that has not expired [MQTT-3.3.2-6].
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs.max(1)).unwrap_or(u32::MAX)
        })
    }
}
