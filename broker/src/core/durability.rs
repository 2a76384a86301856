//! The core's side of the write-ahead log: appending QoS 1/2 and retained messages and
//! session snapshots, releasing acknowledgements once durable (or failing them), retention
//! (what may be deleted, what must be rewritten first), and restoring state at startup.

use super::*;

/// Records waiting for room in the journal's queue beyond which publishes are refused.
pub(super) const JOURNAL_BACKLOG_MAX: usize = 100_000;

/// A record waiting for room in the journal: (timestamp, body).
pub(super) type Backlogged = (u64, Vec<u8>);

/// A shard's durable log as the core sees it. Appends never block; durability is reported
/// asynchronously (the driver calls [`Core::on_durable`] when it may have advanced).
pub trait Journal {
    /// Queues a record and returns its sequence number, or gives the body back when the
    /// queue is full.
    fn append(&mut self, timestamp_ms: u64, body: Vec<u8>) -> Result<u64, Vec<u8>>;
    /// Every record up to this sequence number is durable.
    fn durable_seq(&self) -> u64;
    /// Whether writing or syncing is currently failing (e.g. full disk).
    fn failing(&self) -> bool;
    /// The sequence number the next append gets.
    fn next_seq(&self) -> u64;
    /// The log's segments, closed ones oldest first, then the active one.
    fn segments(&self) -> Vec<promptmq_wal::SegmentInfo> {
        Vec::new()
    }
    /// Allows deleting the closed segments whose records all come before `seq`.
    fn delete_before(&mut self, _seq: u64) {}
}

/// What persistent sessions still need from each shard's log, published by every core
/// for its own sessions (one row per core, one column per shard) so that a shard never
/// deletes a segment holding messages owed to a session that lives on another core.
/// Written once a second per core; not on the message path.
pub struct RetentionPins {
    cores: usize,
    needed: Vec<std::sync::atomic::AtomicU64>,
}

impl RetentionPins {
    pub fn new(cores: usize) -> RetentionPins {
        RetentionPins { cores, needed: (0..cores * cores).map(|_| std::sync::atomic::AtomicU64::new(0)).collect() }
    }

    pub(super) fn publish(&self, core: usize, shard: usize, seq: u64) {
        if let Some(a) = self.needed.get(core * self.cores + shard) {
            a.store(seq, std::sync::atomic::Ordering::Release);
        }
    }

    /// The lowest sequence number of `shard`'s log any core still needs. Until a core has
    /// published, it pins everything (0).
    pub(super) fn needed_from(&self, shard: usize) -> u64 {
        (0..self.cores)
            .filter_map(|c| self.needed.get(c * self.cores + shard))
            .map(|a| a.load(std::sync::atomic::Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }
}

/// Records younger than this are never deleted (see `check_retention`).
pub(super) const PIN_LAG_MS: u64 = 3_000;

/// How often a shard looks at its log's retention.
pub(super) const RETENTION_CHECK: Duration = Duration::from_secs(5);

impl Core {
    /// Appends a record to this shard's log (through the backlog when the writer's queue is
    /// full). Its sequence number is known now: nothing else appends to this log, so it is
    /// `next_log_seq`.
    pub(super) fn append_record(&mut self, timestamp_ms: u64, body: Vec<u8>, waiting: Option<(PublishAck, u8)>) {
        let seq = self.next_log_seq;
        self.next_log_seq += 1;
        if let Some((a, code)) = waiting {
            self.pending_acks.push_back((seq, a, code));
        }
        self.journal_backlog.push_back((timestamp_ms, body));
        self.feed_journal();
    }

    /// Appends a record that `ack` waits for: answered with `code` once the record is durable
    /// (`immediate` mode) or at once (the other modes); without a log (none configured, or
    /// closed at shutdown) at once, with no sequence number.
    pub(super) fn append_answered(&mut self, body: Vec<u8>, ack: Option<PublishAck>, code: u8, now: Instant) {
        if self.journal.is_none() {
            if let Some(a) = ack {
                let code = if self.journal_closed { reason::SERVER_SHUTTING_DOWN } else { code };
                self.send(a.core, CoreMsg::PublishDone { ack: a, reason: code, seq: 0 });
            }
            return;
        }
        let waiting = match ack {
            Some(a) if self.wait_for_durable => Some((a, code)),
            Some(a) => {
                self.send(a.core, CoreMsg::PublishDone { ack: a, reason: code, seq: self.next_log_seq });
                None
            }
            None => None,
        };
        self.append_record(self.clock.unix_ms(now), body, waiting);
    }

    /// Moves backlogged records into the journal, in order, while it takes them.
    pub(super) fn feed_journal(&mut self) {
        let Some(journal) = self.journal.as_mut() else { return };
        while let Some((ts, body)) = self.journal_backlog.pop_front() {
            if let Err(body) = journal.append(ts, body) {
                self.journal_backlog.push_front((ts, body));
                break;
            }
        }
    }

    /// Hands every backlogged record to the journal and stops it: its writer thread writes
    /// and syncs what it holds before it ends. Blocks (the broker is stopping); a journal
    /// that takes nothing for `patience` (e.g. a disk that stays full) loses the rest, which
    /// is counted and returned.
    pub fn close_journal(&mut self, patience: Duration) -> usize {
        let deadline = Instant::now() + patience;
        loop {
            self.feed_journal();
            if self.journal_backlog.is_empty() || Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        let lost = self.journal_backlog.len();
        self.journal_backlog.clear();
        // Dropping the journal stops its writer after a final sync. Anything that would
        // need it from now on is refused, not acknowledged as if there were no log.
        if self.journal.take().is_some() {
            self.journal_closed = true;
        }
        lost
    }

    /// The journal's durable mark may have moved (the driver calls this when the writer
    /// thread reports progress, and on every tick): release the acknowledgements it covers,
    /// or fail them while the log reports an error (full disk, failed sync).
    pub fn on_durable(&mut self, now: Instant) {
        self.feed_journal();
        let Some(journal) = self.journal.as_ref() else { return };
        let durable = journal.durable_seq();
        let failing = journal.failing();
        while let Some(&(seq, a, code)) = self.pending_acks.front() {
            let code = if seq <= durable {
                code
            } else if failing {
                self.stats.journal_failed_acks += 1;
                reason::UNSPECIFIED_ERROR
            } else {
                break;
            };
            self.pending_acks.pop_front();
            self.send(a.core, CoreMsg::PublishDone { ack: a, reason: code, seq });
        }
        // Backlogged records are not failed here: they have no sequence number yet and
        // are retried when the log recovers; their acknowledgements wait until then.
        // A publisher on this very core is answered through the local inbox: deliver now,
        // not at the next tick (that cost 50 ms per acknowledgement).
        self.run_local(now);
    }

    /// Installs the shard's durable log. `wait_for_durable` (sync mode `immediate`) makes
    /// QoS 1/2 acknowledgements wait for the sync that covers their record.
    pub fn set_journal(&mut self, journal: Box<dyn Journal>, wait_for_durable: bool, pins: Arc<RetentionPins>) {
        self.next_log_seq = journal.next_seq();
        self.journal = Some(journal);
        self.pins = Some(pins);
        self.wait_for_durable = wait_for_durable;
    }

    /// Logs a snapshot of a persistent session in its home shard's log (the shard its
    /// client id hashes to, so that one log orders all of a client's records however the
    /// session moves between cores).
    pub(super) fn persist_session(&mut self, client_id: &Bytes, now: Instant) {
        self.log_session(client_id, now, None);
    }

    /// [`Core::persist_session`], answering `ack` once the record is durable (`immediate`
    /// mode) or taken; false when there is nothing to log (and nothing will answer).
    pub(super) fn log_session(&mut self, client_id: &Bytes, now: Instant, ack: Option<PublishAck>) -> bool {
        if !self.config.wal_enabled {
            return false;
        }
        let Some(s) = self.sessions.get_mut(client_id) else { return false };
        if !s.is_persistent() && !s.persisted {
            return false;
        }
        let body = if s.is_persistent() {
            s.persisted = true;
            s.progress_dirty = false;
            let record = persist::SessionRecord {
                client_id: s.client_id.clone(),
                version: s.version,
                expiry_interval: s.expiry_interval,
                disconnected_ms: if s.conn().is_some() { 0 } else { self.clock.unix_ms(now).max(1) },
                subscriptions: s.subscriptions.iter().map(|(f, st)| (f.clone(), st.clone())).collect(),
                watermarks: s.watermarks(),
                incarnation: s.incarnation,
                will: s.will.as_deref().map(|w| {
                    let due_ms = s.will_due.get().map_or(0, |t| self.clock.unix_ms(t).max(1));
                    (Box::new(w.clone()), due_ms)
                }),
            };
            persist::encode_session(&record)
        } else {
            // It was logged as persistent before and no longer is: its earlier snapshot must
            // not come back after a restart.
            s.persisted = false;
            persist::encode_session_end(client_id)
        };
        let home = shard_of(client_id, self.cores);
        self.send(home, CoreMsg::Persist { body, ack });
        true
    }

    /// Logs the progress of every persistent session that made some since its last snapshot.
    pub(super) fn checkpoint_sessions(&mut self, now: Instant) {
        let dirty: Vec<Bytes> = self
            .sessions
            .values()
            .filter(|s| s.progress_dirty && s.is_persistent())
            .map(|s| s.client_id.clone())
            .collect();
        for client_id in dirty {
            self.persist_session(&client_id, now);
        }
    }

    /// Records where, in a shard's log, a new subscription starts (see
    /// [`StoredSubscription::since`]).
    pub(super) fn record_since(&mut self, req_id: u64, filter_index: usize, shard: usize, head: u64) {
        let Some(Pending::SubAck { conn, keys, .. }) = self.pending.get(&req_id) else { return };
        let Some(key) = keys.get(filter_index).filter(|k| !k.is_empty()) else { return };
        let Some(client_id) = self.conns.get(conn).map(|c| c.client_id.clone()) else { return };
        let Some(stored) = self.sessions.get_mut(&client_id).and_then(|s| s.subscriptions.get_mut(key)) else {
            return;
        };
        match stored.since.iter_mut().find(|(s, _)| *s == shard) {
            Some(entry) => entry.1 = head,
            None => stored.since.push((shard, head)),
        }
    }

    /// Publishes, per shard, the lowest log sequence number the persistent sessions of this
    /// core still need: the oldest message each holds (queued or unacknowledged) from that
    /// shard, and the oldest inbound QoS 2 exchange not released. Messages never routed to a session are not needed by it, whatever its
    /// subscriptions; messages routed from now on are at the head of the log.
    pub(super) fn publish_pins(&mut self) {
        let Some(pins) = self.pins.clone() else { return };
        let mut needed = vec![u64::MAX; self.cores];
        for s in self.sessions.values().filter(|s| s.is_persistent()) {
            let held = s.inflight.values().map(|f| &f.out).chain(s.queue.iter()).filter_map(|o| o.origin);
            // An inbound QoS 2 exchange not yet released must come back after a crash.
            let exchanges = s.incoming_qos2.values().flatten().filter(|x| x.seq > 0).map(|x| (x.shard, x.seq));
            for (shard, seq) in held.chain(exchanges) {
                if let Some(n) = needed.get_mut(shard) {
                    *n = (*n).min(seq);
                }
            }
        }
        for (shard, n) in needed.into_iter().enumerate() {
            pins.publish(self.id, shard, n);
        }
    }

    /// Applies the retention limits to this shard's log: finds the closed segments past
    /// their age or beyond the size limit, keeps those holding messages persistent sessions
    /// are owed, rewrites the retained messages and session snapshots that live in them
    /// (they are state, not history), and once the rewrites are durable lets the writer
    /// delete the segments.
    pub(super) fn check_retention(&mut self, now: Instant) {
        let Some(journal) = self.journal.as_mut() else { return };
        if let Some((cut, needs)) = self.pending_cut {
            if journal.durable_seq() >= needs {
                journal.delete_before(cut);
                self.pending_cut = None;
            }
            return;
        }
        let (max_age_s, max_size) = (self.config.retention_max_message_age, self.config.retention_max_size);
        if max_age_s == 0 && max_size == 0 {
            return;
        }
        let segments = journal.segments();
        let Some((_active, closed)) = segments.split_last() else { return };
        let now_ms = self.clock.unix_ms(now);
        let mut total: u64 = segments.iter().map(|s| self.config.wal_segment_size.max(s.used_bytes)).sum();
        let mut cut = 0;
        for seg in closed {
            // Pins are published once a second: a segment with records younger than a few
            // seconds may hold messages just routed to a session whose pin is not out yet.
            if seg.newest_ms.is_some_and(|t| now_ms.saturating_sub(t) < PIN_LAG_MS) {
                break;
            }
            let too_old = max_age_s > 0 && seg.newest_ms.is_none_or(|t| now_ms.saturating_sub(t) > max_age_s * 1000);
            let too_big = max_size > 0 && total > max_size;
            if !(too_old || too_big) {
                break;
            }
            cut = seg.last_seq + 1;
            total = total.saturating_sub(self.config.wal_segment_size.max(seg.used_bytes));
        }
        let sessions_need = self.pins.as_ref().map_or(0, |p| p.needed_from(self.id));
        let cut = cut.min(sessions_need);
        if cut <= 1 {
            return;
        }
        // State living below the cut is written again at the head of the log.
        let stale_retained: Vec<Bytes> =
            self.retained_seq.iter().filter(|(_, &seq)| seq < cut).map(|(t, _)| t.clone()).collect();
        for topic in stale_retained {
            let mut found = Vec::new();
            self.retained.matching(&topic, &mut found);
            match found.into_iter().find(|m| m.topic == topic) {
                Some(msg) if !msg.is_expired(now) => {
                    self.retained_seq.insert(topic, self.next_log_seq);
                    let body = persist::encode_message(&msg, &self.clock, None, &[]);
                    self.append_record(now_ms, body, None);
                }
                _ => {
                    self.retained_seq.remove(&topic);
                }
            }
        }
        let stale_snapshots: Vec<Bytes> =
            self.snapshots.iter().filter(|(_, (seq, _))| *seq < cut).map(|(c, _)| c.clone()).collect();
        for client_id in stale_snapshots {
            if let Some((_, body)) = self.snapshots.get(&client_id).cloned() {
                self.snapshots.insert(client_id, (self.next_log_seq, body.clone()));
                self.append_record(now_ms, body, None);
            }
        }
        self.pending_cut = Some((cut, self.next_log_seq - 1));
    }

    /// Restores a persistent session recovered from the logs at startup: offline, with its
    /// subscriptions re-registered in the shards and the messages it was owed queued. The
    /// caller has already claimed its client id for this core in the registry.
    pub fn restore_session(&mut self, mut s: Session, disconnected: Instant) {
        s.set_conn(None);
        s.persisted = true;
        if s.expiry_interval != u32::MAX {
            s.expires_at = Moment::at(disconnected + Duration::from_secs(u64::from(s.expiry_interval)));
        }
        self.repoint_subscriptions(&s);
        self.park_session(s, disconnected);
    }

    /// Restores a retained message recovered from a log at startup.
    pub fn restore_retained(&mut self, msg: SharedMessage) {
        if !self.config.retain_available {
            // Clients are told Retain Available 0: nothing retained is served.
            return;
        }
        self.retained_seq.insert(owned(&msg.topic), 0);
        self.retained.set(&msg);
    }
}
