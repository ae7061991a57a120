//! The embedded engine backend: this process as an o2cb cluster node.
//!
//! Each context joins its domain through the process-wide runtime
//! (`runtime.rs`): one heartbeat, one set of o2net links and one DLM per
//! process, shared by all contexts. Locks of all contexts and threads go
//! through a node-local cache (`dlm::cache`), so they exclude each other
//! too — unlike dlmfs, where two openers on one node can both hold EX — and
//! a lock released here stays cached at its level until another node asks.

pub mod bast;
mod runtime;

use crate::api::{Backend, BastCallback, LockFlags, LockId, LockLevel};
use crate::dlm::Mode;
use crate::error::{Error, Result};
use bast::BastSignal;
use runtime::{Command, Runtime};
use std::collections::HashMap;
use std::os::unix::io::RawFd;
use std::sync::{Arc, Mutex, MutexGuard};

/// Longest domain name o2dlm carries (the kernel refuses 64 and more).
const DOMAIN_NAME_LIMIT: usize = 64;

/// True when the environment configures an engine node.
pub fn is_configured() -> bool {
    crate::config::engine_configured()
}

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
    let name = domain.to_vec();
    rt.call(|reply| Command::Join {
        domain: name.clone(),
        reply,
    })??;
    Ok(Box::new(EngineBackend {
        rt,
        domain: name,
        locks: Mutex::new(HashMap::new()),
    }))
}

enum Slot {
    /// A thread of this context is waiting for the grant.
    Acquiring,
    Held {
        holder: u64,
        level: LockLevel,
        bast: Option<(Arc<BastSignal>, BastCallback)>,
    },
}

struct EngineBackend {
    rt: Arc<Runtime>,
    domain: Vec<u8>,
    locks: Mutex<HashMap<LockId, Slot>>,
}

impl EngineBackend {
    fn locks(&self) -> MutexGuard<'_, HashMap<LockId, Slot>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
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
        {
            let mut locks = self.locks();
            if locks.contains_key(id) {
                return Err(Error::RecursiveLock);
            }
            locks.insert(id.clone(), Slot::Acquiring);
        }
        let holder = self.rt.new_holder();
        let mode = match level {
            LockLevel::Pr => Mode::Pr,
            LockLevel::Ex => Mode::Ex,
        };
        let signal = bast.as_ref().map(|(s, _)| s.clone());
        let r = self.rt.call(|reply| Command::Lock {
            domain: self.domain.clone(),
            name: id.as_bytes().to_vec(),
            holder,
            mode,
            trylock: flags.trylock,
            bast: signal,
            reply,
        });
        let mut locks = self.locks();
        match r.and_then(|inner| inner) {
            Ok(()) => {
                locks.insert(
                    id.clone(),
                    Slot::Held {
                        holder,
                        level,
                        bast,
                    },
                );
                Ok(())
            }
            Err(e) => {
                locks.remove(id);
                Err(e)
            }
        }
    }

    fn held(&self, id: &LockId) -> Result<LockLevel> {
        match self.locks().get(id) {
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
        let holder = {
            let mut locks = self.locks();
            match locks.remove(id) {
                Some(Slot::Held { holder, .. }) => holder,
                Some(Slot::Acquiring) => {
                    locks.insert(id.clone(), Slot::Acquiring);
                    return Err(Error::UnknownLock);
                }
                None => return Err(Error::UnknownLock),
            }
        };
        self.rt.send(Command::Unlock {
            domain: self.domain.clone(),
            name: id.as_bytes().to_vec(),
            holder,
        })
    }

    fn drop_lock(&self, id: &LockId) -> Result<()> {
        if self.locks().contains_key(id) {
            return Err(Error::BusyLock);
        }
        let (domain, name) = (self.domain.clone(), id.as_bytes().to_vec());
        self.rt.call(|reply| Command::Drop {
            domain,
            name,
            reply,
        })?
    }

    fn read_lvb(&self, id: &LockId, buf: &mut [u8]) -> Result<usize> {
        self.held(id)?;
        if buf.is_empty() {
            // What a 0-byte read of a dlmfs lock file reports.
            return Err(Error::LvbInvalid);
        }
        let (domain, name) = (self.domain.clone(), id.as_bytes().to_vec());
        let lvb = self.rt.call(|reply| Command::ReadLvb {
            domain,
            name,
            reply,
        })?;
        let n = buf.len().min(lvb.len());
        buf[..n].copy_from_slice(&lvb[..n]);
        Ok(n)
    }

    fn write_lvb(&self, id: &LockId, data: &[u8]) -> Result<usize> {
        if self.held(id)? != LockLevel::Ex {
            // As dlmfs: the LVB can only be written under EX.
            return Err(Error::LvbWrite);
        }
        let (domain, name) = (self.domain.clone(), id.as_bytes().to_vec());
        let data_vec = data.to_vec();
        self.rt.call(|reply| Command::WriteLvb {
            domain,
            name,
            data: data_vec,
            reply,
        })?;
        Ok(data.len())
    }

    fn messages_sent(&self) -> Option<u64> {
        Some(runtime::MESSAGES_SENT.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn destroy(&self) -> Result<()> {
        let held: Vec<(LockId, u64)> = self
            .locks()
            .drain()
            .filter_map(|(id, s)| match s {
                Slot::Held { holder, .. } => Some((id, holder)),
                Slot::Acquiring => None,
            })
            .collect();
        for (id, holder) in held {
            self.rt.send(Command::Unlock {
                domain: self.domain.clone(),
                name: id.as_bytes().to_vec(),
                holder,
            })?;
        }
        let domain = self.domain.clone();
        self.rt.call(|reply| Command::Leave { domain, reply })?
    }
}
