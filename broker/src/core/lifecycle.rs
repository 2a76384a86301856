//! Connections and sessions over time: CONNECT and CONNACK, session takeover between
//! cores, DISCONNECT and broker-side closes, keep-alive, will messages (delay or session
//! end, whichever first), session expiry.

use super::*;

impl Core {
    pub(super) fn connack_refuse(&mut self, id: ConnId, code: u8) {
        let ack = ConnAck { session_present: false, code, properties: Properties::default() };
        self.write_packet(id, &Packet::ConnAck(ack));
        self.conns.remove(&id);
        self.flush_writes();
        self.actions.push(Action::Close(id));
    }

    pub(super) fn on_connect(&mut self, id: ConnId, c: Connect, now: Instant) {
        let core_id = self.id;
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.version = c.protocol;
        let v5 = c.protocol.is_v5();
        if let Some(code) = Some(conn.refuse_with).filter(|&c| c != 0) {
            self.stats.refused_at_limit += 1;
            return self.connack_refuse(id, code);
        }
        let (max_qos, retain_available) = (self.config.max_qos, self.config.retain_available);
        let mut c = c;
        if let Some(w) = &mut c.will {
            if w.qos as u8 > max_qos {
                if v5 {
                    // A will above the Maximum QoS (MQTT 5, 3.2.2.3.4).
                    return self.connack_refuse(id, reason::QOS_NOT_SUPPORTED);
                }
                w.qos = QoS::from_u8(max_qos).unwrap_or(QoS::AtMostOnce);
            }
            if w.retain && !retain_available {
                if v5 {
                    // A retained will without Retain Available (MQTT 5, 3.2.2.3.5).
                    return self.connack_refuse(id, reason::RETAIN_NOT_SUPPORTED);
                }
                w.retain = false;
            }
        }
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if v5 && c.properties.authentication_method.is_some() {
            // Enhanced authentication is not supported: say so [MQTT-4.12.0-1].
            self.connack_refuse(id, reason::BAD_AUTHENTICATION_METHOD);
            return;
        }
        if let Some(w) = &c.will {
            // `$SYS/` is the broker's, for wills too.
            if w.topic.starts_with(SYS_PREFIX) {
                return self.connack_refuse(id, reason::NOT_AUTHORIZED);
            }
            if topic::validate_topic_name(&w.topic).is_err() {
                self.connack_refuse(id, reason::TOPIC_NAME_INVALID);
                return;
            }
        }
        // Owned copies: these live as long as the session, and a slice would pin the whole
        // read buffer it came from.
        let mut client_id = owned(&c.client_id);
        if client_id.is_empty() {
            if !v5 && !c.clean_start {
                // [MQTT-3.1.3-8]
                self.connack_refuse(id, reason::CLIENT_IDENTIFIER_NOT_VALID);
                return;
            }
            client_id = Bytes::from(format!("promptmq-{:x}-{core_id}-{id}", self.nonce));
            conn.assigned_client_id = v5;
        }
        conn.client_id = client_id.clone();
        if self.config.use_identity_as_username {
            let identity = match &mut conn.phase {
                Phase::AwaitingConnect { peer_identity } => peer_identity.take().map(|b| *b),
                _ => None,
            };
            if let Some(name) = identity {
                // The certificate is the credential: whatever user name and password the
                // client sent are not used.
                c.username = Some(name);
                c.password = None;
                let login = self.access.as_ref().map(|_| Ok(access::Login::Verified));
                return self.accept_connect(id, c, login, now);
            }
        }
        if let Some(checks) = &self.access {
            if let (true, Some(username)) = (checks.login_is_costly(c.username.as_deref()), &c.username) {
                // Owned: the check outlives this read buffer.
                let check = access::LoginCheck {
                    conn: id,
                    username: owned(username),
                    password: c.password.as_ref().map(owned),
                    // The CONNECT deadline (see `Conn::timer_at`).
                    deadline: conn.timer_at.get().unwrap_or(now + crate::session::CONNECT_TIMEOUT),
                };
                conn.phase = Phase::AwaitingLogin { connect: Box::new(c) };
                self.actions.push(Action::CheckLogin(check));
                return;
            }
        }
        let login = self.access.as_ref().map(|checks| checks.login(c.username.as_deref(), c.password.as_deref()));
        self.accept_connect(id, c, login, now);
    }

    /// The verdict on a password checked off the core: the CONNECT it belongs to goes on.
    pub fn on_login(&mut self, id: ConnId, verdict: Result<access::Login, u8>, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let connect = match std::mem::replace(&mut conn.phase, Phase::AwaitingConnect { peer_identity: None }) {
            Phase::AwaitingLogin { connect } => connect,
            other => {
                conn.phase = other;
                return;
            }
        };
        self.accept_connect(id, *connect, Some(verdict), now);
        // What the CONNECT sent to this core itself (a takeover of a session it holds, a
        // subscription, a log record) is handled now, not at the next tick.
        self.run_local(now);
    }

    /// The rest of a CONNECT once its credentials are checked (`login` is `None` without
    /// access control): the ACL, keep-alive, will and session, then the session claim.
    fn accept_connect(&mut self, id: ConnId, c: Connect, login: Option<Result<access::Login, u8>>, now: Instant) {
        let max_keep_alive = self.config.max_keep_alive;
        let v5 = c.protocol.is_v5();
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let client_id = conn.client_id.clone();
        if let (Some(checks), Some(login)) = (self.access.clone(), login) {
            let username = c.username.as_deref();
            let login = match login {
                Ok(login) => login,
                Err(code) => {
                    // Never the password.
                    tracing::warn!(
                        client_id = %String::from_utf8_lossy(&client_id),
                        username = %String::from_utf8_lossy(username.unwrap_or_default()),
                        "login refused"
                    );
                    self.stats.auth_failures += 1;
                    return self.connack_refuse(id, code);
                }
            };
            let identity = if login == access::Login::Verified { username } else { None };
            conn.acl = checks.client_acl(&client_id, identity);
            let will_denied = c
                .will
                .as_ref()
                .is_some_and(|w| conn.acl.as_ref().is_some_and(|acl| !access::can_publish(acl, &w.topic)));
            if will_denied {
                self.stats.acl_denied_publish += 1;
                return self.connack_refuse(id, reason::NOT_AUTHORIZED);
            }
        }
        let mut keep_alive = c.keep_alive;
        if v5 && keep_alive > max_keep_alive {
            keep_alive = max_keep_alive;
            conn.server_keep_alive = Some(max_keep_alive);
        }
        let imposed = self.config.keep_alive.min(max_keep_alive);
        if v5 && keep_alive == 0 && imposed > 0 {
            // The Server Keep Alive replaces the client's value (MQTT 5, 3.2.2.3.14).
            keep_alive = imposed;
            conn.server_keep_alive = Some(imposed);
        }
        conn.keep_alive = keep_alive;
        conn.clean_start = c.clean_start;
        conn.will = c.will.map(|mut w| {
            w.topic = owned(&w.topic);
            w.payload = owned(&w.payload);
            detach_properties(&mut w.properties);
            Box::new(w)
        });
        if v5 {
            let p = &c.properties;
            conn.client_receive_max = p.receive_maximum.unwrap_or(u16::MAX);
            conn.client_max_packet = p.maximum_packet_size.unwrap_or(conn.client_max_packet);
            conn.client_alias_max = p.topic_alias_maximum.unwrap_or(0);
            conn.session_expiry = p.session_expiry_interval.unwrap_or(0);
        } else {
            conn.session_expiry = if c.clean_start { 0 } else { u32::MAX };
        }
        if conn.keep_alive > 0 {
            // Not keep_alive_deadline(): the phase is still AwaitingConnect here.
            let deadline = now + Duration::from_millis(u64::from(conn.keep_alive) * 1500);
            if conn.timer_at.get().is_none_or(|t| deadline < t) {
                conn.timer_at = Moment::at(deadline);
                self.conn_timers.push(Reverse((Moment::at(deadline), id)));
            }
        }
        let claim = self.registry.claim(&client_id, self.id);
        match claim.previous_core {
            None => self.establish(id, claim.token, None, now),
            Some(old_core) => {
                conn.phase = Phase::AwaitingSession { pending: Vec::new() };
                let clean_start = c.clean_start;
                let takeover =
                    CoreMsg::Takeover { client_id, new_core: self.id, new_claim: claim.token, clean_start, conn: id };
                self.send(old_core, takeover);
            }
        }
    }

    /// Completes a CONNECT: attaches (or creates) the session, sends CONNACK, resumes
    /// unacknowledged deliveries and handles packets pipelined behind CONNECT. `claim` is
    /// the registry token of this connection's claim on the client id.
    pub(super) fn establish(&mut self, id: ConnId, claim: u64, existing: Option<Box<Session>>, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else {
            // The connection closed while its session was in transit.
            let Some((client_id, expiry, will)) = self.closed_awaiting.remove(&id) else { return };
            match existing {
                Some(s) => self.adopt_orphan(*s, claim, expiry, will, now),
                None => match self.deferred_takeovers.remove(&client_id) {
                    Some(t) => self.handle_message(t, now),
                    None => self.registry.release(&client_id, claim),
                },
            }
            return;
        };
        let pending = match std::mem::replace(&mut conn.phase, Phase::Connected) {
            Phase::AwaitingSession { pending } => pending,
            _ => Vec::new(),
        };
        let session_present = existing.is_some() && !conn.clean_start;
        let mut session = match existing {
            Some(s) if !conn.clean_start => *s,
            _ => Session::new(conn.client_id.clone(), claim, conn.version),
        };
        // A continuing session keeps its epoch (deliveries already routed to it stay
        // valid); its claim token moves on, so shards can tell newer routes from older.
        let repoint = session.claim != claim;
        session.claim = claim;
        session.set_conn(Some(id));
        session.version = conn.version;
        session.expiry_interval = conn.session_expiry;
        session.expires_at = Moment::NONE;
        session.will = conn.will.take();
        session.will_due = Moment::NONE;
        session.acl = conn.acl.clone();
        // Any heap entry for the session (possibly on another core's heap) is now stale.
        session.timer_at = Moment::NONE;
        // A release logged for the old connection answers that connection only: a PUBREL
        // resent on this one logs it again.
        for x in session.incoming_qos2.values_mut().flatten() {
            x.releasing = false;
        }

        let mut props = Properties::default();
        if conn.version.is_v5() {
            props.receive_maximum = Some(self.config.max_inflight);
            props.maximum_packet_size = Some(self.config.max_packet_size);
            props.topic_alias_maximum =
                (self.config.topic_alias_maximum > 0).then_some(self.config.topic_alias_maximum);
            props.server_keep_alive = conn.server_keep_alive;
            props.maximum_qos = (self.config.max_qos < 2).then_some(self.config.max_qos);
            props.retain_available = (!self.config.retain_available).then_some(0);
            if conn.assigned_client_id {
                props.assigned_client_identifier = Some(conn.client_id.clone());
            }
        }
        let ack = ConnAck { session_present, code: reason::SUCCESS, properties: props };
        let mut w = Writer {
            out: &mut self.writes,
            scratch: &mut self.scratch,
            cache: &mut self.fanout,
            deliveries: &mut self.deliveries,
        };
        w.packet(conn, &Packet::ConnAck(ack));
        session::resume(&mut session, conn, self.limits, now, &mut w, &mut self.stats);
        if repoint {
            self.repoint_subscriptions(&session);
        }
        let client_id = session.client_id.clone();
        self.sessions.insert(client_id.clone(), Box::new(session));
        self.persist_session(&client_id, now);
        for packet in pending {
            if self.conns.contains_key(&id) {
                self.on_connected_packet(id, packet, now);
            }
        }
        // A newer CONNECT for the same client id arrived while this one waited for the
        // session: it takes the session over now [MQTT-3.1.4-3].
        if let Some(t) = self.deferred_takeovers.remove(&client_id) {
            self.handle_message(t, now);
        }
    }

    /// Tells the shards that the session's subscriptions now route to this core, under its
    /// current claim (a shard ignores route updates older than the one it holds).
    pub(super) fn repoint_subscriptions(&mut self, session: &Session) {
        let sref = session_ref(session, self.id);
        let subs: Vec<(Bytes, StoredSubscription)> =
            session.subscriptions.iter().map(|(f, s)| (f.clone(), s.clone())).collect();
        for (full, stored) in subs {
            self.route_subscribe(None, &sref, &full, stored, false);
        }
    }

    /// A session arrived for a connection that closed while waiting for it. The session
    /// continues as that connection left it: its will and session expiry apply as if the
    /// connection had been established and then lost.
    pub(super) fn adopt_orphan(
        &mut self,
        mut s: Session,
        claim: u64,
        expiry: u32,
        will: Option<Box<Will>>,
        now: Instant,
    ) {
        if !self.registry.owns(&s.client_id, claim) {
            // Yet another connection claimed the client id meanwhile; its takeover request
            // was deferred here and carries the session on.
            if let Some(t) = self.deferred_takeovers.remove(&s.client_id) {
                s.set_conn(None);
                self.sessions.insert(s.client_id.clone(), Box::new(s));
                self.handle_message(t, now);
            } else {
                s.will = None;
                self.end_session(s, now);
            }
            return;
        }
        s.claim = claim;
        s.set_conn(None);
        s.expiry_interval = expiry;
        s.will = will;
        self.repoint_subscriptions(&s);
        self.detach(s, true, now);
    }

    pub(super) fn on_takeover(
        &mut self,
        client_id: Bytes,
        new_core: usize,
        new_claim: u64,
        clean_start: bool,
        conn: ConnId,
        now: Instant,
    ) {
        let Some(mut s) = self.sessions.remove(&client_id) else {
            let waiting = self
                .conns
                .values()
                .any(|c| c.client_id == client_id && matches!(c.phase, Phase::AwaitingSession { .. }));
            if waiting {
                // The session is on its way here for an earlier CONNECT: pass it on once it
                // arrives, instead of answering "no session" now.
                let t = CoreMsg::Takeover { client_id: client_id.clone(), new_core, new_claim, clean_start, conn };
                self.deferred_takeovers.insert(client_id, t);
            } else {
                self.send(new_core, CoreMsg::Handoff { client_id, conn, claim: new_claim, session: None });
            }
            return;
        };
        let was_connected = s.conn().is_some();
        if let Some(old) = s.take_conn() {
            // [MQTT-3.1.4-3]: the existing connection gets DISCONNECT 0x8E and is closed.
            if let Some(c) = self.conns.get_mut(&old) {
                if c.version.is_v5() {
                    let d = Disconnect { reason: reason::SESSION_TAKEN_OVER, properties: Properties::default() };
                    Writer {
                        out: &mut self.writes,
                        scratch: &mut self.scratch,
                        cache: &mut self.fanout,
                        deliveries: &mut self.deliveries,
                    }
                    .packet(c, &Packet::Disconnect(d));
                }
            }
            self.conns.remove(&old);
            self.flush_writes();
            self.actions.push(Action::Close(old));
        }
        // The session ends on takeover when the new connection asks for a clean start, or
        // when the old connection's Session Expiry Interval was 0 (spec 3.1.4, and
        // [MQTT-3.1.2-6] for 3.1.1's Clean Session).
        let ends = clean_start || s.expiry_interval == 0;
        // The old connection's will (spec 3.1.3.2.2): sent now if its delay is 0 or the
        // session ends; a delayed will is cancelled when the session continues on the new
        // connection [MQTT-3.1.3-9].
        let delay = s.will.as_deref().map_or(0, will_delay);
        if ends || (was_connected && delay == 0) {
            if let Some(w) = s.will.take() {
                self.publish_will(&s.client_id, w, now);
            }
        }
        s.will = None;
        s.will_due = Moment::NONE;
        s.timer_at = Moment::NONE;
        if ends {
            self.end_session(*s, now);
            self.send(new_core, CoreMsg::Handoff { client_id, conn, claim: new_claim, session: None });
            return;
        }
        if new_core != self.id {
            let tomb_until = now + TOMBSTONE;
            self.moved.insert(client_id.clone(), (s.epoch, new_core, tomb_until));
            self.timers.push(Reverse((tomb_until, Timer::Tombstone(client_id.clone()))));
        }
        self.send(new_core, CoreMsg::Handoff { client_id, conn, claim: new_claim, session: Some(s) });
    }

    pub(super) fn on_disconnect(&mut self, id: ConnId, d: Disconnect, now: Instant) {
        let Some(conn) = self.conns.get(&id) else { return };
        if let Some(new_expiry) = d.properties.session_expiry_interval {
            let Some(session) = self.sessions.get_mut(&conn.client_id) else { return };
            if session.expiry_interval == 0 && new_expiry != 0 {
                // [MQTT-3.14.2-2]
                return self.close(id, CloseWith { reason: Some(reason::PROTOCOL_ERROR), will: true }, now);
            }
            session.expiry_interval = new_expiry;
        }
        // The will is discarded only on a normal DISCONNECT (0x00) [MQTT-3.1.2-10]; 0x04 and
        // error reasons keep it [MQTT-3.1.2-8].
        let will = d.reason != reason::NORMAL_DISCONNECTION;
        self.close(id, CloseWith { reason: None, will }, now);
    }

    /// Each connection has at most one live entry in the timer heap: the one whose due
    /// time is `conn.timer_at`. Others are stale and ignored.
    pub(super) fn arm_conn_timer(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        let Some(deadline) = conn.keep_alive_deadline() else { return };
        if conn.timer_at.get().is_none_or(|t| deadline < t) {
            conn.timer_at = Moment::at(deadline);
            self.conn_timers.push(Reverse((Moment::at(deadline), id)));
        }
    }

    pub(super) fn check_keep_alive(&mut self, id: ConnId, due: Moment, now: Instant) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.timer_at != due {
            return;
        }
        if conn.awaiting_connect() {
            // The CONNECT deadline passed: however many bytes trickled in, no CONNECT was
            // accepted in time.
            tracing::debug!(conn = id, "no CONNECT in time");
            return self.close(id, CloseWith { reason: Some(reason::KEEP_ALIVE_TIMEOUT), will: true }, now);
        }
        conn.timer_at = Moment::NONE;
        let Some(deadline) = conn.keep_alive_deadline() else { return };
        if deadline <= now {
            tracing::debug!(conn = id, "keep-alive timeout");
            self.close(id, CloseWith { reason: Some(reason::KEEP_ALIVE_TIMEOUT), will: true }, now);
        } else {
            self.arm_conn_timer(id);
        }
    }

    /// The broker is stopping. Every connection is closed, MQTT 5 clients first told
    /// DISCONNECT 0x8B (Server shutting down). Closing without the client's DISCONNECT 0x00
    /// is a case where the will is published (MQTT 5, 3.1.2.5), so wills without a delay go
    /// out now. Persistent sessions are logged with their progress, so that after the
    /// restart they resume where they were. Cross-core messages this produces (wills,
    /// session records for a home shard) are drained by the driver before it stops.
    pub fn on_shutdown(&mut self, now: Instant) {
        let ids: Vec<ConnId> = self.conns.keys().copied().collect();
        for id in ids {
            self.close(id, CloseWith { reason: Some(reason::SERVER_SHUTTING_DOWN), will: true }, now);
        }
        self.checkpoint_sessions(now);
        self.run_local(now);
    }

    /// Closes a connection from the broker side and detaches its session.
    pub(super) fn close(&mut self, id: ConnId, how: CloseWith, now: Instant) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        if let (Some(code), true) = (how.reason, conn.version.is_v5() && matches!(conn.phase, Phase::Connected)) {
            let d = Disconnect { reason: code, properties: Properties::default() };
            Writer {
                out: &mut self.writes,
                scratch: &mut self.scratch,
                cache: &mut self.fanout,
                deliveries: &mut self.deliveries,
            }
            .packet(&mut conn, &Packet::Disconnect(d));
        }
        self.flush_writes();
        self.actions.push(Action::Close(id));
        match conn.phase {
            Phase::Connected => {}
            Phase::AwaitingSession { .. } => {
                // Its session is in transit: remember what this connection would have set,
                // for when the session arrives (see `adopt_orphan`).
                let will = if how.will { conn.will.take() } else { None };
                self.closed_awaiting.insert(id, (conn.client_id.clone(), conn.session_expiry, will));
                return;
            }
            Phase::AwaitingConnect { .. } | Phase::AwaitingLogin { .. } => return,
        }
        let Some(mut session) = self.sessions.remove(&conn.client_id) else { return };
        if session.conn() != Some(id) {
            self.sessions.insert(conn.client_id.clone(), session);
            return;
        }
        session.set_conn(None);
        self.detach(*session, how.will, now);
    }

    /// Applies the end of a session's connection: its will (published now, or when the will
    /// delay passes, or discarded when `will` is false) and its expiry (ends now when the
    /// Session Expiry Interval is 0, otherwise the session waits offline).
    pub(super) fn detach(&mut self, mut session: Session, will: bool, now: Instant) {
        if !will {
            session.will = None;
        }
        if let Some(w) = &session.will {
            let delay = will_delay(w);
            if delay == 0 {
                if let Some(w) = session.will.take() {
                    self.publish_will(&session.client_id, w, now);
                }
            } else {
                session.will_due = Moment::at(now + Duration::from_secs(u64::from(delay)));
            }
        }
        if session.expiry_interval == 0 {
            self.end_session(session, now);
        } else {
            if session.expiry_interval != u32::MAX {
                session.expires_at = Moment::at(now + Duration::from_secs(u64::from(session.expiry_interval)));
            }
            self.park_session(session, now);
        }
    }

    pub(super) fn park_session(&mut self, mut session: Session, now: Instant) {
        arm_session_timer(&mut session, &mut self.timers);
        let client_id = session.client_id.clone();
        self.sessions.insert(client_id.clone(), Box::new(session));
        self.persist_session(&client_id, now);
    }

    pub(super) fn check_session(&mut self, client_id: &Bytes, due: Instant, now: Instant) {
        let Some(session) = self.sessions.get_mut(client_id) else { return };
        if session.timer_at.get() != Some(due) {
            return;
        }
        session.timer_at = Moment::NONE;
        if session.conn().is_some() {
            return;
        }
        if session.expires_at.get().is_some_and(|t| t <= now) {
            if let Some(s) = self.sessions.remove(client_id) {
                self.end_session(*s, now);
            }
            return;
        }
        if session.will_due.get().is_some_and(|t| t <= now) {
            session.will_due = Moment::NONE;
            if let Some(w) = session.will.take() {
                let cid = session.client_id.clone();
                self.publish_will(&cid, w, now);
                // Published: the logged snapshot must not bring it back after a restart.
                self.persist_session(&cid, now);
            }
        }
        if let Some(session) = self.sessions.get_mut(client_id) {
            arm_session_timer(session, &mut self.timers);
        }
    }

    /// Ends a session: its pending will is published (will delay or session end, whichever
    /// comes first), its subscriptions leave the shards and its client id is released.
    pub(super) fn end_session(&mut self, mut s: Session, now: Instant) {
        if let Some(w) = s.will.take() {
            self.publish_will(&s.client_id, w, now);
        }
        if s.persisted && self.config.wal_enabled {
            let home = shard_of(&s.client_id, self.cores);
            self.send(home, CoreMsg::Persist { body: persist::encode_session_end(&s.client_id), ack: None });
        }
        let filters: Vec<Bytes> = s.subscriptions.drain().map(|(f, _)| f).collect();
        for f in filters {
            self.route_unsubscribe(None, &s.client_id, s.epoch, &f);
        }
        self.registry.release(&s.client_id, s.claim);
    }

    pub(super) fn publish_will(&mut self, client_id: &Bytes, w: Box<Will>, now: Instant) {
        let w = *w;
        let mut p = Publish::new(w.topic.clone(), w.qos, w.payload);
        p.retain = w.retain;
        p.properties = w.properties;
        p.properties.will_delay_interval = None;
        let msg = Arc::new(Message::from_publish(p, w.topic, client_id.clone(), now));
        let shard = shard_of(&msg.topic, self.cores);
        self.send(shard, CoreMsg::Publish { msg, ack: None });
    }
}
