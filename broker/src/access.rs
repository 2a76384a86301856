//! Who may connect and what they may do: `auth.allow-anonymous`, the password file and
//! the ACL file (mosquitto's formats, read by `promptmq-auth`).
//!
//! One [`Access`] is shared by every core. The files are loaded at startup (an error stops
//! the broker) and again on SIGHUP ([`Access::reload`]): a file that no longer loads keeps
//! the previous version in force, and the error is logged. A connection's ACL is computed
//! once at CONNECT; connections made before a reload keep the rules they connected under
//! until they reconnect.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use promptmq_auth::{Acl, ClientAcl, ClientIdentity, PasswordFile};

use crate::codec::reason;
use crate::config::Config;

/// Why the access files could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("auth.password-file: {0}")]
    Passwords(#[from] promptmq_auth::PasswdError),
    #[error("auth.acl-file: {0}")]
    Acl(#[from] promptmq_auth::AclError),
}

/// Who a client is, for the ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Login {
    /// No user name, or one no password file checked: anonymous rules.
    Anonymous,
    /// The user name's password matched the password file.
    Verified,
}

pub struct Access {
    allow_anonymous: bool,
    password_file: Option<PathBuf>,
    acl_file: Option<PathBuf>,
    passwords: RwLock<Option<Arc<PasswordFile>>>,
    acl: RwLock<Option<Arc<Acl>>>,
}

impl Access {
    /// `None` when nothing is restricted (anonymous allowed, no files): the core then skips
    /// every check.
    pub fn from_config(config: &Config) -> Result<Option<Arc<Access>>, AccessError> {
        if config.allow_anonymous && config.password_file.is_none() && config.acl_file.is_none() {
            return Ok(None);
        }
        let access = Access {
            allow_anonymous: config.allow_anonymous,
            password_file: config.password_file.clone(),
            acl_file: config.acl_file.clone(),
            passwords: RwLock::new(None),
            acl: RwLock::new(None),
        };
        access.load()?;
        Ok(Some(Arc::new(access)))
    }

    fn load(&self) -> Result<(), AccessError> {
        let passwords = match &self.password_file {
            Some(path) => Some(Arc::new(PasswordFile::load(path)?)),
            None => None,
        };
        let acl = match &self.acl_file {
            Some(path) => {
                let acl = Acl::load(path)?;
                for warning in acl.warnings() {
                    tracing::warn!(file = %path.display(), "{warning}");
                }
                Some(Arc::new(acl))
            }
            None => None,
        };
        // Both loaded: swap them in together.
        *self.passwords.write().unwrap_or_else(|p| p.into_inner()) = passwords;
        *self.acl.write().unwrap_or_else(|p| p.into_inner()) = acl;
        Ok(())
    }

    /// Reloads the files (SIGHUP). On error the previous versions stay in force.
    pub fn reload(&self) -> Result<(), AccessError> {
        self.load()
    }

    /// Checks a CONNECT's credentials: the identity the ACL may use (`Verified` only when
    /// a password file vouched for the user name), or the CONNACK reason code to refuse
    /// with (0x86 Bad User Name or Password, 0x87 Not authorized; 3.1.1 gets 4 and 5).
    pub fn login(&self, username: Option<&[u8]>, password: Option<&[u8]>) -> Result<Login, u8> {
        let passwords = self.passwords.read().unwrap_or_else(|p| p.into_inner()).clone();
        match (username, passwords) {
            (None, _) if self.allow_anonymous => Ok(Login::Anonymous),
            (None, _) => Err(reason::NOT_AUTHORIZED),
            // A user name nothing can check is not an identity: the client gets the
            // anonymous rules, or it could claim any `user` block of the ACL.
            (Some(_), None) if self.allow_anonymous => Ok(Login::Anonymous),
            (Some(_), None) => Err(reason::BAD_USER_NAME_OR_PASSWORD),
            (Some(user), Some(file)) => match std::str::from_utf8(user) {
                Ok(user) if file.verify(user, password) => Ok(Login::Verified),
                _ => Err(reason::BAD_USER_NAME_OR_PASSWORD),
            },
        }
    }

    /// Whether [`login`](Self::login) would compute a password hash for this user name
    /// (`$7$`, `$6$` and `$argon2id$` are slow on purpose: up to tens of milliseconds, which
    /// a core must not spend while its other clients wait). Unknown users count too: they
    /// are checked against a decoy hash, so that they take as long as known ones.
    pub fn login_is_costly(&self, username: Option<&[u8]>) -> bool {
        username.is_some() && self.passwords.read().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The ACL of a client that just logged in; `None` when there is no ACL file.
    pub fn client_acl(&self, client_id: &[u8], username: Option<&[u8]>) -> Option<Arc<ClientAcl>> {
        let acl = self.acl.read().unwrap_or_else(|p| p.into_inner()).clone()?;
        let client_id = String::from_utf8_lossy(client_id);
        let username = username.map(String::from_utf8_lossy);
        Some(Arc::new(acl.for_client(&ClientIdentity::new(&client_id, username.as_deref()))))
    }
}

/// A CONNECT's credentials, checked away from the cores (see [`Access::login_is_costly`]):
/// the core hands it out with `Action::CheckLogin` and takes the verdict back in
/// `Core::on_login`.
#[derive(Debug)]
pub struct LoginCheck {
    pub conn: crate::session::ConnId,
    pub username: bytes::Bytes,
    pub password: Option<bytes::Bytes>,
    /// When the connection's CONNECT timeout ends: a check still queued then is not made
    /// (its connection is closed by now), so a burst of logins leaves no work behind it.
    pub deadline: std::time::Instant,
}

impl LoginCheck {
    pub fn run(&self, access: &Access) -> Result<Login, u8> {
        access.login(Some(&self.username), self.password.as_deref())
    }
}

/// Threads that check passwords for the cores. Each verdict goes back to the core that
/// asked, through `deliver` (which queues it and wakes the core). At most [`LOGIN_QUEUE`]
/// checks wait; more are refused at once (the client is told the server is unavailable).
pub struct LoginThreads {
    jobs: std::sync::mpsc::SyncSender<(usize, LoginCheck)>,
}

/// Password checks that may wait for a login thread.
pub const LOGIN_QUEUE: usize = 1024;

impl LoginThreads {
    /// Starts `threads` threads (at least one).
    pub fn start<D>(access: Arc<Access>, threads: usize, deliver: D) -> std::io::Result<LoginThreads>
    where
        D: Fn(usize, crate::session::ConnId, Result<Login, u8>) + Send + Sync + 'static,
    {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, LoginCheck)>(LOGIN_QUEUE);
        let rx = Arc::new(std::sync::Mutex::new(rx));
        let deliver = Arc::new(deliver);
        for i in 0..threads.max(1) {
            let (rx, access, deliver) = (Arc::clone(&rx), Arc::clone(&access), Arc::clone(&deliver));
            std::thread::Builder::new().name(format!("promptmq-login-{i}")).spawn(move || loop {
                // One job at a time per thread; the lock is held only while taking it.
                let job = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                let Ok((core, check)) = job else { return };
                let verdict = if std::time::Instant::now() < check.deadline {
                    check.run(&access)
                } else {
                    Err(reason::SERVER_UNAVAILABLE)
                };
                deliver(core, check.conn, verdict);
            })?;
        }
        Ok(LoginThreads { jobs: tx })
    }

    /// Queues a check for `core`; false when [`LOGIN_QUEUE`] checks already wait (or the
    /// threads are gone).
    pub fn submit(&self, core: usize, check: LoginCheck) -> bool {
        self.jobs.try_send((core, check)).is_ok()
    }
}

/// ACL checks on MQTT byte strings (topics are validated UTF-8 before they get here; a
/// name that is not is refused).
pub fn can_publish(acl: &ClientAcl, topic: &[u8]) -> bool {
    std::str::from_utf8(topic).is_ok_and(|t| acl.can_publish(t))
}

pub fn can_read(acl: &ClientAcl, topic: &[u8]) -> bool {
    std::str::from_utf8(topic).is_ok_and(|t| acl.can_read(t))
}

pub fn can_subscribe(acl: &ClientAcl, filter: &[u8]) -> bool {
    std::str::from_utf8(filter).is_ok_and(|f| acl.can_subscribe(f))
}
