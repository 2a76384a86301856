//! The message path: an inbound PUBLISH and its acknowledgement (which the shard may
//! delay until the message is durable), the shard's routing and fan-out, delivery to
//! sessions, and the outbound QoS 1/2 acknowledgements.

use super::*;

impl Core {
    pub(super) fn on_publish(&mut self, id: ConnId, mut p: Publish, now: Instant) {
        let alias_max = self.config.topic_alias_maximum;
        let max_inflight = usize::from(self.config.max_inflight);
        let (max_qos, retain_available, rate) =
            (self.config.max_qos, self.config.retain_available, self.config.max_publish_rate);
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if p.qos as u8 > max_qos {
            // Above the Maximum QoS the broker announced (MQTT 5, 3.2.2.3.4).
            return self.close(id, CloseWith { reason: Some(reason::QOS_NOT_SUPPORTED), will: true }, now);
        }
        if p.retain && !retain_available {
            if conn.version.is_v5() {
                // Retain Available was 0 (MQTT 5, 3.2.2.3.5).
                return self.close(id, CloseWith { reason: Some(reason::RETAIN_NOT_SUPPORTED), will: true }, now);
            }
            p.retain = false;
        }
        if rate > 0 {
            // The reader stops handing over packets while the bucket is in debt (on_bytes).
            if conn.rate_take(rate, now) {
                self.stats.rate_limited += 1;
            }
        }
        // Topic alias (client to server) [MQTT-3.3.2-7..12].
        let topic = match p.properties.topic_alias {
            Some(alias) if alias == 0 || alias > alias_max => {
                return self.close(id, CloseWith { reason: Some(reason::TOPIC_ALIAS_INVALID), will: true }, now);
            }
            Some(alias) if p.topic.is_empty() => match conn.aliases_in.get(&alias) {
                Some(t) => t.clone(),
                None => return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now),
            },
            Some(alias) => {
                conn.aliases_in.insert(alias, owned(&p.topic));
                p.topic.clone()
            }
            None => p.topic.clone(),
        };
        if topic::validate_topic_name(&topic).is_err() {
            return self.close(id, CloseWith { reason: Some(reason::TOPIC_NAME_INVALID), will: true }, now);
        }
        if !p.properties.subscription_identifiers.is_empty() {
            // Only the server sets subscription identifiers [MQTT-3.3.4-6].
            return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now);
        }
        // `$SYS/` is the broker's own (clients reading it must be able to trust it).
        if topic.starts_with(SYS_PREFIX) || conn.acl.as_ref().is_some_and(|acl| !access::can_publish(acl, &topic)) {
            return self.refuse_publish(id, p.qos, p.pkid);
        }
        let client_id = conn.client_id.clone();
        let Some(session) = self.sessions.get_mut(&client_id) else { return };
        let qos = p.qos;
        let pkid = p.pkid;
        let shard = shard_of(&topic, self.cores);
        let mut exchange = None;
        if qos != QoS::AtMostOnce {
            // Receive Maximum: unacknowledged QoS 1 plus unreleased QoS 2 [MQTT-3.3.4-7].
            // 3.1.1 has no Receive Maximum; the same bound keeps its state finite.
            let in_use = conn.unacked_qos1 as usize + session.incoming_qos2.len();
            let duplicate_qos2 = qos == QoS::ExactlyOnce && session.incoming_qos2.contains_key(&pkid);
            if in_use >= max_inflight && !duplicate_qos2 {
                return self.close(id, CloseWith { reason: Some(reason::RECEIVE_MAXIMUM_EXCEEDED), will: true }, now);
            }
            if duplicate_qos2 {
                // Already taken: answer again, deliver nothing twice [MQTT-4.3.3-9].
                let ack = Packet::PubRec(Ack::new(pkid, reason::SUCCESS));
                return self.write_packet(id, &ack);
            }
            if qos == QoS::ExactlyOnce {
                // A persistent session's exchange is logged with the message: after a crash a
                // resent PUBLISH is still known, and not delivered twice.
                let logged = self.config.wal_enabled && session.is_persistent();
                exchange = logged.then_some(persist::Exchange { incarnation: session.incarnation, pkid });
                let at = LoggedExchange { shard, seq: 0, releasing: false };
                session.incoming_qos2.insert(pkid, logged.then_some(at));
            } else {
                conn.unacked_qos1 += 1;
            }
        }
        self.stats.messages_in_by_qos[qos as usize] += 1;
        let mut msg = Message::from_publish(p, topic, client_id, now);
        if qos != QoS::AtMostOnce || msg.retain {
            // It may wait in queues or the retained store: own its bytes (one copy here,
            // not one per subscriber).
            msg = msg.detached();
        }
        let msg = Arc::new(msg);
        let ack = (qos != QoS::AtMostOnce).then_some(PublishAck {
            core: self.id,
            conn: id,
            pkid,
            qos,
            exchange,
            step: AckStep::Publish,
        });
        self.send(shard, CoreMsg::Publish { msg, ack });
    }

    /// Publishes a broker figure as a retained QoS 0 message on `$SYS/...` (mosquitto's
    /// names). Subscribers to `#` or `+/...` do not see it [MQTT-4.7.2-1].
    pub fn publish_system(&mut self, topic: &str, value: String, now: Instant) {
        let topic = Bytes::from(topic.to_string());
        let mut p = Publish::new(topic.clone(), QoS::AtMostOnce, Bytes::from(value));
        p.retain = self.config.retain_available;
        let msg = Arc::new(Message::from_publish(p, topic, Bytes::from_static(b"$broker"), now));
        let shard = shard_of(&msg.topic, self.cores);
        self.send(shard, CoreMsg::Publish { msg, ack: None });
        self.run_local(now);
    }

    /// A publish the ACL refuses is dropped [MQTT-3.3.5-2]: QoS 0 silently, QoS 1/2 with
    /// 0x87 Not authorized in MQTT 5. MQTT 3.1.1 has no way to say no, so it gets the usual
    /// acknowledgement (as mosquitto does) and the message goes nowhere.
    fn refuse_publish(&mut self, id: ConnId, qos: QoS, pkid: u16) {
        self.stats.acl_denied_publish += 1;
        let Some(conn) = self.conns.get(&id) else { return };
        let v5 = conn.version.is_v5();
        let code = if v5 { reason::NOT_AUTHORIZED } else { reason::SUCCESS };
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => self.write_packet(id, &Packet::PubAck(Ack::new(pkid, code))),
            QoS::ExactlyOnce => {
                if !v5 {
                    // The exchange goes on to PUBREL/PUBCOMP.
                    let client_id = conn.client_id.clone();
                    if let Some(s) = self.sessions.get_mut(&client_id) {
                        s.incoming_qos2.insert(pkid, None);
                    }
                }
                self.write_packet(id, &Packet::PubRec(Ack::new(pkid, code)));
            }
        }
    }

    pub(super) fn on_publish_done(&mut self, a: PublishAck, code: u8, seq: u64, now: Instant) {
        match a.step {
            AckStep::Publish => {}
            AckStep::Release => return self.on_release_done(a, code, now),
            AckStep::Delivery { order, received } => return self.on_delivery_logged(a, order, received, code, now),
            // A snapshot that could not be logged (full disk) still answers: the subscription
            // is in effect, and while the log fails no publish is acknowledged either.
            AckStep::Snapshot { request } => return self.answer_request(request, now),
        }
        let (id, pkid, qos) = (a.conn, a.pkid, a.qos);
        let Some(conn) = self.conns.get(&id) else { return };
        let client_id = conn.client_id.clone();
        let v5 = conn.version.is_v5();
        let session = self.sessions.get_mut(&client_id);
        if code >= 0x80 {
            // The message could not be made durable: the publisher must not be told it was
            // taken. The exchange ends, so a retry with this packet id is a new message.
            let ended = session.filter(|_| qos == QoS::ExactlyOnce).and_then(|s| s.incoming_qos2.remove(&pkid));
            if let (Some(Some(at)), Some(x)) = (ended, a.exchange) {
                // Its record may still reach the log later (a disk that fills up and
                // recovers): log the end too, so that a restart does not revive it.
                let body = persist::encode_release(&client_id, x);
                self.send(at.shard, CoreMsg::Release { body, ack: None });
            }
            if !v5 {
                // 3.1.1 has no failure code for PUBACK/PUBREC: close, the client resends.
                return self.close(id, CloseWith { reason: None, will: true }, now);
            }
        } else if let Some(Some(Some(at))) = session.map(|s| s.incoming_qos2.get_mut(&pkid)) {
            // Where the exchange is logged, for retention (see `publish_pins`).
            at.seq = seq;
        }
        if self.hold_acks && code < 0x80 {
            // Overloaded: the publisher waits for this (see `set_hold_acks`).
            self.held_acks.push_back((now, id, pkid, qos, code));
            return;
        }
        self.write_publish_ack(id, pkid, qos, code);
    }

    /// The PUBACK (QoS 1) or PUBREC (QoS 2) of an inbound publish.
    fn write_publish_ack(&mut self, id: ConnId, pkid: u16, qos: QoS, code: u8) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let code = if conn.version.is_v5() { code } else { reason::SUCCESS };
        let packet = if qos == QoS::ExactlyOnce {
            Packet::PubRec(Ack::new(pkid, code))
        } else {
            conn.unacked_qos1 = conn.unacked_qos1.saturating_sub(1);
            Packet::PubAck(Ack::new(pkid, code))
        };
        self.write_packet(id, &packet);
    }

    /// While the broker is overloaded, the PUBACK/PUBREC of inbound QoS 1/2 publishes wait:
    /// a publisher may have only so many unacknowledged (its Receive Maximum), so it stops
    /// sending, and what is taken in stays bounded by those windows. Reading less from
    /// publishers alone did not bound it: what they had sent before the overload showed
    /// still filled subscribers' queues past their limits, and those dropped QoS 1 messages.
    /// Ending the hold sends every held acknowledgement.
    pub fn set_hold_acks(&mut self, hold: bool) {
        self.hold_acks = hold;
        if !hold {
            self.release_held_acks(None);
        }
    }

    /// Sends the held acknowledgements held since `before` or earlier (all with `None`): a
    /// hold is bounded in time, so that even a wrong overload verdict costs publishers only
    /// throughput.
    pub fn release_held_acks(&mut self, before: Option<Instant>) {
        while let Some(&(held_at, id, pkid, qos, code)) = self.held_acks.front() {
            if before.is_some_and(|b| held_at > b) {
                break;
            }
            self.held_acks.pop_front();
            self.write_publish_ack(id, pkid, qos, code);
        }
        self.flush_writes();
    }

    /// Acknowledgements held back (see [`Core::set_hold_acks`]).
    pub fn held_acks(&self) -> usize {
        self.held_acks.len()
    }

    pub fn holding_acks(&self) -> bool {
        self.hold_acks
    }

    pub(super) fn on_pubrel(&mut self, id: ConnId, pkid: u16) {
        let Some(conn) = self.conns.get(&id) else { return };
        let Some(s) = self.sessions.get_mut(&conn.client_id) else { return };
        let code = match s.incoming_qos2.get_mut(&pkid) {
            // Its release is being logged: PUBCOMP follows once it is.
            Some(Some(at)) if at.releasing => return,
            Some(Some(at)) => {
                at.releasing = true;
                let shard = at.shard;
                // A logged exchange ends with a logged release, in the same log. PUBCOMP
                // waits for it (in `immediate` mode): only then may the client reuse the
                // packet id, which must not find the old exchange after a crash. Until then
                // the id stays in use, a resent PUBLISH still a duplicate.
                let exchange = persist::Exchange { incarnation: s.incarnation, pkid };
                let body = persist::encode_release(&s.client_id, exchange);
                let ack = PublishAck {
                    core: self.id,
                    conn: id,
                    pkid,
                    qos: QoS::ExactlyOnce,
                    exchange: Some(exchange),
                    step: AckStep::Release,
                };
                return self.send(shard, CoreMsg::Release { body, ack: Some(ack) });
            }
            Some(None) => {
                s.incoming_qos2.remove(&pkid);
                reason::SUCCESS
            }
            None => reason::PACKET_IDENTIFIER_NOT_FOUND,
        };
        self.write_packet(id, &Packet::PubComp(Ack::new(pkid, code)));
    }

    /// The release of a logged exchange is durable (or could not be made so). The answer
    /// goes to the connection that sent PUBREL; one that is gone meanwhile gets nothing, and
    /// its client resends PUBREL on its next connection (which resets `releasing`).
    fn on_release_done(&mut self, a: PublishAck, code: u8, now: Instant) {
        let Some(conn) = self.conns.get(&a.conn) else { return };
        let Some(s) = self.sessions.get_mut(&conn.client_id) else { return };
        let Some(Some(at)) = s.incoming_qos2.get_mut(&a.pkid).filter(|at| at.is_some_and(|at| at.releasing)) else {
            return;
        };
        if code >= 0x80 {
            // PUBCOMP has no failure code: close without it, keeping the exchange, so that the
            // client resends PUBREL on its next connection and the release is logged then.
            at.releasing = false;
            let reason = Some(reason::UNSPECIFIED_ERROR);
            return self.close(a.conn, CloseWith { reason, will: true }, now);
        }
        s.incoming_qos2.remove(&a.pkid);
        self.write_packet(a.conn, &Packet::PubComp(Ack::new(a.pkid, reason::SUCCESS)));
    }

    /// A logged QoS 2 release, on the shard that logged its exchange.
    pub(super) fn shard_release(&mut self, body: Vec<u8>, ack: Option<PublishAck>, now: Instant) {
        // Not held to the backlog bound: one small record per exchange, and those are bounded
        // by Receive Maximum.
        self.append_answered(body, ack, reason::SUCCESS, now);
    }

    pub(super) fn with_session(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut Session, &mut Conn, &mut Writer<'_>, Limits, &mut Stats),
    ) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(session) = self.sessions.get_mut(&conn.client_id) else { return };
        let mut w = Writer {
            out: &mut self.writes,
            scratch: &mut self.scratch,
            cache: &mut self.fanout,
            deliveries: &mut self.deliveries,
        };
        f(session, conn, &mut w, self.limits, &mut self.stats);
    }

    pub(super) fn on_puback(&mut self, id: ConnId, pkid: u16, now: Instant) {
        self.with_session(id, |s, c, w, limits, stats| {
            if s.inflight.get(&pkid).is_some_and(|f| f.out.qos == QoS::AtLeastOnce) {
                session::complete(s, pkid);
                session::pump(s, c, limits, now, w, stats);
            }
        });
    }

    pub(super) fn on_pubrec(&mut self, id: ConnId, a: Ack, now: Instant) {
        self.with_session(id, |s, c, w, limits, stats| {
            let logged = s.inflight.get(&a.pkid).is_some_and(|f| session::logs_delivery(s, &f.out, limits));
            match s.inflight.get_mut(&a.pkid) {
                // (A PUBLISH still waiting for its `sent` record was never seen by the client.)
                Some(f) if f.out.qos == QoS::ExactlyOnce && (f.released || !f.logging) => {
                    if a.reason >= 0x80 {
                        // The receiver refused it: the exchange ends here.
                        if logged {
                            w.deliveries.extend(s.delivery_step(a.pkid, DeliveryState::Completed, None));
                        }
                        session::complete(s, a.pkid);
                        session::pump(s, c, limits, now, w, stats);
                    } else if f.logging {
                        // A repeated PUBREC while `received` is being logged: the PUBREL follows.
                    } else if !f.released && logged {
                        // The PUBREL waits for the `received` record: after a crash the exchange
                        // must resume with PUBREL, never with the PUBLISH again.
                        f.released = true;
                        f.logging = true;
                        w.deliveries.extend(s.delivery_step(a.pkid, DeliveryState::Received, Some(c.id)));
                    } else {
                        f.released = true;
                        w.packet(c, &Packet::PubRel(Ack::new(a.pkid, reason::SUCCESS)));
                    }
                }
                _ => w.packet(c, &Packet::PubRel(Ack::new(a.pkid, reason::PACKET_IDENTIFIER_NOT_FOUND))),
            }
        });
    }

    pub(super) fn on_pubcomp(&mut self, id: ConnId, pkid: u16, now: Instant) {
        self.with_session(id, |s, c, w, limits, stats| {
            let Some(f) = s.inflight.get(&pkid).filter(|f| f.released && !f.logging) else { return };
            if session::logs_delivery(s, &f.out, limits) {
                // Nothing waits for this one: lost in a crash, the exchange resumes with a
                // PUBREL, which the client answers with PUBCOMP again [MQTT-4.3.3-11].
                w.deliveries.extend(s.delivery_step(pkid, DeliveryState::Completed, None));
            }
            session::complete(s, pkid);
            session::pump(s, c, limits, now, w, stats);
        });
    }

    /// A step of a logged outbound QoS 2 exchange is durable (or failed): its connection, if
    /// still attached to the session, sends the PUBLISH or PUBREL that waited for it.
    fn on_delivery_logged(&mut self, a: PublishAck, order: u64, received: bool, code: u8, now: Instant) {
        let Some(conn) = self.conns.get_mut(&a.conn) else { return };
        let Some(s) = self.sessions.get_mut(&conn.client_id).filter(|s| s.conn() == Some(a.conn)) else { return };
        let mut w = Writer {
            out: &mut self.writes,
            scratch: &mut self.scratch,
            cache: &mut self.fanout,
            deliveries: &mut self.deliveries,
        };
        let ok = code < 0x80;
        self.deliveries_failed |= !ok;
        session::delivery_logged(s, conn, a.pkid, order, received, ok, self.limits, now, &mut w, &mut self.stats);
        if ok {
            session::pump(s, conn, self.limits, now, &mut w, &mut self.stats);
        }
    }

    /// Sends the steps of logged outbound QoS 2 exchanges to the shards whose logs hold
    /// their messages; those a connection waits for are answered like a publish.
    pub(super) fn send_deliveries(&mut self) {
        for step in std::mem::take(&mut self.deliveries) {
            let ack = step.waiting.map(|(conn, pkid, order)| PublishAck {
                core: self.id,
                conn,
                pkid,
                qos: QoS::ExactlyOnce,
                exchange: None,
                step: AckStep::Delivery { order, received: step.received },
            });
            self.send(step.shard, CoreMsg::Release { body: step.body, ack });
        }
    }

    /// Logs again the steps of outbound QoS 2 exchanges that failed to log (a full disk), for
    /// the sessions connected here. Called at the checkpoint after a failure.
    pub(super) fn retry_deliveries(&mut self) {
        for (&id, conn) in self.conns.iter() {
            let Some(s) = self.sessions.get_mut(&conn.client_id).filter(|s| s.conn() == Some(id)) else { continue };
            let failed: Vec<u16> = s.inflight.iter().filter(|(_, f)| f.log_failed).map(|(&p, _)| p).collect();
            for pkid in failed {
                self.deliveries.extend(s.relog_step(pkid, id));
            }
        }
    }

    pub(super) fn shard_publish(&mut self, msg: SharedMessage, ack: Option<PublishAck>, now: Instant) {
        if self.journal_closed && (msg.qos != QoS::AtMostOnce || msg.retain) {
            if let Some(a) = ack {
                self.send(a.core, CoreMsg::PublishDone { ack: a, reason: reason::SERVER_SHUTTING_DOWN, seq: 0 });
            }
            return;
        }
        // `$SYS` figures are republished every interval: not history worth logging.
        let logged =
            self.journal.is_some() && (msg.qos != QoS::AtMostOnce || msg.retain) && !msg.topic.starts_with(SYS_PREFIX);
        if logged && self.journal_backlog.len() >= JOURNAL_BACKLOG_MAX {
            // The log cannot keep up (or is failing): refuse rather than grow without bound,
            // and do not deliver what the publisher is told was not taken.
            self.stats.journal_rejected += 1;
            if let Some(a) = ack {
                self.send(a.core, CoreMsg::PublishDone { ack: a, reason: reason::QUOTA_EXCEEDED, seq: 0 });
            }
            return;
        }
        if msg.retain {
            // [MQTT-3.3.1-5]: store (or delete, for an empty payload) the retained message.
            self.retained.set(&msg);
        }
        let origin = logged.then_some((self.id, self.next_log_seq));
        let mut targets = std::mem::take(&mut self.route_scratch);
        let shared = self.subscriptions.route(&msg, &mut targets);
        let matched = !targets.is_empty();
        // Which members of shared subscriptions get it goes into its record: after a crash
        // it is owed to them alone (see `storage::recover`).
        let shared_to: Vec<Bytes> = if logged && msg.qos != QoS::AtMostOnce && shared > 0 {
            targets[targets.len() - shared..].iter().map(|t| t.session.client_id.clone()).collect()
        } else {
            Vec::new()
        };
        if targets.iter().all(|t| t.session.core == self.id) {
            for t in targets.drain(..) {
                self.deliver(t, &msg, origin, now);
            }
        } else {
            targets.sort_by_key(|t| t.session.core);
            while let Some(last) = targets.last() {
                let core = last.session.core;
                let split = targets.partition_point(|t| t.session.core < core);
                let batch = targets.split_off(split);
                if core == self.id {
                    for t in batch {
                        self.deliver(t, &msg, origin, now);
                    }
                } else {
                    self.send(core, CoreMsg::Deliver { msg: msg.clone(), origin, targets: batch });
                }
            }
        }
        self.route_scratch = targets;
        let code = if matched { reason::SUCCESS } else { reason::NO_MATCHING_SUBSCRIBERS };
        if !logged {
            if let Some(a) = ack {
                self.send(a.core, CoreMsg::PublishDone { ack: a, reason: code, seq: 0 });
            }
            return;
        }
        let body = persist::encode_message(&msg, &self.clock, ack.and_then(|a| a.exchange), &shared_to);
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained_seq.remove(&msg.topic);
            } else {
                self.retained_seq.insert(owned(&msg.topic), self.next_log_seq);
            }
        }
        // In immediate mode the acknowledgement waits for the sync that covers the record;
        // otherwise it goes now.
        self.append_answered(body, ack, code, now);
    }

    pub(super) fn deliver(&mut self, t: Target, msg: &SharedMessage, origin: Option<(usize, u64)>, now: Instant) {
        let epoch_ok = self.sessions.get(&t.session.client_id).map(|s| s.epoch == t.session.epoch);
        match epoch_ok {
            Some(true) => {
                let out = Outgoing {
                    msg: msg.clone(),
                    qos: t.qos,
                    retain: t.retain,
                    subscription_ids: t.subscription_ids,
                    origin,
                };
                self.offer(&t.session.client_id, out, now);
            }
            Some(false) => self.stats.dropped_stale_session += 1,
            None => {
                // The session moved to another core after the shard routed this: forward it.
                if let Some(&(epoch, core, _)) = self.moved.get(&t.session.client_id) {
                    if epoch == t.session.epoch && core != self.id {
                        let mut t = t;
                        t.session.core = core;
                        self.send(core, CoreMsg::Deliver { msg: msg.clone(), origin, targets: vec![t] });
                    }
                }
            }
        }
    }

    pub(super) fn offer(&mut self, client_id: &Bytes, out: Outgoing, now: Instant) {
        let Some(session) = self.sessions.get_mut(client_id) else { return };
        let mut conn = session.conn().and_then(|id| self.conns.get_mut(&id)).map(|c| &mut **c);
        let mut w = Writer {
            out: &mut self.writes,
            scratch: &mut self.scratch,
            cache: &mut self.fanout,
            deliveries: &mut self.deliveries,
        };
        session::offer(session, conn.as_deref_mut(), out, self.limits, now, &mut w, &mut self.stats);
        // A client that reads, but more slowly than this is written to it: its write buffer
        // an eighth full is overload (see `overload_level`), well before QoS 0 to it is
        // dropped (what publishers on other cores have in flight still arrives after that).
        // (The connection found above, not a second lookup: this runs for every delivery.)
        let reading = conn.as_ref().is_some_and(|c| super::reading(c, self.ticks));
        let backlog =
            reading && conn.as_ref().is_some_and(|c| c.pending_write as usize > self.limits.max_write_buffer / 8);
        if backlog {
            self.backlogged_since_check = true;
            if !self.overload_signalled {
                self.overload_signalled = true;
                self.actions.push(Action::Overloaded);
            }
        }
        if session.queue.is_empty() || session.conn().is_none() {
            return;
        }
        self.queued_since_check = true;
        // At full speed a queue of the default 1,000 fills in milliseconds, long before the
        // next tick measures the backlog: a queue a quarter full is overload at once (what the
        // publishers have in flight still arrives after that, and must fit).
        // Only if its client takes what it is sent (it acknowledged since the last tick, or is
        // being written to): one that stopped doing both holds nobody up, its queue drops as
        // configured.
        if !self.overload_signalled
            && (session.acked_since_check || reading)
            && self.limits.queue_quarter_level(&session.queue) > 1.0
        {
            self.overload_signalled = true;
            // The fast checks between ticks (`overload_level_now`) look at this queue again.
            self.queue_level = self.queue_level.max(1.0);
            self.watch_queue(client_id);
            self.actions.push(Action::Overloaded);
        }
    }
}
