//! `cargo bench -p promptmq --bench routing`: topic matching, topic validation and retained
//! lookups, the per-message and per-subscribe work of a shard.
//!
//! - route: `SubscriptionIndex::route` of one publish topic against a trie of 10, 1k and
//!   100k filters into a reused target list (cleared after each call, which drops the
//!   targets as delivery would). The filters are 70% exact topics, 15% with `+`, 10% with
//!   `#` and 5% shared (`$share/g/...`), each from its own client, over a topic space
//!   `fleet/site-N/dev-N/metric` four times as large as the filter count, so that a publish
//!   matches about the same number of filters (shown in the row) whatever the trie size.
//!   The published topics are drawn at random from that space.
//! - topic: `promptmq::topic` validation and matching of one typical name or filter.
//! - retained: `RetainedStore::matching` for a SUBSCRIBE over 10k retained topics, from a
//!   filter that matches 16 messages up to `#` that matches all of them (the matches are
//!   `Arc` clones into a reused list).
//!
//! How to read it: fast operations are timed in batches (1000 calls, fewer for the slower
//! retained lookups) and each batch's average is one sample; ops/s is calls per second on
//! one core, p50/p99/p99.9 are per-call times over the batch averages.
//!
//! The run takes about 13 s; `PROMPTMQ_BENCH_SECS=60` measures for 60 s instead.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use promptmq::codec::{Properties, QoS, SubscriptionOptions};
use promptmq::message::{Message, SharedMessage};
use promptmq::router::{RetainedStore, SessionRef, Subscriber, SubscriptionIndex, Target};
use promptmq::topic;

use common::{batched, budget_secs, print_header, print_row};

const METRICS: [&str; 4] = ["temp", "humidity", "voltage", "state"];
const DEVICES_PER_SITE: usize = 16;
/// Distinct publish topics drawn per route row: more than fit in the caches for the large
/// tries, so the walk is not always along the same warm path.
const PUBLISH_TOPICS: usize = 4096;

/// A small deterministic generator, so every run builds the same tries.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n.max(1)
    }
}

fn message(topic: String, payload_len: usize) -> SharedMessage {
    Arc::new(Message {
        topic: Bytes::from(topic),
        payload: Bytes::from(vec![0x5a; payload_len]),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
        publisher: Bytes::from_static(b"publisher"),
        expires_at: None,
    })
}

fn topic_name(site: usize, device: usize, metric: usize) -> String {
    format!("fleet/site-{site:05}/dev-{device:02}/{}", METRICS[metric])
}

/// Which kind each filter is, in a repeating pattern of 20 that puts every kind among the
/// first ten (so that even the 10-filter trie has wildcards and a shared group):
/// 14 exact (70%), 3 `+` (15%), 2 `#` (10%), 1 shared (5%).
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Exact,
    Plus,
    Hash,
    Shared,
}

const PATTERN: [Kind; 20] = {
    use Kind::*;
    [
        Exact, Plus, Hash, Shared, Exact, Exact, Plus, Exact, Hash, Exact, Exact, Exact, Plus, Exact, Exact, Exact,
        Exact, Exact, Exact, Exact,
    ]
};

/// A subscription index with `n` filters over `sites` sites, each from its own client.
fn build_index(n: usize, sites: usize, rng: &mut Rng) -> SubscriptionIndex {
    let mut index = SubscriptionIndex::default();
    for i in 0..n {
        let site = rng.below(sites);
        let (filter, group) = match PATTERN[i % PATTERN.len()] {
            Kind::Exact => (topic_name(site, rng.below(DEVICES_PER_SITE), rng.below(METRICS.len())), None),
            Kind::Plus => (format!("fleet/site-{site:05}/+/{}", METRICS[rng.below(METRICS.len())]), None),
            Kind::Hash => (format!("fleet/site-{site:05}/#"), None),
            // `$share/g{k}/fleet/site-N/+/temp`: the index gets the group and the inner filter.
            Kind::Shared => (format!("fleet/site-{site:05}/+/temp"), Some(Bytes::from(format!("g{}", i % 4)))),
        };
        let sub = Subscriber {
            session: SessionRef { client_id: Bytes::from(format!("client-{i:06}")), core: i % 2, epoch: 1, claim: 1 },
            options: SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() },
            subscription_id: None,
        };
        index.subscribe(&Bytes::from(filter), group.as_ref(), sub);
    }
    index
}

fn route_row(n: usize, per_row: Duration) -> common::Row {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    // Four topics per filter: see the module doc.
    let sites = (4 * n).div_ceil(DEVICES_PER_SITE * METRICS.len()).max(1);
    let mut index = build_index(n, sites, &mut rng);
    let topics: Vec<SharedMessage> = (0..PUBLISH_TOPICS)
        .map(|_| {
            let t = topic_name(rng.below(sites), rng.below(DEVICES_PER_SITE), rng.below(METRICS.len()));
            message(t, 64)
        })
        .collect();
    // How many targets a publish finds on average, for the row's name.
    let mut out: Vec<Target> = Vec::new();
    let mut found = 0;
    for msg in &topics {
        out.clear();
        index.route(msg, &mut out);
        found += out.len();
    }
    let avg = found as f64 / topics.len() as f64;
    let mut next = 0;
    let row = batched(format!("route, {} filters ({avg:.1} targets)", count_label(n)), 1000, per_row, || {
        next = (next + 1) % topics.len();
        out.clear();
        index.route(&topics[next], &mut out);
        out.len()
    });
    row
}

fn count_label(n: usize) -> String {
    match n {
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn main() {
    let secs = budget_secs(12.0);
    let rows = 3 + 4 + 5;
    let per_row = Duration::from_secs_f64(secs / rows as f64);

    print_header(
        "routing",
        "Shard work per message and per subscribe, one core. route: SubscriptionIndex::route of a \
         random topic against 10, 1k and 100k filters (70% exact, 15% +, 10% #, 5% shared; targets = \
         matches per publish). topic: promptmq::topic checks. retained: RetainedStore::matching over \
         10k retained topics (matches = messages returned). Timed in batches; p50/p99/p99.9 are per call.",
    );
    for n in [10, 1_000, 100_000] {
        print_row(&route_row(n, per_row));
    }

    // black_box: the inputs are constants, which the compiler would otherwise fold away.
    let name = b"fleet/site-00042/dev-07/temp";
    let filter = b"fleet/+/dev-07/#";
    let shared = b"$share/workers/fleet/+/dev-07/temp";
    print_row(&batched("topic validate_topic_name", 1000, per_row, || topic::validate_topic_name(black_box(name))));
    print_row(&batched("topic validate_filter", 1000, per_row, || topic::validate_filter(black_box(filter))));
    print_row(&batched("topic parse_shared", 1000, per_row, || topic::parse_shared(black_box(shared))));
    print_row(&batched("topic matches", 1000, per_row, || topic::matches(black_box(filter), black_box(name))));

    // 10k retained topics: 157 sites of 64 topics, the last site partly filled.
    let mut store = RetainedStore::default();
    let per_site = DEVICES_PER_SITE * METRICS.len();
    for i in 0..10_000 {
        let (site, rest) = (i / per_site, i % per_site);
        store.set(&message(topic_name(site, rest / METRICS.len(), rest % METRICS.len()), 64));
    }
    let mut out: Vec<SharedMessage> = Vec::new();
    for (filter, batch) in [
        ("fleet/site-00042/+/temp", 1000),
        ("fleet/site-00042/#", 1000),
        ("fleet/+/dev-07/temp", 100),
        ("fleet/+/+/temp", 10),
        ("#", 10),
    ] {
        out.clear();
        store.matching(filter.as_bytes(), &mut out);
        let name = format!("retained {filter} ({})", out.len());
        print_row(&batched(name, batch, per_row, || {
            out.clear();
            store.matching(filter.as_bytes(), &mut out);
            out.len()
        }));
    }
}
