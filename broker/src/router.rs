//! A shard's routing state: the subscription index and the retained store, both tries
//! over topic levels, so that neither a publish nor a wildcard subscribe scans everything.
//!
//! Which subscriptions a shard holds is decided by the caller (see `core.rs`): exact
//! filters only on the shard that owns the topic, wildcard filters on every shard. So a
//! topic's owner finds every subscription that matches it, and can merge overlapping
//! subscriptions of one client into one delivery [MQTT-3.3.4-2].

use std::collections::HashMap;

use bytes::Bytes;

use crate::codec::{QoS, SubscriptionOptions};
use crate::message::SharedMessage;

/// Where a session lives and which incarnation of it subscribed: a delivery to a session
/// that has since been replaced (same client id, new epoch) is dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRef {
    pub client_id: Bytes,
    pub core: usize,
    /// The session's incarnation: stays the same while the session continues, across
    /// reconnects and moves between cores.
    pub epoch: u64,
    /// The registry claim under which this route was made; a route with an older claim
    /// never replaces a newer one (messages from different cores can arrive out of order).
    pub claim: u64,
}

#[derive(Debug, Clone)]
pub struct Subscriber {
    pub session: SessionRef,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// One delivery a shard asks a session's core to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub session: SessionRef,
    pub qos: QoS,
    /// The RETAIN flag to send (Retain As Published, or 1 for retained-on-subscribe).
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

#[derive(Debug, Default)]
struct SharedGroup {
    name: Bytes,
    members: Vec<Subscriber>,
    next: usize,
}

#[derive(Debug, Default)]
struct SubNode {
    children: HashMap<Bytes, SubNode>,
    subscribers: Vec<Subscriber>,
    groups: Vec<SharedGroup>,
}

impl SubNode {
    fn is_empty(&self) -> bool {
        self.children.is_empty() && self.subscribers.is_empty() && self.groups.is_empty()
    }
}

fn levels(topic: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    let mut start = 0;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        match topic[start..].iter().position(|&b| b == b'/') {
            Some(i) => {
                let level = topic.slice(start..start + i);
                start += i + 1;
                Some(level)
            }
            None => {
                done = true;
                Some(topic.slice(start..))
            }
        }
    })
}

/// The subscription trie of one shard.
#[derive(Debug, Default)]
pub struct SubscriptionIndex {
    root: SubNode,
    count: usize,
}

impl SubscriptionIndex {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Adds or replaces the subscription of `sub.session.client_id` to `filter` (in `group`
    /// when shared). Returns whether it is new.
    pub fn subscribe(&mut self, filter: &Bytes, group: Option<&Bytes>, sub: Subscriber) -> bool {
        let mut node = &mut self.root;
        for level in levels(filter) {
            // Trie keys outlive the packet they came from: own them.
            node = node.children.entry(Bytes::copy_from_slice(&level)).or_default();
        }
        let list = match group {
            None => &mut node.subscribers,
            Some(name) => {
                let at = match node.groups.iter().position(|g| g.name == name) {
                    Some(i) => i,
                    None => {
                        node.groups.push(SharedGroup { name: name.clone(), ..SharedGroup::default() });
                        node.groups.len() - 1
                    }
                };
                &mut node.groups[at].members
            }
        };
        match list.iter_mut().find(|s| s.session.client_id == sub.session.client_id) {
            Some(existing) => {
                if sub.session.claim >= existing.session.claim {
                    *existing = sub;
                }
                false
            }
            None => {
                list.push(sub);
                self.count += 1;
                true
            }
        }
    }

    /// Removes the subscription if it belongs to the same session incarnation (`epoch`);
    /// returns whether one was removed. Empty trie nodes are pruned.
    pub fn unsubscribe(&mut self, filter: &Bytes, group: Option<&Bytes>, client_id: &Bytes, epoch: u64) -> bool {
        let path: Vec<Bytes> = levels(filter).collect();
        let removed = Self::remove_at(&mut self.root, &path, group, client_id, epoch);
        if removed {
            self.count -= 1;
        }
        removed
    }

    fn remove_at(node: &mut SubNode, path: &[Bytes], group: Option<&Bytes>, client_id: &Bytes, epoch: u64) -> bool {
        let Some((first, rest)) = path.split_first() else {
            let matches = |s: &Subscriber| s.session.client_id == client_id && s.session.epoch == epoch;
            return match group {
                None => {
                    let before = node.subscribers.len();
                    node.subscribers.retain(|s| !matches(s));
                    before != node.subscribers.len()
                }
                Some(name) => {
                    let Some(g) = node.groups.iter_mut().find(|g| g.name == name) else {
                        return false;
                    };
                    let before = g.members.len();
                    g.members.retain(|s| !matches(s));
                    let removed = before != g.members.len();
                    node.groups.retain(|g| !g.members.is_empty());
                    removed
                }
            };
        };
        let Some(child) = node.children.get_mut(first) else {
            return false;
        };
        let removed = Self::remove_at(child, rest, group, client_id, epoch);
        if child.is_empty() {
            node.children.remove(first);
        }
        removed
    }

    /// Finds every subscription matching `topic` and appends one [`Target`] per client to
    /// `out` (overlapping subscriptions merged: highest QoS, all subscription identifiers,
    /// retain kept if any matching subscription has Retain As Published), plus one per
    /// shared group (round robin). `publisher` is used for No Local [MQTT-3.8.3-3].
    /// Returns how many of the targets, at the end of `out`, are shared group members.
    pub fn route(&mut self, msg: &SharedMessage, out: &mut Vec<Target>) -> usize {
        let start = out.len();
        let dollar = msg.topic.first() == Some(&b'$');
        let mut shared = Vec::new();
        Self::collect(&mut self.root, Some(&msg.topic[..]), dollar, msg, out, &mut shared);
        merge_overlapping(out, start);
        let n = shared.len();
        out.append(&mut shared);
        n
    }

    /// `rest` is the unmatched part of the topic (`None` once every level is matched);
    /// levels are split off as the walk goes, so routing allocates nothing per publish.
    fn collect(
        node: &mut SubNode,
        rest: Option<&[u8]>,
        at_root_dollar: bool,
        msg: &SharedMessage,
        out: &mut Vec<Target>,
        shared: &mut Vec<Target>,
    ) {
        // '#' also matches the parent level ("sport/#" matches "sport") [MQTT-4.7.1-2];
        // neither wildcard matches a leading '$' level [MQTT-4.7.2-1].
        if !at_root_dollar {
            if let Some(hash) = node.children.get_mut(&b"#"[..]) {
                Self::emit(hash, msg, out, shared);
            }
        }
        let Some(rest) = rest else {
            Self::emit(node, msg, out, shared);
            return;
        };
        let (level, tail) = match rest.iter().position(|&b| b == b'/') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        if !at_root_dollar {
            if let Some(plus) = node.children.get_mut(&b"+"[..]) {
                Self::collect(plus, tail, false, msg, out, shared);
            }
        }
        if let Some(child) = node.children.get_mut(level) {
            Self::collect(child, tail, false, msg, out, shared);
        }
    }

    fn emit(node: &mut SubNode, msg: &SharedMessage, out: &mut Vec<Target>, shared: &mut Vec<Target>) {
        for s in &node.subscribers {
            if s.options.no_local && s.session.client_id == msg.publisher {
                continue;
            }
            out.push(target_for(s, msg));
        }
        for g in &mut node.groups {
            if g.members.is_empty() {
                continue;
            }
            let s = &g.members[g.next % g.members.len()];
            g.next = g.next.wrapping_add(1);
            shared.push(target_for(s, msg));
        }
    }
}

fn target_for(s: &Subscriber, msg: &SharedMessage) -> Target {
    Target {
        session: s.session.clone(),
        qos: s.options.qos.min(msg.qos),
        retain: s.options.retain_as_published && msg.retain,
        subscription_ids: s.subscription_id.into_iter().collect(),
    }
}

/// Merges targets of the same client (from overlapping filters) into one, from `start` on.
fn merge_overlapping(out: &mut Vec<Target>, start: usize) {
    if out.len() - start < 2 {
        return;
    }
    out[start..].sort_by(|a, b| a.session.client_id.cmp(&b.session.client_id));
    let mut write = start;
    for read in start + 1..out.len() {
        if out[read].session.client_id == out[write].session.client_id {
            let (kept, dup) = {
                let (l, r) = out.split_at_mut(read);
                (&mut l[write], &mut r[0])
            };
            kept.qos = kept.qos.max(dup.qos);
            kept.retain |= dup.retain;
            kept.subscription_ids.append(&mut dup.subscription_ids);
        } else {
            write += 1;
            out.swap(write, read);
        }
    }
    out.truncate(write + 1);
}

#[derive(Debug, Default)]
struct RetainNode {
    children: HashMap<Bytes, RetainNode>,
    message: Option<SharedMessage>,
}

/// The retained messages of the topics a shard owns, indexed by topic level so that a
/// wildcard subscribe visits only the matching branches.
#[derive(Debug, Default)]
pub struct RetainedStore {
    root: RetainNode,
    count: usize,
}

impl RetainedStore {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Stores `msg` as the topic's retained message, or deletes it when the payload is
    /// empty [MQTT-3.3.1-5], [MQTT-3.3.1-6], [MQTT-3.3.1-7].
    pub fn set(&mut self, msg: &SharedMessage) {
        if msg.payload.is_empty() {
            let path: Vec<Bytes> = levels(&msg.topic).collect();
            if Self::remove_at(&mut self.root, &path) {
                self.count -= 1;
            }
            return;
        }
        let mut node = &mut self.root;
        for level in levels(&msg.topic) {
            node = node.children.entry(Bytes::copy_from_slice(&level)).or_default();
        }
        if node.message.replace(msg.clone()).is_none() {
            self.count += 1;
        }
    }

    fn remove_at(node: &mut RetainNode, path: &[Bytes]) -> bool {
        let Some((first, rest)) = path.split_first() else {
            return node.message.take().is_some();
        };
        let Some(child) = node.children.get_mut(first) else {
            return false;
        };
        let removed = Self::remove_at(child, rest);
        if child.children.is_empty() && child.message.is_none() {
            node.children.remove(first);
        }
        removed
    }

    /// Appends every retained message whose topic matches `filter` to `out`.
    pub fn matching(&self, filter: &[u8], out: &mut Vec<SharedMessage>) {
        let levels: Vec<&[u8]> = filter.split(|&b| b == b'/').collect();
        Self::walk(&self.root, &levels, true, out);
    }

    fn walk(node: &RetainNode, filter: &[&[u8]], at_root: bool, out: &mut Vec<SharedMessage>) {
        let Some((level, tail)) = filter.split_first() else {
            out.extend(node.message.iter().cloned());
            return;
        };
        match *level {
            b"#" => {
                // "a/#" matches "a" itself and everything below it.
                if !at_root {
                    out.extend(node.message.iter().cloned());
                }
                for (name, child) in &node.children {
                    if at_root && name.first() == Some(&b'$') {
                        continue;
                    }
                    Self::all_below(child, out);
                }
            }
            b"+" => {
                for (name, child) in &node.children {
                    if at_root && name.first() == Some(&b'$') {
                        continue;
                    }
                    Self::walk(child, tail, false, out);
                }
            }
            literal => {
                if let Some(child) = node.children.get(literal) {
                    Self::walk(child, tail, false, out);
                }
            }
        }
    }

    /// Deletes retained messages whose expiry has passed (they are never delivered anyway
    /// [MQTT-3.3.2-5], this returns their memory). Returns how many were removed.
    pub fn remove_expired(&mut self, now: std::time::Instant) -> usize {
        fn sweep(node: &mut RetainNode, now: std::time::Instant) -> usize {
            let mut removed = 0;
            if node.message.as_ref().is_some_and(|m| m.is_expired(now)) {
                node.message = None;
                removed += 1;
            }
            node.children.retain(|_, child| {
                removed += sweep(child, now);
                !(child.children.is_empty() && child.message.is_none())
            });
            removed
        }
        let removed = sweep(&mut self.root, now);
        self.count -= removed;
        removed
    }

    fn all_below(node: &RetainNode, out: &mut Vec<SharedMessage>) {
        out.extend(node.message.iter().cloned());
        for child in node.children.values() {
            Self::all_below(child, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Message;
    use std::sync::Arc;

    fn msg(topic: &'static str, publisher: &'static str, qos: QoS) -> SharedMessage {
        Arc::new(Message {
            topic: Bytes::from_static(topic.as_bytes()),
            payload: Bytes::from_static(b"x"),
            qos,
            retain: false,
            properties: Default::default(),
            publisher: Bytes::from_static(publisher.as_bytes()),
            expires_at: None,
        })
    }

    fn sub(client: &'static str, qos: QoS, id: Option<u32>) -> Subscriber {
        Subscriber {
            session: SessionRef { client_id: Bytes::from_static(client.as_bytes()), core: 0, epoch: 1, claim: 1 },
            options: SubscriptionOptions { qos, ..Default::default() },
            subscription_id: id,
        }
    }

    fn b(s: &'static str) -> Bytes {
        Bytes::from_static(s.as_bytes())
    }

    #[test]
    fn overlapping_subscriptions_merge_into_one_target() {
        // [MQTT-3.3.4-2]: one copy, highest QoS, all subscription identifiers.
        let mut idx = SubscriptionIndex::default();
        idx.subscribe(&b("a/+"), None, sub("c1", QoS::AtMostOnce, Some(1)));
        idx.subscribe(&b("a/#"), None, sub("c1", QoS::ExactlyOnce, Some(2)));
        idx.subscribe(&b("a/b"), None, sub("c1", QoS::AtLeastOnce, Some(3)));
        idx.subscribe(&b("a/b"), None, sub("c2", QoS::AtMostOnce, None));
        let mut out = Vec::new();
        idx.route(&msg("a/b", "p", QoS::ExactlyOnce), &mut out);
        assert_eq!(out.len(), 2);
        let c1 = out.iter().find(|t| t.session.client_id == "c1").expect("c1 target");
        assert_eq!(c1.qos, QoS::ExactlyOnce);
        let mut ids = c1.subscription_ids.clone();
        ids.sort();
        assert_eq!(ids, vec![1, 2, 3]);
    }

    #[test]
    fn dollar_topics_skip_leading_wildcards() {
        // [MQTT-4.7.2-1]
        let mut idx = SubscriptionIndex::default();
        idx.subscribe(&b("#"), None, sub("all", QoS::AtMostOnce, None));
        idx.subscribe(&b("+/x"), None, sub("plus", QoS::AtMostOnce, None));
        idx.subscribe(&b("$SYS/#"), None, sub("sys", QoS::AtMostOnce, None));
        let mut out = Vec::new();
        idx.route(&msg("$SYS/x", "p", QoS::AtMostOnce), &mut out);
        let names: Vec<_> = out.iter().map(|t| t.session.client_id.clone()).collect();
        assert_eq!(names, vec![b("sys")]);
    }

    #[test]
    fn hash_matches_parent_level_and_no_local_is_honoured() {
        let mut idx = SubscriptionIndex::default();
        idx.subscribe(&b("sport/#"), None, sub("s", QoS::AtMostOnce, None));
        let mut nl = sub("p", QoS::AtMostOnce, None);
        nl.options.no_local = true;
        idx.subscribe(&b("sport"), None, nl);
        let mut out = Vec::new();
        idx.route(&msg("sport", "p", QoS::AtMostOnce), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].session.client_id, "s");
    }

    #[test]
    fn shared_group_round_robins() {
        let mut idx = SubscriptionIndex::default();
        let g = b("g");
        idx.subscribe(&b("t/+"), Some(&g), sub("m1", QoS::AtMostOnce, None));
        idx.subscribe(&b("t/+"), Some(&g), sub("m2", QoS::AtMostOnce, None));
        let mut counts = HashMap::new();
        for _ in 0..10 {
            let mut out = Vec::new();
            idx.route(&msg("t/1", "p", QoS::AtMostOnce), &mut out);
            assert_eq!(out.len(), 1, "each message goes to exactly one member");
            *counts.entry(out[0].session.client_id.clone()).or_insert(0) += 1;
        }
        assert_eq!(counts.get(&b("m1")), Some(&5));
        assert_eq!(counts.get(&b("m2")), Some(&5));
    }

    #[test]
    fn unsubscribe_checks_epoch_and_prunes() {
        let mut idx = SubscriptionIndex::default();
        idx.subscribe(&b("a/b/c"), None, sub("c", QoS::AtMostOnce, None));
        assert!(!idx.unsubscribe(&b("a/b/c"), None, &b("c"), 2), "other incarnation");
        assert!(idx.unsubscribe(&b("a/b/c"), None, &b("c"), 1));
        assert!(idx.root.children.is_empty());
        assert!(idx.is_empty());
    }

    #[test]
    fn retained_lookup_by_filter() {
        let mut store = RetainedStore::default();
        for t in ["a", "a/b", "a/b/c", "a/x/c", "$SYS/up", "z"] {
            store.set(&msg(t, "p", QoS::AtMostOnce));
        }
        let find = |store: &RetainedStore, f: &[u8]| {
            let mut out = Vec::new();
            store.matching(f, &mut out);
            let mut t: Vec<_> = out.iter().map(|m| m.topic.clone()).collect();
            t.sort();
            t
        };
        assert_eq!(find(&store, b"a/#"), vec![b("a"), b("a/b"), b("a/b/c"), b("a/x/c")]);
        assert_eq!(find(&store, b"a/+/c"), vec![b("a/b/c"), b("a/x/c")]);
        assert_eq!(find(&store, b"#").len(), 5, "$SYS/up excluded");
        assert_eq!(find(&store, b"$SYS/+"), vec![b("$SYS/up")]);
        assert_eq!(find(&store, b"a/b"), vec![b("a/b")]);
        let mut del = Message { payload: Bytes::new(), ..(*msg("a/b", "p", QoS::AtMostOnce)).clone() };
        del.retain = true;
        store.set(&Arc::new(del));
        assert_eq!(find(&store, b"a/+"), Vec::<Bytes>::new());
        assert_eq!(store.len(), 5);
    }

    #[test]
    fn expired_retained_messages_are_swept() {
        let now = std::time::Instant::now();
        let mut store = RetainedStore::default();
        let mut short = (*msg("s/short", "p", QoS::AtMostOnce)).clone();
        short.expires_at = Some(now + std::time::Duration::from_secs(1));
        store.set(&Arc::new(short));
        store.set(&msg("s/long", "p", QoS::AtMostOnce));
        assert_eq!(store.remove_expired(now), 0);
        assert_eq!(store.remove_expired(now + std::time::Duration::from_secs(2)), 1);
        assert_eq!(store.len(), 1);
        let mut out = Vec::new();
        store.matching(b"s/#", &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].topic, "s/long");
    }
}
