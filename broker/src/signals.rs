//! Process signals: SIGTERM and SIGINT stop the broker gracefully, SIGHUP asks it to reload
//! its files.
//!
//! The signals are blocked in every thread (the mask is set before the broker starts any
//! thread, and threads inherit it) and taken synchronously by one thread with `sigwait`,
//! so no handler runs in async-signal context and no core thread is ever interrupted.
//! Unix only; on Windows Ctrl-C ends the process as usual.

use std::io;

/// What a signal asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// SIGTERM or SIGINT (the name, for the log).
    Stop(&'static str),
    /// SIGHUP.
    Reload,
}

/// The blocked signal set. Create it with [`block`] before starting threads.
pub struct Signals {
    set: libc::sigset_t,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and in the threads it starts
/// from now on.
pub fn block() -> io::Result<Signals> {
    // SAFETY: sigemptyset/sigaddset initialise and fill a sigset_t we own;
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        Ok(Signals { set })
    }
}

impl Signals {
    /// Waits for the next of the blocked signals.
    pub fn wait(&self) -> io::Result<Request> {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `self.set` was initialised by `block`; sigwait writes the signal number.
            let rc = unsafe { libc::sigwait(&self.set, &mut sig) };
            if rc == libc::EINTR {
                continue;
            }
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            return Ok(match sig {
                libc::SIGHUP => Request::Reload,
                libc::SIGINT => Request::Stop("SIGINT"),
                _ => Request::Stop("SIGTERM"),
            });
        }
    }
}
