//! Authentication and authorisation for PromptMQ, reading mosquitto's `password_file` and
//! `acl_file` formats.
//!
//! The crate knows nothing of MQTT packets, sockets or async runtimes: it turns file contents
//! into immutable values and answers yes/no questions about them. The broker asks:
//!
//! - at CONNECT: [`PasswordFile::verify`] (username, password);
//! - once per connection: [`Acl::for_client`] → [`ClientAcl`] (or [`ClientAcl::allow_all`] when
//!   no ACL file is configured);
//! - at SUBSCRIBE: [`ClientAcl::can_subscribe`], and [`ClientAcl::subscription_fully_readable`] to
//!   decide whether deliveries on that subscription need per-message checks;
//! - at PUBLISH: [`ClientAcl::can_publish`]; when delivering: [`ClientAcl::can_read`].
//!
//! # Invariants
//!
//! - Loading ([`PasswordFile::load`], [`Acl::load`]) returns a complete value or an error, never
//!   a partial one, so a SIGHUP reload can swap values or keep the old ones. After a reload the
//!   broker must recompute each connected client's [`ClientAcl`].
//! - No error message, `Debug` output or log text contains a password, hash or salt.
//! - Password comparisons are constant-time, and an unknown username costs as much to reject as a
//!   wrong password.
//! - An ACL denies unless a rule grants; a matching `deny` beats any grant; an ACL file with no
//!   rules denies everything.
//!
//! # Example
//!
//! ```
//! use promptmq_auth::{Acl, ClientIdentity, PasswordFile, PasswordHash, DEFAULT_PBKDF2_ITERATIONS};
//!
//! let hash = PasswordHash::new_pbkdf2_sha512(b"secret", DEFAULT_PBKDF2_ITERATIONS)?;
//! let passwd = PasswordFile::parse(&format!("alice:{}\n", hash.encode()))?;
//! assert!(passwd.verify("alice", Some(b"secret")));
//! assert!(!passwd.verify("alice", Some(b"guess")));
//!
//! let acl = Acl::parse("user alice\ntopic readwrite alice/#\ntopic deny alice/private\n")?;
//! let client = acl.for_client(&ClientIdentity::new("alice-phone", Some("alice")));
//! assert!(client.can_publish("alice/status"));
//! assert!(client.can_subscribe("alice/+"));
//! assert!(!client.can_subscribe("#"));
//! assert!(!client.can_read("alice/private"));
//! assert!(!client.subscription_fully_readable("alice/#"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Where to start reading
//!
//! [`acl`] (module docs: which rules apply to whom, and the subscribe semantics), then
//! [`passwd`] and [`hash`] (supported hash formats). [`passwd_edit`] and [`write_atomically`]
//! back a `promptmq passwd` subcommand modelled on `mosquitto_passwd`.

pub mod acl;
mod acl_parse;
mod atomic;
pub mod hash;
pub mod passwd;
pub mod passwd_edit;
mod text;
mod topic;

pub use acl::{Acl, AclWarning, ClientAcl, ClientIdentity};
pub use acl_parse::{AclError, AclLineProblem};
pub use atomic::write_atomically;
pub use hash::{
    Argon2Params, HashError, HashFormatError, HashScheme, PasswordHash, DEFAULT_PBKDF2_ITERATIONS,
    MAX_PBKDF2_ITERATIONS,
};
pub use passwd::{PasswdError, PasswdLineProblem, PasswordFile};
pub use passwd_edit::{
    format_entry, remove_entry, remove_entry_from_file, set_entry, set_entry_in_file, validate_username, EditError,
    EntryChange, FileMode,
};
pub use topic::FilterError;
