//! `promptmq passwd`: writes password files in mosquitto's format, like `mosquitto_passwd`
//! (`-c` create, `-D` delete, `-b` password on the command line, else asked twice on the
//! terminal without echo). The file is replaced atomically; the broker reads it at start
//! and on SIGHUP.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use promptmq_auth::{
    remove_entry_from_file, set_entry_in_file, Argon2Params, EntryChange, FileMode, PasswordHash,
    DEFAULT_PBKDF2_ITERATIONS,
};

/// The hash to write: `$7$` (PBKDF2-SHA512, what mosquitto 2.0 writes and reads) or
/// `$argon2id$` (mosquitto 2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum HashKind {
    Sha512Pbkdf2,
    Argon2id,
}

#[derive(Debug, thiserror::Error)]
pub enum PasswdToolError {
    #[error(transparent)]
    Edit(#[from] promptmq_auth::EditError),
    #[error(transparent)]
    Hash(#[from] promptmq_auth::HashError),
    #[error("{0}")]
    Input(String),
}

pub struct PasswdRequest<'a> {
    pub file: &'a Path,
    pub username: &'a str,
    pub password: Option<&'a str>,
    pub create: bool,
    pub delete: bool,
    pub hash: HashKind,
    pub iterations: u32,
}

/// Carries out one `promptmq passwd` invocation; returns what it did, for the user.
pub fn run(req: PasswdRequest<'_>) -> Result<String, PasswdToolError> {
    if req.delete {
        remove_entry_from_file(req.file, req.username)?;
        return Ok(format!("removed {} from {}", req.username, req.file.display()));
    }
    let password = match req.password {
        Some(p) => p.to_string(),
        None => ask_password()?,
    };
    let hash = match req.hash {
        HashKind::Sha512Pbkdf2 => PasswordHash::new_pbkdf2_sha512(password.as_bytes(), req.iterations)?,
        HashKind::Argon2id => PasswordHash::new_argon2id(password.as_bytes(), Argon2Params::default())?,
    };
    let mode = if req.create { FileMode::Create } else { FileMode::MustExist };
    let change = set_entry_in_file(req.file, req.username, &hash, mode)?;
    let what = match change {
        EntryChange::Added => "added",
        EntryChange::Updated => "updated",
    };
    Ok(format!("{what} {} in {}", req.username, req.file.display()))
}

pub const DEFAULT_ITERATIONS: u32 = DEFAULT_PBKDF2_ITERATIONS;

fn ask_password() -> Result<String, PasswdToolError> {
    let first = read_secret("Password: ")?;
    if std::io::stdin().is_terminal() {
        let again = read_secret("Reenter password: ")?;
        if first != again {
            return Err(PasswdToolError::Input("passwords do not match".into()));
        }
    }
    Ok(first)
}

/// Reads one line from stdin; on a terminal with echo off.
fn read_secret(prompt: &str) -> Result<String, PasswdToolError> {
    let stdin = std::io::stdin();
    let on_terminal = stdin.is_terminal();
    if on_terminal {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let _echo = if on_terminal { EchoOff::new() } else { None };
    let mut line = String::new();
    stdin.lock().read_line(&mut line).map_err(|e| PasswdToolError::Input(format!("cannot read the password: {e}")))?;
    if on_terminal {
        eprintln!();
    }
    let password = line.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(PasswdToolError::Input("empty password".into()));
    }
    Ok(password)
}

/// Turns terminal echo off until dropped.
struct EchoOff {
    #[cfg(unix)]
    saved: libc::termios,
}

impl EchoOff {
    #[cfg(unix)]
    fn new() -> Option<EchoOff> {
        // SAFETY: tcgetattr/tcsetattr on stdin with a termios we own.
        unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(libc::STDIN_FILENO, &mut t) != 0 {
                return None;
            }
            let saved = t;
            t.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &t) != 0 {
                return None;
            }
            Some(EchoOff { saved })
        }
    }

    #[cfg(not(unix))]
    fn new() -> Option<EchoOff> {
        None
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        #[cfg(unix)]
        // SAFETY: restores the settings read in `new`.
        unsafe {
            libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved);
        }
    }
}
