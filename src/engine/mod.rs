//! The embedded engine backend: this process as an o2cb cluster node.
//!
//! Each context joins its domain through the process-wide runtime
//! (`runtime.rs`): one heartbeat, one set of o2net links and one DLM per
//! process, shared by all contexts. Locks of all contexts and threads go
//! through a node-local cache (`dlm::cache`), so they exclude each other
//! too — unlike dlmfs, where two openers on one node can both hold EX — and
//! a lock released here stays cached at its level until another node asks.

pub mod bast;
mod fastmap;
mod runtime;

use crate::api::{Backend, BastCallback, LockFlags, LockId, LockLevel};
use crate::dlm::cache::HolderId;
use crate::dlm::Mode;
use crate::error::{Error, Result};
use bast::BastSignal;
use fastmap::{FastMap, NameKey};
use runtime::Runtime;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest domain name o2dlm carries (the kernel refuses 64 and more).
const DOMAIN_NAME_LIMIT: usize = 64;

/// Stops the process's node cleanly (heartbeat leaving block), if running.
pub(crate) fn shutdown() {
    runtime::shutdown();
}

/// Joins `domain` as an engine node.
pub(crate) fn initialize(domain: &[u8]) -> Result<Box<dyn Backend>> {
    if domain.len() >= DOMAIN_NAME_LIMIT {
        log::error!("engine: domain names must be shorter than {DOMAIN_NAME_LIMIT} bytes");
        return Err(Error::DomainCreate);
    }
    let rt = runtime::get()?;
    let dom = rt.join(domain)?;
    Ok(Box::new(EngineBackend {
        rt,
        dom,
        locks: Mutex::new(FastMap::default()),
    }))
}

enum Slot {
    /// A thread of this context is waiting for the grant.
    Acquiring,
    Held {
        holder: HolderId,
        level: LockLevel,
        bast: Option<(Arc<BastSignal>, BastCallback)>,
    },
}

struct EngineBackend {
    rt: Arc<Runtime>,
    /// The domain's process-local index.
    dom: u32,
    locks: Mutex<FastMap<NameKey, Slot>>,
}

impl EngineBackend {
    fn locks(&self) -> MutexGuard<'_, FastMap<NameKey, Slot>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(&self, id: &LockId) -> Result<NameKey> {
        NameKey::new(self.dom, id.as_bytes()).ok_or(Error::InvalidLockName)
    }

    fn take_lock(
        &self,
        id: &LockId,
        level: LockLevel,
        flags: LockFlags,
        bast: Option<(Arc<BastSignal>, BastCallback)>,
    ) -> Result<()> {
        if id.as_bytes().first() == Some(&b'$') {
            // '$' names are the DLM's own ($RECOVERY).
            return Err(Error::InvalidLockName);
        }
        let key = self.key(id)?;
        {
            let mut locks = self.locks();
            match locks.entry(key) {
                std::collections::hash_map::Entry::Occupied(_) => return Err(Error::RecursiveLock),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(Slot::Acquiring);
                }
            }
        }
        let mode = match level {
            LockLevel::Pr => Mode::Pr,
            LockLevel::Ex => Mode::Ex,
        };
        let signal = bast.as_ref().map(|(s, _)| s.clone());
        let r = self.rt.lock(&key, mode, flags.trylock, signal);
        let mut locks = self.locks();
        match r {
            Ok(holder) => {
                locks.insert(
                    key,
                    Slot::Held {
                        holder,
                        level,
                        bast,
                    },
                );
                Ok(())
            }
            Err(e) => {
                locks.remove(&key);
                Err(e)
            }
        }
    }

    fn held(&self, key: &NameKey) -> Result<LockLevel> {
        match self.locks().get(key) {
            Some(Slot::Held { level, .. }) => Ok(*level),
            _ => Err(Error::UnknownLock),
        }
    }
}

impl Backend for EngineBackend {
    fn lock(&self, id: &LockId, level: LockLevel, flags: LockFlags) -> Result<()> {
        self.take_lock(id, level, flags, None)
    }

    fn lock_with_bast(
        &self,
        id: &LockId,
        level: LockLevel,
        flags: LockFlags,
        bast: BastCallback,
    ) -> Result<RawFd> {
        let signal = Arc::new(BastSignal::new().map_err(|_| Error::NoMemory)?);
        let fd = signal.raw_fd();
        self.take_lock(id, level, flags, Some((signal, bast)))?;
        Ok(fd)
    }

    fn check_bast_support(&self) -> Result<()> {
        Ok(())
    }

    fn process_bast(&self, poll_fd: RawFd) {
        let callback = self.locks().values().find_map(|s| match s {
            Slot::Held {
                bast: Some((sig, cb)),
                ..
            } if sig.raw_fd() == poll_fd => Some(cb.clone()),
            _ => None,
        });
        // Without the mutex: the callback usually unlocks.
        if let Some(cb) = callback {
            cb();
        }
    }

    fn unlock(&self, id: &LockId) -> Result<()> {
        let key = self.key(id)?;
        let (holder, had_bast) = {
            let mut locks = self.locks();
            match locks.remove(&key) {
                Some(Slot::Held { holder, bast, .. }) => (holder, bast.is_some()),
                Some(Slot::Acquiring) => {
                    locks.insert(key, Slot::Acquiring);
                    return Err(Error::UnknownLock);
                }
                None => return Err(Error::UnknownLock),
            }
        };
        self.rt.unlock(&key, holder, had_bast)
    }

    fn drop_lock(&self, id: &LockId) -> Result<()> {
        let key = self.key(id)?;
        if self.locks().contains_key(&key) {
            return Err(Error::BusyLock);
        }
        self.rt.drop_name(&key)
    }

    fn read_lvb(&self, id: &LockId, buf: &mut [u8]) -> Result<usize> {
        let key = self.key(id)?;
        self.held(&key)?;
        if buf.is_empty() {
            // What a 0-byte read of a dlmfs lock file reports.
            return Err(Error::LvbInvalid);
        }
        let lvb = self.rt.read_lvb(&key)?;
        let n = buf.len().min(lvb.len());
        buf[..n].copy_from_slice(&lvb[..n]);
        Ok(n)
    }

    fn write_lvb(&self, id: &LockId, data: &[u8]) -> Result<usize> {
        let key = self.key(id)?;
        if self.held(&key)? != LockLevel::Ex {
            // As dlmfs: the LVB can only be written under EX.
            return Err(Error::LvbWrite);
        }
        self.rt.write_lvb(&key, data)?;
        Ok(data.len())
    }

    fn messages_sent(&self) -> Option<u64> {
        Some(runtime::MESSAGES_SENT.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn destroy(&self) -> Result<()> {
        let held: Vec<(NameKey, HolderId, bool)> = self
            .locks()
            .drain()
            .filter_map(|(key, s)| match s {
                Slot::Held { holder, bast, .. } => Some((key, holder, bast.is_some())),
                Slot::Acquiring => None,
            })
            .collect();
        for (key, holder, had_bast) in held {
            self.rt.unlock(&key, holder, had_bast)?;
        }
        self.rt.leave(self.dom)
    }
}
