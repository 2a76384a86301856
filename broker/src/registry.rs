//! Which core a client id's session lives on, shared by all cores.
//!
//! Touched only when a session is created, taken over or ends (never per message), which
//! is why a mutex is acceptable here while the publish path takes no shared lock. It is
//! what makes a client id live in exactly one place: a CONNECT claims the id, and if
//! another core held it, that core is asked to hand the session over.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;

/// An owner packed in one word: the claim token above [`CORE_BITS`], the core below. (One
/// entry per connected client: 40 bytes with the key, against 48 as a pair.)
type Owner = u64;

const CORE_BITS: u32 = 16;

fn owner(core: usize, token: u64) -> Owner {
    token << CORE_BITS | (core as u64 & ((1 << CORE_BITS) - 1))
}

fn token_of(owner: Owner) -> u64 {
    owner >> CORE_BITS
}

fn core_of(owner: Owner) -> usize {
    (owner & ((1 << CORE_BITS) - 1)) as usize
}

#[derive(Debug, Default)]
pub struct Registry {
    owners: Mutex<HashMap<Bytes, Owner>>,
    next_token: AtomicU64,
}

/// The result of claiming a client id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claim {
    /// Identifies this claim; tokens grow in claim order (they are taken under the lock),
    /// so a shard can tell a newer route for a session from an older one.
    pub token: u64,
    /// The core that held the id before, if any.
    pub previous_core: Option<usize>,
}

impl Registry {
    pub fn new() -> Registry {
        Registry { owners: Mutex::new(HashMap::new()), next_token: AtomicU64::new(1) }
    }

    fn owners(&self) -> std::sync::MutexGuard<'_, HashMap<Bytes, Owner>> {
        // A panic while holding this lock cannot leave the map half-updated (each
        // operation is a single insert or remove), so a poisoned lock is still usable.
        self.owners.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn claim(&self, client_id: &Bytes, core: usize) -> Claim {
        let mut owners = self.owners();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let previous = owners.insert(client_id.clone(), owner(core, token));
        Claim { token, previous_core: previous.map(core_of) }
    }

    /// Forgets the id if it still belongs to this claim.
    pub fn release(&self, client_id: &Bytes, epoch: u64) {
        let mut owners = self.owners();
        if owners.get(client_id).is_some_and(|&o| token_of(o) == epoch) {
            owners.remove(client_id);
        }
    }

    /// Whether this claim still owns the id.
    pub fn owns(&self, client_id: &Bytes, epoch: u64) -> bool {
        self.owners().get(client_id).is_some_and(|&o| token_of(o) == epoch)
    }

    pub fn len(&self) -> usize {
        self.owners().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
