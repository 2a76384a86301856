//! Topic authorisation from a mosquitto ACL file.
//!
//! # Which rules apply to a client
//!
//! - `topic` lines before the first `user` line apply only to clients that connected **without a
//!   username** (mosquitto.conf(5): "The first set of topics are applied to anonymous clients";
//!   in mosquitto 2.0's `acl__find_acls` a client with a username is matched to its `user` block
//!   and a client without one to the block with no username, never both).
//! - `topic` lines after `user <name>` apply only to clients whose username is exactly `<name>`.
//!   A user named in several blocks gets all of them (mosquitto merges them too). A client whose
//!   username has no block gets no `topic` rules at all, only patterns.
//! - `pattern` lines apply to every client wherever they appear, with `%c` replaced by the client
//!   id and `%u` by the username. A pattern using `%u` does not apply to a client without a
//!   username. `%c`/`%u` must be a whole topic level (as the man page says; enforced at load).
//!
//! # Decisions
//!
//! - A `deny` rule that matches wins over every grant, whether the deny and the grant come from
//!   a `user` block, the anonymous block or a pattern. mosquitto checks the user's block (denies
//!   first) before the patterns, so there a user-block grant beats a pattern deny; here the deny
//!   wins, which can only refuse more.
//! - An ACL with no rules at all refuses everything (mosquitto's fix for CVE-2018-12550).
//! - Substituted values are used only when they are a plain, single topic level: a client id or
//!   username that is empty, contains `/`, `+`, `#` or NUL, or starts with `$` is **unusable**.
//!   Otherwise `user/%u/#` would hand `alice/x` the subtree of user `alice`, a `+` or `#` would
//!   act as a wildcard (CVE-2017-7650), and `$`-prefixed values could reach `$SYS`. mosquitto 2.0
//!   refuses the whole pattern check for ids with `+`/`#`; 2.1 also refuses `/`. Here, a grant
//!   pattern with an unusable value grants nothing, and a **deny** pattern with an unusable value
//!   denies **everything** (it cannot be evaluated, so it fails closed).
//!
//! # Subscribe checks
//!
//! mosquitto 2.x's acl_file does not check SUBSCRIBE at all (`acl_check.c`: "FIXME - implement
//! ACL subscription strings") and relies on the read check when each message is delivered
//! (maintainer, mosquitto issue #1318: "The 'publish read' acl check will catch the messages later
//! on"). PromptMQ refuses subscriptions that could never deliver anything useful, keeping the
//! per-message read check as the real guard:
//!
//! - [`ClientAcl::can_subscribe`]: allowed iff some read grant **covers** the filter (every topic
//!   the filter matches is matched by that one rule; the same filter-vs-filter test as mosquitto
//!   2.1's `mosquitto_sub_matches_acl`, which its dynamic-security plugin uses for subscribe ACLs)
//!   and no deny rule covers it. A deny that only **overlaps** the filter does not refuse it: the
//!   delivery check drops those messages. So with `topic readwrite #` and
//!   `topic deny test/nosubscribe`, exactly `test/nosubscribe` (and filters it covers) is
//!   refused while `#` and `test/+` are accepted. Coverage by a union of rules is not considered.
//! - [`ClientAcl::subscription_fully_readable`]: some read grant covers the filter and no deny
//!   rule overlaps it, so every message the subscription can match is readable and the broker may
//!   skip per-message read checks for it.
//!
//! Shared subscriptions (`$share/<group>/<filter>`) must be checked on `<filter>`.

use std::collections::HashMap;
use std::sync::Arc;

use crate::topic::{is_valid_topic_name, Filter, Level};

/// Who is asking: the client id and, if the client sent one, its username.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIdentity<'a> {
    /// The MQTT client identifier (as assigned by the broker if the client sent an empty one).
    pub client_id: &'a str,
    /// The CONNECT username, `None` for anonymous clients.
    pub username: Option<&'a str>,
}

impl<'a> ClientIdentity<'a> {
    /// An identity from its parts.
    pub fn new(client_id: &'a str, username: Option<&'a str>) -> Self {
        ClientIdentity { client_id, username }
    }
}

/// The access a rule line grants (or `Deny`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Read,
    Write,
    ReadWrite,
    Deny,
}

/// Rules that apply together, split by effect so a check only scans what can decide it.
#[derive(Debug, Default, Clone)]
pub(crate) struct RuleSet {
    /// A deny pattern could not be evaluated for this client: everything is denied.
    deny_all: bool,
    deny: Vec<Filter>,
    read: Vec<Filter>,
    write: Vec<Filter>,
}

impl RuleSet {
    pub(crate) fn add(&mut self, access: Access, filter: Filter) {
        match access {
            Access::Read => self.read.push(filter),
            Access::Write => self.write.push(filter),
            Access::ReadWrite => {
                self.read.push(filter.clone());
                self.write.push(filter);
            }
            Access::Deny => self.deny.push(filter),
        }
    }

    fn is_empty(&self) -> bool {
        !self.deny_all && self.deny.is_empty() && self.read.is_empty() && self.write.is_empty()
    }
}

/// One level of a `pattern` rule.
#[derive(Debug, Clone)]
pub(crate) enum PatternLevel {
    Fixed(Level),
    ClientId,
    Username,
}

#[derive(Debug, Clone)]
pub(crate) struct PatternRule {
    pub(crate) access: Access,
    pub(crate) levels: Vec<PatternLevel>,
}

impl PatternRule {
    fn uses_username(&self) -> bool {
        self.levels.iter().any(|l| matches!(l, PatternLevel::Username))
    }

    /// The rule's filter for this client; `Err(())` when a substituted value is unusable.
    fn resolve(&self, identity: &ClientIdentity<'_>) -> Result<Filter, ()> {
        let mut levels = Vec::with_capacity(self.levels.len());
        for level in &self.levels {
            levels.push(match level {
                PatternLevel::Fixed(l) => l.clone(),
                PatternLevel::ClientId => usable_value(Some(identity.client_id))?,
                PatternLevel::Username => usable_value(identity.username)?,
            });
        }
        Ok(Filter::from_levels(levels))
    }
}

fn usable_value(value: Option<&str>) -> Result<Level, ()> {
    match value {
        Some(v) if !v.is_empty() && !v.starts_with('$') && !v.contains(['/', '+', '#', '\0']) => {
            Ok(Level::Literal(v.into()))
        }
        _ => Err(()),
    }
}

/// A note about a loaded ACL file that is legal but probably not what was meant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AclWarning {
    /// A `pattern` line without `%c` or `%u` applies to every client alike (mosquitto warns too).
    #[error(
        "line {line}: pattern has no %c or %u, so it applies to every client like a topic line outside any user block"
    )]
    PatternWithoutSubstitution {
        /// 1-based line number.
        line: usize,
    },
}

/// A parsed ACL file. Immutable; reload by parsing the file again and swapping the value.
#[derive(Debug, Clone)]
pub struct Acl {
    pub(crate) anonymous: Arc<RuleSet>,
    pub(crate) users: HashMap<String, Arc<RuleSet>>,
    pub(crate) patterns: Vec<PatternRule>,
    pub(crate) warnings: Vec<AclWarning>,
}

impl Acl {
    /// Legal-but-suspicious constructs found while loading, for the broker to log.
    pub fn warnings(&self) -> &[AclWarning] {
        &self.warnings
    }

    /// The rules that apply to one client, with patterns substituted. Compute once at CONNECT and
    /// keep it with the connection; compute again after a reload.
    pub fn for_client(&self, identity: &ClientIdentity<'_>) -> ClientAcl {
        let block = match identity.username {
            None => Some(Arc::clone(&self.anonymous)),
            Some(name) => self.users.get(name).cloned(),
        }
        .filter(|set| !set.is_empty());
        let mut patterns = RuleSet::default();
        for rule in &self.patterns {
            if rule.uses_username() && identity.username.is_none() {
                continue;
            }
            match rule.resolve(identity) {
                Ok(filter) => patterns.add(rule.access, filter),
                Err(()) if rule.access == Access::Deny => patterns.deny_all = true,
                Err(()) => {}
            }
        }
        ClientAcl { rules: Some(Rules { block, patterns }) }
    }

    /// Write access to a topic name. Convenience for `for_client(identity).can_publish(topic)`;
    /// substitutes patterns on every call, so prefer caching a [`ClientAcl`].
    pub fn can_publish(&self, identity: &ClientIdentity<'_>, topic: &str) -> bool {
        self.for_client(identity).can_publish(topic)
    }

    /// Read access to a topic name; see [`ClientAcl::can_read`].
    pub fn can_read(&self, identity: &ClientIdentity<'_>, topic: &str) -> bool {
        self.for_client(identity).can_read(topic)
    }

    /// Whether a subscription filter is allowed; see [`ClientAcl::can_subscribe`].
    pub fn can_subscribe(&self, identity: &ClientIdentity<'_>, filter: &str) -> bool {
        self.for_client(identity).can_subscribe(filter)
    }

    /// See [`ClientAcl::subscription_fully_readable`].
    pub fn subscription_fully_readable(&self, identity: &ClientIdentity<'_>, filter: &str) -> bool {
        self.for_client(identity).subscription_fully_readable(filter)
    }
}

/// The ACL as it applies to one connected client. Cheap to clone (user blocks are shared).
#[derive(Debug, Clone)]
pub struct ClientAcl {
    /// `None` means allow everything.
    rules: Option<Rules>,
}

#[derive(Debug, Clone)]
struct Rules {
    /// The client's `user` block, or the anonymous block; `None` if it has none.
    block: Option<Arc<RuleSet>>,
    /// Patterns substituted for this client.
    patterns: RuleSet,
}

impl Rules {
    fn sets(&self) -> impl Iterator<Item = &RuleSet> {
        self.block.as_deref().into_iter().chain(std::iter::once(&self.patterns))
    }

    fn topic_allowed(&self, topic: &str, grants: fn(&RuleSet) -> &[Filter]) -> bool {
        if !is_valid_topic_name(topic) {
            return false;
        }
        if self.sets().any(|s| s.deny_all || s.deny.iter().any(|f| f.matches(topic))) {
            return false;
        }
        self.sets().any(|s| grants(s).iter().any(|f| f.matches(topic)))
    }

    fn any_deny(&self, test: impl Fn(&Filter) -> bool) -> bool {
        self.sets().any(|s| s.deny_all || s.deny.iter().any(&test))
    }

    fn read_covers(&self, filter: &Filter) -> bool {
        self.sets().any(|s| s.read.iter().any(|rule| rule.covers(filter)))
    }
}

impl ClientAcl {
    /// Allows everything: for brokers with no ACL file. Every check returns `true` after one branch.
    pub const fn allow_all() -> ClientAcl {
        ClientAcl { rules: None }
    }

    /// True for [`ClientAcl::allow_all`].
    pub fn is_allow_all(&self) -> bool {
        self.rules.is_none()
    }

    /// May the client PUBLISH to `topic`? (`write` or `readwrite` rule matches, no `deny` does.)
    /// Invalid topic names (empty, wildcards) are refused.
    pub fn can_publish(&self, topic: &str) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => rules.topic_allowed(topic, |s| &s.write[..]),
        }
    }

    /// May a message on `topic` be delivered to the client? (`read` or `readwrite` rule matches,
    /// no `deny` does.) This is the check that actually protects topics; run it per message unless
    /// [`ClientAcl::subscription_fully_readable`] said it is unnecessary.
    pub fn can_read(&self, topic: &str) -> bool {
        match &self.rules {
            None => true,
            Some(rules) => rules.topic_allowed(topic, |s| &s.read[..]),
        }
    }

    /// May the client SUBSCRIBE to `filter`? Allowed iff one read grant covers the whole filter and
    /// no deny rule covers it (see the module docs for why overlap with a deny is allowed).
    /// Invalid filters are refused.
    pub fn can_subscribe(&self, filter: &str) -> bool {
        let Some(rules) = &self.rules else { return true };
        let Ok(filter) = Filter::parse(filter) else { return false };
        !rules.any_deny(|deny| deny.covers(&filter)) && rules.read_covers(&filter)
    }

    /// True when every topic `filter` can match is readable and no deny rule can match any of
    /// them, so per-message read checks can be skipped for this subscription. Conservative: false
    /// does not mean anything is unreadable.
    pub fn subscription_fully_readable(&self, filter: &str) -> bool {
        let Some(rules) = &self.rules else { return true };
        let Ok(filter) = Filter::parse(filter) else { return false };
        !rules.any_deny(|deny| deny.overlaps(&filter)) && rules.read_covers(&filter)
    }
}
