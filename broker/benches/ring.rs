//! `cargo bench -p promptmq --bench ring`: the cross-core handoff, alone.
//!
//! Cores pass `CoreMsg`s through one `crossbeam_queue::ArrayQueue` (capacity 8192) per
//! ordered pair of cores, used single-producer/single-consumer, and ring the receiving
//! core's wakeup (a permit flag: only the ring that sets it wakes the thread, see
//! `rt::Wakeup`). This bench rebuilds that between two threads pinned to CPUs 0 and 1: the
//! producer pushes `(Instant, CoreMsg::Publish)` holding an `Arc` clone of one message, as a
//! core does, and the consumer pops, reads the clock (as `drain_rings` does per message),
//! records the one-way latency and drops the message.
//!
//! Two consumers: `spin` never sleeps (the floor: cache-line transfer only), `park` sleeps
//! in `std::thread::park` when the ring is empty and is woken through the permit flag and
//! `unpark`, like a core whose runtime waits on its wakeup (a futex wake and a reschedule).
//! Two loads each:
//! - one at a time: a message every 50 us, the next one only after the previous was taken,
//!   so a `park` consumer is asleep each time; the latency is the handoff's own.
//! - saturated: the producer pushes batches of 32 (stamped at the start of the batch, one
//!   ring per batch, as a core dispatches) as fast as the ring takes them; ops/s is the
//!   throughput, and the latency then is mostly the time spent queued in a full ring.
//!
//! How to read it: ops/s is messages per second (saturated only); p50/p99/p99.9 are the
//! one-way latencies of single messages. On a machine with two CPUs the two threads take
//! both, so anything else running shows up in the tail.
//!
//! The run takes about 12 s; `PROMPTMQ_BENCH_SECS=60` measures for 60 s instead.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::Thread;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use hdrhistogram::Histogram;
use promptmq::codec::{Properties, QoS};
use promptmq::core::CoreMsg;
use promptmq::message::{Message, SharedMessage};

use common::{budget_secs, histogram, pin_to_cpu, print_header, print_row, Row};

/// As `server.rs`'s RING_CAPACITY.
const RING_CAPACITY: usize = 8192;
/// Messages pushed per dispatch (and per ring) when saturated.
const DISPATCH: usize = 32;
/// Time between messages when sending one at a time.
const GAP: Duration = Duration::from_micros(50);

#[derive(Clone, Copy, PartialEq)]
enum Consumer {
    Spin,
    Park,
}

#[derive(Clone, Copy, PartialEq)]
enum Load {
    OneAtATime,
    Saturated,
}

struct Link {
    ring: ArrayQueue<(Instant, CoreMsg)>,
    /// The wakeup's permit: set by the ring that has to wake the consumer, cleared by the
    /// consumer when it takes it.
    notified: AtomicBool,
    /// Messages taken so far, for the one-at-a-time producer.
    received: AtomicU64,
    done: AtomicBool,
}

impl Link {
    fn ring(&self, consumer: &Thread) {
        if !self.notified.swap(true, Ordering::AcqRel) {
            consumer.unpark();
        }
    }

    /// Sleeps until the permit is set (or the run is over), then takes it.
    fn wait(&self) {
        while !self.notified.swap(false, Ordering::AcqRel) {
            if self.done.load(Ordering::Acquire) {
                return;
            }
            // May return spuriously: the loop checks the permit again.
            std::thread::park();
        }
    }
}

struct Taken {
    latency: Histogram<u64>,
    count: u64,
    last: Instant,
}

fn consume(link: &Link, mode: Consumer) -> Taken {
    if !pin_to_cpu(1) {
        eprintln!("note: could not pin the consumer to CPU 1");
    }
    let mut latency = histogram(60_000_000_000);
    let mut count = 0u64;
    let mut last = Instant::now();
    loop {
        let mut got = false;
        while let Some((sent, msg)) = link.ring.pop() {
            last = Instant::now();
            let _ = latency.record(last.saturating_duration_since(sent).as_nanos().max(1) as u64);
            drop(msg);
            count += 1;
            got = true;
        }
        if got {
            link.received.store(count, Ordering::Release);
        }
        if link.done.load(Ordering::Acquire) && link.ring.is_empty() {
            return Taken { latency, count, last };
        }
        match mode {
            Consumer::Spin => std::hint::spin_loop(),
            Consumer::Park => link.wait(),
        }
    }
}

fn run(mode: Consumer, load: Load, time: Duration, msg: &SharedMessage) -> Row {
    let link = Arc::new(Link {
        ring: ArrayQueue::new(RING_CAPACITY),
        notified: AtomicBool::new(false),
        received: AtomicU64::new(0),
        done: AtomicBool::new(false),
    });
    let consumer = {
        let link = Arc::clone(&link);
        std::thread::Builder::new().name("ring-consumer".into()).spawn(move || consume(&link, mode)).expect("spawn")
    };
    let wake = consumer.thread().clone();
    let ring = |link: &Link| {
        // A spinning consumer looks at the ring all the time: nothing to wake.
        if mode == Consumer::Park {
            link.ring(&wake);
        }
    };
    let publish = || CoreMsg::Publish { msg: Arc::clone(msg), ack: None };
    // Let the consumer start (and, for `park`, fall asleep) before the clock runs.
    std::thread::sleep(Duration::from_millis(20));

    let began = Instant::now();
    let until = began + time;
    let mut sent = 0u64;
    match load {
        Load::OneAtATime => {
            let mut due = began;
            while Instant::now() < until {
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                if link.ring.push((Instant::now(), publish())).is_err() {
                    unreachable!("one message at a time never fills the ring");
                }
                ring(&link);
                sent += 1;
                due = Instant::now() + GAP;
                while link.received.load(Ordering::Acquire) < sent {
                    std::hint::spin_loop();
                }
            }
        }
        Load::Saturated => {
            while Instant::now() < until {
                let stamp = Instant::now();
                for _ in 0..DISPATCH {
                    let mut item = (stamp, publish());
                    // Full: the broker would park it in its overflow queue and stop reading
                    // sockets; here the producer just waits for room.
                    while let Err(back) = link.ring.push(item) {
                        item = back;
                        ring(&link);
                        std::hint::spin_loop();
                    }
                }
                ring(&link);
                sent += DISPATCH as u64;
            }
        }
    }
    link.done.store(true, Ordering::Release);
    wake.unpark();
    let taken = consumer.join().expect("consumer thread");
    assert_eq!(taken.count, sent, "every pushed message is taken");
    let name = format!(
        "{} consumer, {}",
        if mode == Consumer::Spin { "spin" } else { "park" },
        if load == Load::OneAtATime { "one at a time" } else { "saturated" }
    );
    let rate = taken.count as f64 / taken.last.saturating_duration_since(began).as_secs_f64().max(1e-9);
    Row::new(name, (load == Load::Saturated).then_some(rate), &taken.latency, 1.0)
}

fn main() {
    let secs = budget_secs(12.0);
    let per_row = Duration::from_secs_f64(secs / 4.0);
    if !pin_to_cpu(0) {
        eprintln!("note: could not pin the producer to CPU 0");
    }
    let msg: SharedMessage = Arc::new(Message {
        topic: Bytes::from_static(b"sensors/building-7/floor-3/room-42/temperature"),
        payload: Bytes::from(vec![0x5a; 64]),
        qos: QoS::AtMostOnce,
        retain: false,
        properties: Properties::default(),
        publisher: Bytes::from_static(b"sensor-gw-0017"),
        expires_at: None,
    });
    print_header(
        "ring (ArrayQueue SPSC, CPU 0 -> 1)",
        &format!(
            "One-way latency of a cross-core handoff: a ({}-byte) (Instant, CoreMsg::Publish) pushed \
             into a {RING_CAPACITY}-slot crossbeam ArrayQueue on CPU 0, popped on CPU 1 by a spinning or \
             a parking consumer (woken through a permit flag and unpark, like rt::Wakeup). One at a \
             time: a message every 50 us after the previous one was taken. Saturated: batches of \
             {DISPATCH} as fast as the ring takes them; ops/s is the throughput and the latency is \
             mostly queueing.",
            std::mem::size_of::<(Instant, CoreMsg)>()
        ),
    );
    for mode in [Consumer::Spin, Consumer::Park] {
        for load in [Load::OneAtATime, Load::Saturated] {
            print_row(&run(mode, load, per_row, &msg));
        }
    }
}
