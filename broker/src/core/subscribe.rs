//! SUBSCRIBE and UNSUBSCRIBE: validation, registration in the shards that must know a
//! filter, the replies that complete a SUBACK/UNSUBACK, and retained messages on subscribe.

use super::*;

impl Core {
    pub(super) fn on_subscribe(&mut self, id: ConnId, mut s: Subscribe, now: Instant) {
        // Granted at most the broker's Maximum QoS (MQTT 5, 3.2.2.3.4); the SUBACK says so.
        let max_qos = QoS::from_u8(self.config.max_qos).unwrap_or(QoS::AtMostOnce);
        for f in &mut s.filters {
            if f.options.qos > max_qos {
                f.options.qos = max_qos;
            }
        }
        let Some(conn) = self.conns.get(&id) else { return };
        let v5 = conn.version.is_v5();
        let client_id = conn.client_id.clone();
        let Some(session) = self.sessions.get(&client_id) else { return };
        let sref = session_ref(session, self.id);
        let sub_id = s.properties.subscription_identifiers.first().copied();
        let mut reasons = Vec::with_capacity(s.filters.len());
        let mut filters = Vec::with_capacity(s.filters.len());
        let mut keys = Vec::with_capacity(s.filters.len());
        let mut accepted = Vec::new();
        for (index, f) in s.filters.iter().enumerate() {
            let shared = topic::parse_shared(&f.filter);
            let valid = match shared {
                Ok(Some(_)) => true,
                Ok(None) => topic::validate_filter(&f.filter).is_ok(),
                Err(_) => false,
            };
            if !valid {
                reasons.push(if v5 { reason::TOPIC_FILTER_INVALID } else { reason::v311::SUBACK_FAILURE });
                filters.push((QoS::AtMostOnce, None));
                keys.push(Bytes::new());
                continue;
            }
            let plain_filter = match shared {
                Ok(Some((_group, inner))) => inner,
                _ => &f.filter[..],
            };
            if conn.acl.as_ref().is_some_and(|acl| !access::can_subscribe(acl, plain_filter)) {
                // 0x80 in both versions: the Eclipse Paho interoperability tests expect it,
                // and it does not tell a prober which filters exist.
                self.stats.acl_denied_subscribe += 1;
                reasons.push(reason::UNSPECIFIED_ERROR);
                filters.push((QoS::AtMostOnce, None));
                keys.push(Bytes::new());
                continue;
            }
            if matches!(shared, Ok(Some(_))) && f.options.no_local {
                // [MQTT-3.8.3-4]
                return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now);
            }
            reasons.push(f.options.qos as u8);
            filters.push((f.options.qos, sub_id));
            keys.push(owned(&f.filter));
            let is_new = !session.subscriptions.contains_key(&f.filter);
            let want_retained = matches!(shared, Ok(None))
                && match f.options.retain_handling {
                    0 => true,
                    1 => is_new,
                    _ => false,
                };
            accepted.push((
                index,
                f.filter.clone(),
                StoredSubscription { options: f.options, subscription_id: sub_id, since: Vec::new() },
                want_retained,
            ));
        }
        let req_id = self.next_request;
        self.next_request += 1;
        let mut outstanding = 0;
        for (index, filter, stored, want_retained) in accepted {
            if let Some(session) = self.sessions.get_mut(&client_id) {
                session.subscriptions.insert(owned(&filter), stored.clone());
            }
            outstanding += self.route_subscribe(
                Some((RequestRef { core: self.id, id: req_id }, index)),
                &sref,
                &filter,
                stored,
                want_retained,
            );
        }
        let pending =
            Pending::SubAck { conn: id, pkid: s.pkid, reasons, filters, keys, outstanding, retained: Vec::new() };
        self.pending.insert(req_id, pending);
        if outstanding == 0 {
            self.finish_request(req_id, now);
        }
    }

    /// Sends a subscription to the shards that must know it; returns how many replies to
    /// expect (when `req` is set).
    pub(super) fn route_subscribe(
        &mut self,
        req: Option<(RequestRef, usize)>,
        sref: &SessionRef,
        full: &Bytes,
        stored: StoredSubscription,
        want_retained: bool,
    ) -> usize {
        let (group, filter, shards) = self.filter_shards(full);
        let n = shards.len();
        for shard in shards {
            let subscriber =
                Subscriber { session: sref.clone(), options: stored.options, subscription_id: stored.subscription_id };
            self.send(
                shard,
                CoreMsg::Subscribe { req, subscriber, filter: filter.clone(), group: group.clone(), want_retained },
            );
        }
        if req.is_some() {
            n
        } else {
            0
        }
    }

    /// Splits a subscription's full filter into (shared group, filter) and the shards that
    /// must know it: the topic's owner for an exact filter, every shard for a wildcard.
    fn filter_shards(&self, full: &Bytes) -> (Option<Bytes>, Bytes, Vec<usize>) {
        let (group, filter) = match topic::parse_shared(full) {
            Ok(Some((g, f))) => (Some(full.slice_ref(g)), full.slice_ref(f)),
            _ => (None, full.clone()),
        };
        let shards = self.shards_for(&filter);
        (group, filter, shards)
    }

    pub(super) fn route_unsubscribe(
        &mut self,
        req: Option<RequestRef>,
        client_id: &Bytes,
        epoch: u64,
        full: &Bytes,
    ) -> usize {
        let (group, filter, shards) = self.filter_shards(full);
        let n = shards.len();
        for shard in shards {
            let msg = CoreMsg::Unsubscribe {
                req,
                client_id: client_id.clone(),
                epoch,
                filter: filter.clone(),
                group: group.clone(),
            };
            self.send(shard, msg);
        }
        if req.is_some() {
            n
        } else {
            0
        }
    }

    pub(super) fn on_unsubscribe(&mut self, id: ConnId, u: Unsubscribe, now: Instant) {
        let Some(conn) = self.conns.get(&id) else { return };
        let client_id = conn.client_id.clone();
        let Some(session) = self.sessions.get_mut(&client_id) else { return };
        let epoch = session.epoch;
        let mut reasons = Vec::with_capacity(u.filters.len());
        let mut removed = Vec::new();
        for f in &u.filters {
            if session.subscriptions.remove(f).is_some() {
                reasons.push(reason::SUCCESS);
                removed.push(f.clone());
            } else {
                reasons.push(reason::NO_SUBSCRIPTION_EXISTED);
            }
        }
        let req_id = self.next_request;
        self.next_request += 1;
        let mut outstanding = 0;
        for f in removed {
            outstanding +=
                self.route_unsubscribe(Some(RequestRef { core: self.id, id: req_id }), &client_id, epoch, &f);
        }
        self.pending.insert(req_id, Pending::UnsubAck { conn: id, pkid: u.pkid, reasons, outstanding });
        if outstanding == 0 {
            self.finish_request(req_id, now);
        }
    }

    /// Every shard answered the request. In `immediate` mode a persistent session's
    /// (UN)SUBACK waits for its new snapshot to be durable: an acknowledged subscription
    /// survives a crash, and so do the messages acknowledged to publishers after it.
    pub(super) fn finish_request(&mut self, req_id: u64, now: Instant) {
        let conn = match self.pending.get(&req_id) {
            Some(Pending::SubAck { conn, .. } | Pending::UnsubAck { conn, .. }) => *conn,
            None => return,
        };
        let Some(client_id) = self.conns.get(&conn).map(|c| c.client_id.clone()) else {
            self.pending.remove(&req_id);
            return;
        };
        if self.wait_for_durable && self.journal.is_some() {
            let ack = PublishAck {
                core: self.id,
                conn,
                pkid: 0,
                qos: QoS::AtMostOnce,
                exchange: None,
                step: AckStep::Snapshot { request: req_id },
            };
            if self.log_session(&client_id, now, Some(ack)) {
                return;
            }
        } else {
            self.persist_session(&client_id, now);
        }
        self.answer_request(req_id, now);
    }

    /// Sends the SUBACK (then the retained messages) or UNSUBACK of a finished request.
    pub(super) fn answer_request(&mut self, req_id: u64, now: Instant) {
        let Some(p) = self.pending.remove(&req_id) else { return };
        match p {
            Pending::SubAck { conn, pkid, reasons, filters, retained, .. } => {
                self.write_packet(conn, &Packet::SubAck(SubAck { pkid, properties: Properties::default(), reasons }));
                // Retained messages follow the SUBACK, with RETAIN set [MQTT-3.3.1-8].
                let Some(client_id) = self.conns.get(&conn).map(|c| c.client_id.clone()) else { return };
                for (index, msg) in retained {
                    let Some(&granted) = filters.get(index) else { continue };
                    self.offer_retained(&client_id, msg, granted, now);
                }
            }
            Pending::UnsubAck { conn, pkid, reasons, .. } => {
                self.write_packet(
                    conn,
                    &Packet::UnsubAck(UnsubAck { pkid, properties: Properties::default(), reasons }),
                );
            }
        }
    }

    /// Sends a retained message on subscribe: RETAIN set [MQTT-3.3.1-8], QoS the lower of
    /// the message's and the granted one, with the filter's subscription identifier.
    pub(super) fn offer_retained(
        &mut self,
        client_id: &Bytes,
        msg: SharedMessage,
        granted: (QoS, Option<u32>),
        now: Instant,
    ) {
        let (qos, sub_id) = granted;
        let out = Outgoing {
            qos: qos.min(msg.qos),
            retain: true,
            subscription_ids: sub_id.into_iter().collect(),
            msg,
            origin: None,
        };
        self.offer(client_id, out, now);
    }

    pub(super) fn request_reply(
        &mut self,
        req_id: u64,
        filter_index: Option<usize>,
        mut retained: Vec<SharedMessage>,
        now: Instant,
    ) {
        let done = match self.pending.get_mut(&req_id) {
            Some(Pending::SubAck { outstanding, retained: r, conn, filters, .. }) => {
                *outstanding -= 1;
                if let Some(i) = filter_index {
                    if *outstanding == 0 {
                        // The last reply: SUBACK first, then these (in finish_request).
                        r.extend(retained.drain(..).map(|m| (i, m)));
                    } else if !retained.is_empty() {
                        // More shards to hear from: send this shard's retained messages now,
                        // ahead of the live messages it routes from here on (which would
                        // otherwise overtake them). PUBLISH before SUBACK is allowed (3.8.4).
                        let (conn, granted) = (*conn, filters.get(i).copied());
                        let client_id = self.conns.get(&conn).map(|c| c.client_id.clone());
                        if let (Some(client_id), Some(granted)) = (client_id, granted) {
                            for msg in retained.drain(..) {
                                self.offer_retained(&client_id, msg, granted, now);
                            }
                        }
                        return;
                    }
                }
                *outstanding == 0
            }
            Some(Pending::UnsubAck { outstanding, .. }) => {
                *outstanding -= 1;
                *outstanding == 0
            }
            None => false,
        };
        if done {
            self.finish_request(req_id, now);
        }
    }
}
