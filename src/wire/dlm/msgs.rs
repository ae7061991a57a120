//! One struct per o2dlm message payload (what follows the o2net header).
//!
//! Decoding rules, uniformly:
//! - the payload must have exactly the length the layout implies (Linux
//!   always sends exact lengths; the captures confirm it), so
//!   `encode(decode(x)) == x` for every accepted `x` whose pad bytes are zero;
//! - pad fields and name bytes past the length byte are ignored, as Linux
//!   receivers ignore them, and written as zero;
//! - semantic values (modes, flags, node numbers) are passed through
//!   untouched: refusing them with the right dlm_status is the handler's job.
//!   Only what makes the layout itself impossible (a name longer than its
//!   field, a record count the bytes cannot hold) is an error.

use super::types::{
    array, be16, be32, be64, byte, exact_len, field, DomainName, LockName, Lvb, NodeInfo, NodeMap,
    ProtocolVersion,
};
use super::{
    DLM_LVB_LEN, DLM_MAX_MIGRATABLE_LOCKS, LKM_GET_LVB, LKM_PUT_LVB, O2HB_MAX_REGION_NAME_LEN,
    O2NM_MAX_NAME_LEN, O2NM_MAX_NODES, O2NM_MAX_REGIONS,
};
use crate::wire::WireError;
use std::net::Ipv4Addr;

fn put_lvb(out: &mut Vec<u8>, lvb: &Option<Lvb>) {
    out.extend_from_slice(lvb.as_ref().unwrap_or(&[0u8; DLM_LVB_LEN]));
}

/// Length of a message whose optional LVB is present iff `flag` is set.
fn len_with_lvb(flags: u32, flag: u32) -> usize {
    if flags & flag != 0 {
        80 + DLM_LVB_LEN
    } else {
        80
    }
}

// ---------------------------------------------------------------------------
// 500 / 502: node_idx, namelen, pad, flags, name[64]

macro_rules! name_flags_msg {
    ($(#[$m:meta])* $ty:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $ty {
            pub node_idx: u8,
            pub flags: u32,
            pub name: LockName,
        }

        impl $ty {
            pub const LEN: usize = 72;

            pub fn encode(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(Self::LEN);
                out.extend_from_slice(&[self.node_idx, self.name.len_u8(), 0, 0]);
                out.extend_from_slice(&self.flags.to_be_bytes());
                self.name.put_field(&mut out, O2NM_MAX_NAME_LEN);
                out
            }

            pub fn decode(b: &[u8]) -> Result<Self, WireError> {
                exact_len($what, b, Self::LEN)?;
                Ok($ty {
                    node_idx: byte(b, 0),
                    flags: be32(b, 4),
                    name: LockName::from_field($what, byte(b, 1), field(b, 8, 64))?,
                })
            }
        }
    };
}

name_flags_msg!(
    /// 500 DLM_MASTER_REQUEST_MSG: "who masters `name`?" (flags unused, 0).
    MasterRequest,
    "master request"
);
name_flags_msg!(
    /// 502 DLM_ASSERT_MASTER_MSG: `node_idx` declares itself master;
    /// flags are DLM_ASSERT_MASTER_*.
    AssertMaster,
    "assert master"
);

// ---------------------------------------------------------------------------
// 503 / 504: cookie, flags, pad, node_idx, requested_type, namelen, name

/// 503 DLM_CREATE_LOCK_MSG: a new lock at the master.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CreateLock {
    pub cookie: u64,
    pub flags: u32,
    pub node_idx: u8,
    pub requested_type: i8,
    pub name: LockName,
}

impl CreateLock {
    pub const LEN: usize = 80;

    pub fn encode(&self) -> Vec<u8> {
        lock_head(
            self.cookie,
            self.flags,
            [0, self.node_idx, self.requested_type as u8],
            &self.name,
        )
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "create lock";
        exact_len(WHAT, b, Self::LEN)?;
        Ok(CreateLock {
            cookie: be64(b, 0),
            flags: be32(b, 8),
            node_idx: byte(b, 13),
            requested_type: byte(b, 14) as i8,
            name: LockName::from_field(WHAT, byte(b, 15), field(b, 16, 64))?,
        })
    }
}

/// The 80-byte head shared by create/convert/unlock/proxy-AST: cookie,
/// flags, three message-specific bytes, namelen, name[64].
fn lock_head(cookie: u64, flags: u32, mid: [u8; 3], name: &LockName) -> Vec<u8> {
    let mut out = Vec::with_capacity(80 + DLM_LVB_LEN);
    out.extend_from_slice(&cookie.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&mid);
    out.push(name.len_u8());
    name.put_field(&mut out, O2NM_MAX_NAME_LEN);
    out
}

/// 504 DLM_CONVERT_LOCK_MSG. The LVB travels iff `flags` has LKM_PUT_LVB:
/// `flags` decides; `lvb` is Some exactly then after decoding, and when
/// encoding a PUT_LVB message with `lvb: None` zeros are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConvertLock {
    pub cookie: u64,
    pub flags: u32,
    pub node_idx: u8,
    pub requested_type: i8,
    pub name: LockName,
    pub lvb: Option<Lvb>,
}

impl ConvertLock {
    pub fn encoded_len(&self) -> usize {
        len_with_lvb(self.flags, LKM_PUT_LVB)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = lock_head(
            self.cookie,
            self.flags,
            [0, self.node_idx, self.requested_type as u8],
            &self.name,
        );
        if self.flags & LKM_PUT_LVB != 0 {
            put_lvb(&mut out, &self.lvb);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "convert lock";
        let flags = be32(b, 8);
        exact_len(WHAT, b, len_with_lvb(flags, LKM_PUT_LVB))?;
        Ok(ConvertLock {
            cookie: be64(b, 0),
            flags,
            node_idx: byte(b, 13),
            requested_type: byte(b, 14) as i8,
            name: LockName::from_field(WHAT, byte(b, 15), field(b, 16, 64))?,
            lvb: (flags & LKM_PUT_LVB != 0).then(|| array(b, 80)),
        })
    }
}

/// 505 DLM_PROXY_AST_MSG: the master tells a lock's owner about a grant
/// (`ast_type` DLM_AST) or a blocked request (DLM_BAST). The LVB travels
/// iff `flags` has LKM_GET_LVB (same `flags`-decides rule as ConvertLock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProxyAst {
    pub cookie: u64,
    pub flags: u32,
    pub node_idx: u8,
    pub ast_type: u8,
    pub blocked_type: u8,
    pub name: LockName,
    pub lvb: Option<Lvb>,
}

impl ProxyAst {
    pub fn encoded_len(&self) -> usize {
        len_with_lvb(self.flags, LKM_GET_LVB)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = lock_head(
            self.cookie,
            self.flags,
            [self.node_idx, self.ast_type, self.blocked_type],
            &self.name,
        );
        if self.flags & LKM_GET_LVB != 0 {
            put_lvb(&mut out, &self.lvb);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "proxy ast";
        let flags = be32(b, 8);
        exact_len(WHAT, b, len_with_lvb(flags, LKM_GET_LVB))?;
        Ok(ProxyAst {
            cookie: be64(b, 0),
            flags,
            node_idx: byte(b, 12),
            ast_type: byte(b, 13),
            blocked_type: byte(b, 14),
            name: LockName::from_field(WHAT, byte(b, 15), field(b, 16, 64))?,
            lvb: (flags & LKM_GET_LVB != 0).then(|| array(b, 80)),
        })
    }
}

/// 506 DLM_UNLOCK_LOCK_MSG (also cancel, with LKM_CANCEL). The LVB travels
/// iff `flags` has LKM_PUT_LVB (same rule as ConvertLock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UnlockLock {
    pub cookie: u64,
    pub flags: u32,
    pub node_idx: u8,
    pub name: LockName,
    pub lvb: Option<Lvb>,
}

impl UnlockLock {
    pub fn encoded_len(&self) -> usize {
        len_with_lvb(self.flags, LKM_PUT_LVB)
    }

    pub fn encode(&self) -> Vec<u8> {
        // Bytes 12..14 are a be16 pad here.
        let mut out = lock_head(self.cookie, self.flags, [0, 0, self.node_idx], &self.name);
        if self.flags & LKM_PUT_LVB != 0 {
            put_lvb(&mut out, &self.lvb);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "unlock lock";
        let flags = be32(b, 8);
        exact_len(WHAT, b, len_with_lvb(flags, LKM_PUT_LVB))?;
        Ok(UnlockLock {
            cookie: be64(b, 0),
            flags,
            node_idx: byte(b, 14),
            name: LockName::from_field(WHAT, byte(b, 15), field(b, 16, 64))?,
            lvb: (flags & LKM_PUT_LVB != 0).then(|| array(b, 80)),
        })
    }
}

// ---------------------------------------------------------------------------
// 507 / 522: pad1 (4), pad2 (2), node_idx, namelen, name[64]

macro_rules! deref_msg {
    ($(#[$m:meta])* $ty:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $ty {
            pub node_idx: u8,
            pub name: LockName,
        }

        impl $ty {
            pub const LEN: usize = 72;

            pub fn encode(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(Self::LEN);
                out.extend_from_slice(&[0, 0, 0, 0, 0, 0, self.node_idx, self.name.len_u8()]);
                self.name.put_field(&mut out, O2NM_MAX_NAME_LEN);
                out
            }

            pub fn decode(b: &[u8]) -> Result<Self, WireError> {
                exact_len($what, b, Self::LEN)?;
                Ok($ty {
                    node_idx: byte(b, 6),
                    name: LockName::from_field($what, byte(b, 7), field(b, 8, 64))?,
                })
            }
        }
    };
}

deref_msg!(
    /// 507 DLM_DEREF_LOCKRES_MSG: a non-master drops its reference.
    DerefLockres,
    "deref lockres"
);
deref_msg!(
    /// 522 DLM_DEREF_LOCKRES_DONE (DLM 1.3): the master finished a deref it
    /// had answered with DLM_DEREF_RESPONSE_INPROG.
    DerefLockresDone,
    "deref lockres done"
);

// ---------------------------------------------------------------------------

/// 508 DLM_MIGRATE_REQUEST_MSG: sent by the migration target `new_master`
/// to third nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigrateRequest {
    pub master: u8,
    pub new_master: u8,
    pub name: LockName,
}

impl MigrateRequest {
    pub const LEN: usize = 72;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&[self.master, self.new_master, self.name.len_u8(), 0]);
        out.extend_from_slice(&[0; 4]);
        self.name.put_field(&mut out, O2NM_MAX_NAME_LEN);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "migrate request";
        exact_len(WHAT, b, Self::LEN)?;
        Ok(MigrateRequest {
            master: byte(b, 0),
            new_master: byte(b, 1),
            name: LockName::from_field(WHAT, byte(b, 2), field(b, 8, 64))?,
        })
    }
}

/// 514 DLM_MASTER_REQUERY_MSG: "who masters `name` now?" during recovery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MasterRequery {
    pub node_idx: u8,
    pub name: LockName,
}

impl MasterRequery {
    pub const LEN: usize = 72;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&[0, 0, self.node_idx, self.name.len_u8(), 0, 0, 0, 0]);
        self.name.put_field(&mut out, O2NM_MAX_NAME_LEN);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "master requery";
        exact_len(WHAT, b, Self::LEN)?;
        Ok(MasterRequery {
            node_idx: byte(b, 2),
            name: LockName::from_field(WHAT, byte(b, 3), field(b, 8, 64))?,
        })
    }
}

// ---------------------------------------------------------------------------
// 509 DLM_MIG_LOCKRES_MSG

/// One lock record of a migratable lock resource (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MigratableLock {
    pub cookie: u64,
    /// DLM_GRANTED_LIST / DLM_CONVERTING_LIST / DLM_BLOCKED_LIST.
    pub list: u8,
    /// DLM_LKSB_PUT_LVB / DLM_LKSB_GET_LVB of that lock.
    pub flags: u8,
    pub lock_type: i8,
    pub convert_type: i8,
    /// Always LKM_IVMODE (−1) from Linux; a Linux receiver BUGs otherwise.
    pub highest_blocked: i8,
    pub node: u8,
}

impl MigratableLock {
    pub const LEN: usize = 16;

    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.cookie.to_be_bytes());
        out.extend_from_slice(&[
            0,
            0,
            self.list,
            self.flags,
            self.lock_type as u8,
            self.convert_type as u8,
            self.highest_blocked as u8,
            self.node,
        ]);
    }

    fn get(b: &[u8]) -> Self {
        MigratableLock {
            cookie: be64(b, 0),
            list: byte(b, 10),
            flags: byte(b, 11),
            lock_type: byte(b, 12) as i8,
            convert_type: byte(b, 13) as i8,
            highest_blocked: byte(b, 14) as i8,
            node: byte(b, 15),
        }
    }
}

/// 509 DLM_MIG_LOCKRES_MSG: a lock resource's locks, sent for migration or
/// recovery. The wire's num_locks is `locks.len()`; at most
/// DLM_MAX_MIGRATABLE_LOCKS records fit one message (a bigger transfer is
/// split by the sender, with a non-zero `mig_cookie`). `encode` writes at
/// most that many records, so its output is always self-consistent; callers
/// must split longer lists themselves.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MigLockres {
    pub master: u8,
    /// DLM_MRES_* bits.
    pub flags: u8,
    pub total_locks: u32,
    pub mig_cookie: u64,
    pub name: LockName,
    pub lvb: Lvb,
    pub locks: Vec<MigratableLock>,
}

impl MigLockres {
    /// Fixed part before the lock records.
    pub const HEADER_LEN: usize = 112;
    /// Largest payload a Linux receiver registers for this message.
    pub const MAX_LEN: usize = Self::HEADER_LEN + DLM_MAX_MIGRATABLE_LOCKS * MigratableLock::LEN;

    pub fn encoded_len(&self) -> usize {
        Self::HEADER_LEN + self.locks.len().min(DLM_MAX_MIGRATABLE_LOCKS) * MigratableLock::LEN
    }

    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.locks.len() <= DLM_MAX_MIGRATABLE_LOCKS);
        let n = self.locks.len().min(DLM_MAX_MIGRATABLE_LOCKS);
        let mut out = Vec::with_capacity(self.encoded_len());
        out.extend_from_slice(&[self.master, self.name.len_u8(), n as u8, self.flags]);
        out.extend_from_slice(&self.total_locks.to_be_bytes());
        out.extend_from_slice(&self.mig_cookie.to_be_bytes());
        self.name.put_field(&mut out, LockName::MAX);
        out.extend_from_slice(&self.lvb);
        for l in &self.locks[..n] {
            l.put(&mut out);
        }
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "mig lockres";
        if b.len() < Self::HEADER_LEN {
            return Err(WireError::Short {
                what: WHAT,
                need: Self::HEADER_LEN,
                have: b.len(),
            });
        }
        let num = usize::from(byte(b, 2));
        if num > DLM_MAX_MIGRATABLE_LOCKS {
            return Err(WireError::BadField {
                what: WHAT,
                field: "num_locks",
                value: num as u64,
            });
        }
        // The count is only trusted once the bytes are known to hold it.
        exact_len(WHAT, b, Self::HEADER_LEN + num * MigratableLock::LEN)?;
        let locks = b[Self::HEADER_LEN..]
            .chunks_exact(MigratableLock::LEN)
            .map(MigratableLock::get)
            .collect();
        Ok(MigLockres {
            master: byte(b, 0),
            flags: byte(b, 3),
            total_locks: be32(b, 4),
            mig_cookie: be64(b, 8),
            name: LockName::from_field(WHAT, byte(b, 1), field(b, 16, 32))?,
            lvb: array(b, 48),
            locks,
        })
    }
}

// ---------------------------------------------------------------------------
// 510 DLM_QUERY_JOIN_MSG

/// 510 DLM_QUERY_JOIN_MSG (key DLM_MOD_KEY): a node asks to join `domain`.
/// The answer is a [`super::QueryJoinResponse`] in the reply's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryJoin {
    pub node_idx: u8,
    pub dlm_proto: ProtocolVersion,
    pub fs_proto: ProtocolVersion,
    pub domain: DomainName,
    /// The joiner's heartbeat live-node map (including itself).
    pub node_map: NodeMap,
}

impl QueryJoin {
    pub const LEN: usize = 104;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&[
            self.node_idx,
            0,
            0,
            self.domain.len_u8(),
            self.dlm_proto.major,
            self.dlm_proto.minor,
            self.fs_proto.major,
            self.fs_proto.minor,
        ]);
        self.domain.put_field(&mut out, O2NM_MAX_NAME_LEN);
        out.extend_from_slice(&self.node_map.0);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "query join";
        exact_len(WHAT, b, Self::LEN)?;
        Ok(QueryJoin {
            node_idx: byte(b, 0),
            dlm_proto: ProtocolVersion {
                major: byte(b, 4),
                minor: byte(b, 5),
            },
            fs_proto: ProtocolVersion {
                major: byte(b, 6),
                minor: byte(b, 7),
            },
            domain: DomainName::from_field(WHAT, byte(b, 3), field(b, 8, 64))?,
            node_map: NodeMap(array(b, 72)),
        })
    }
}

// 511 / 512: node_idx, pad[2], name_len, domain[64]
macro_rules! domain_msg {
    ($(#[$m:meta])* $ty:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $ty {
            pub node_idx: u8,
            pub domain: DomainName,
        }

        impl $ty {
            pub const LEN: usize = 68;

            pub fn encode(&self) -> Vec<u8> {
                let mut out = Vec::with_capacity(Self::LEN);
                out.extend_from_slice(&[self.node_idx, 0, 0, self.domain.len_u8()]);
                self.domain.put_field(&mut out, O2NM_MAX_NAME_LEN);
                out
            }

            pub fn decode(b: &[u8]) -> Result<Self, WireError> {
                exact_len($what, b, Self::LEN)?;
                Ok($ty {
                    node_idx: byte(b, 0),
                    domain: DomainName::from_field($what, byte(b, 3), field(b, 4, 64))?,
                })
            }
        }
    };
}

domain_msg!(
    /// 511 DLM_ASSERT_JOINED_MSG (DLM_MOD_KEY): the joiner is now a member.
    AssertJoined,
    "assert joined"
);
domain_msg!(
    /// 512 DLM_CANCEL_JOIN_MSG (DLM_MOD_KEY): the joiner gave up.
    CancelJoin,
    "cancel join"
);

// 513 / 521: node_idx, pad[3]
macro_rules! node_msg {
    ($(#[$m:meta])* $ty:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $ty {
            pub node_idx: u8,
        }

        impl $ty {
            pub const LEN: usize = 4;

            pub fn encode(&self) -> Vec<u8> {
                vec![self.node_idx, 0, 0, 0]
            }

            pub fn decode(b: &[u8]) -> Result<Self, WireError> {
                exact_len($what, b, Self::LEN)?;
                Ok($ty { node_idx: byte(b, 0) })
            }
        }
    };
}

node_msg!(
    /// 513 DLM_EXIT_DOMAIN_MSG: `node_idx` has left the domain.
    ExitDomain,
    "exit domain"
);
node_msg!(
    /// 521 DLM_BEGIN_EXIT_DOMAIN_MSG (DLM 1.2): `node_idx` starts leaving.
    BeginExitDomain,
    "begin exit domain"
);

// 515 / 517: node_idx, dead_node, pad (2), pad (4)
macro_rules! reco_msg {
    ($(#[$m:meta])* $ty:ident, $what:literal) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub struct $ty {
            pub node_idx: u8,
            pub dead_node: u8,
        }

        impl $ty {
            pub const LEN: usize = 8;

            pub fn encode(&self) -> Vec<u8> {
                vec![self.node_idx, self.dead_node, 0, 0, 0, 0, 0, 0]
            }

            pub fn decode(b: &[u8]) -> Result<Self, WireError> {
                exact_len($what, b, Self::LEN)?;
                Ok($ty {
                    node_idx: byte(b, 0),
                    dead_node: byte(b, 1),
                })
            }
        }
    };
}

reco_msg!(
    /// 515 DLM_LOCK_REQUEST_MSG: the recovery master asks for a node's
    /// locks on resources of `dead_node`.
    LockRequest,
    "lock request"
);
reco_msg!(
    /// 517 DLM_BEGIN_RECO_MSG: `node_idx` is recovery master for `dead_node`.
    BeginReco,
    "begin reco"
);

/// 516 DLM_RECO_DATA_DONE_MSG: a node sent all its recovery data. The
/// trailing 64-byte reco_lvb is unused (zero on the wire, ignored here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RecoDataDone {
    pub node_idx: u8,
    pub dead_node: u8,
}

impl RecoDataDone {
    pub const LEN: usize = 72;

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; Self::LEN];
        out[0] = self.node_idx;
        out[1] = self.dead_node;
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        exact_len("reco data done", b, Self::LEN)?;
        Ok(RecoDataDone {
            node_idx: byte(b, 0),
            dead_node: byte(b, 1),
        })
    }
}

/// 518 DLM_FINALIZE_RECO_MSG: stage 1 (flags 0) or stage 2
/// (DLM_FINALIZE_STAGE2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FinalizeReco {
    pub node_idx: u8,
    pub dead_node: u8,
    pub flags: u8,
}

impl FinalizeReco {
    pub const LEN: usize = 8;

    pub fn encode(&self) -> Vec<u8> {
        vec![self.node_idx, self.dead_node, self.flags, 0, 0, 0, 0, 0]
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        exact_len("finalize reco", b, Self::LEN)?;
        Ok(FinalizeReco {
            node_idx: byte(b, 0),
            dead_node: byte(b, 1),
            flags: byte(b, 2),
        })
    }
}

// ---------------------------------------------------------------------------
// 519 / 520: fixed-size tables with a used-entry count

/// A global-heartbeat region name: 32 raw bytes (o2hb region names are
/// 32-character UUIDs, so there is no terminator).
pub type RegionName = [u8; O2HB_MAX_REGION_NAME_LEN];

/// 519 DLM_QUERY_REGION (DLM_MOD_KEY, DLM ≥ 1.1): the joiner's heartbeat
/// regions (none in local heartbeat mode). Always 1092 bytes; slots past
/// the used count are ignored when decoding and zeroed when encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryRegion {
    pub node: u8,
    pub domain: DomainName,
    /// At most O2NM_MAX_REGIONS entries.
    pub regions: Vec<RegionName>,
}

impl QueryRegion {
    pub const LEN: usize = 4 + O2NM_MAX_NAME_LEN + O2NM_MAX_REGIONS * O2HB_MAX_REGION_NAME_LEN;

    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.regions.len() <= O2NM_MAX_REGIONS);
        let n = self.regions.len().min(O2NM_MAX_REGIONS);
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&[self.node, n as u8, self.domain.len_u8(), 0]);
        self.domain.put_field(&mut out, O2NM_MAX_NAME_LEN);
        for r in &self.regions[..n] {
            out.extend_from_slice(r);
        }
        out.resize(Self::LEN, 0);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "query region";
        exact_len(WHAT, b, Self::LEN)?;
        let n = usize::from(byte(b, 1));
        if n > O2NM_MAX_REGIONS {
            return Err(WireError::BadField {
                what: WHAT,
                field: "qr_numregions",
                value: n as u64,
            });
        }
        let base = 4 + O2NM_MAX_NAME_LEN;
        let regions = (0..n)
            .map(|i| array(b, base + i * O2HB_MAX_REGION_NAME_LEN))
            .collect();
        Ok(QueryRegion {
            node: byte(b, 0),
            domain: DomainName::from_field(WHAT, byte(b, 2), field(b, 4, 64))?,
            regions,
        })
    }
}

/// 520 DLM_QUERY_NODEINFO (DLM_MOD_KEY, DLM ≥ 1.1): the joiner's view of
/// the cluster's nodes. Always 2108 bytes; unused entries are ignored when
/// decoding and zeroed when encoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryNodeinfo {
    pub node: u8,
    pub domain: DomainName,
    /// At most O2NM_MAX_NODES (255) entries.
    pub nodes: Vec<NodeInfo>,
}

impl QueryNodeinfo {
    pub const LEN: usize = 4 + O2NM_MAX_NAME_LEN + O2NM_MAX_NODES * 8;

    pub fn encode(&self) -> Vec<u8> {
        debug_assert!(self.nodes.len() <= O2NM_MAX_NODES);
        let n = self.nodes.len().min(O2NM_MAX_NODES);
        let mut out = Vec::with_capacity(Self::LEN);
        out.extend_from_slice(&[self.node, n as u8, self.domain.len_u8(), 0]);
        self.domain.put_field(&mut out, O2NM_MAX_NAME_LEN);
        for ni in &self.nodes[..n] {
            out.extend_from_slice(&[ni.num, 0]);
            out.extend_from_slice(&ni.port.to_be_bytes());
            out.extend_from_slice(&ni.addr.octets());
        }
        out.resize(Self::LEN, 0);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        const WHAT: &str = "query nodeinfo";
        exact_len(WHAT, b, Self::LEN)?;
        // A u8 count can say 255, which is exactly the table size.
        let n = usize::from(byte(b, 1)).min(O2NM_MAX_NODES);
        let base = 4 + O2NM_MAX_NAME_LEN;
        let nodes = (0..n)
            .map(|i| {
                let at = base + i * 8;
                NodeInfo {
                    num: byte(b, at),
                    port: be16(b, at + 2),
                    addr: Ipv4Addr::from(array::<4>(b, at + 4)),
                }
            })
            .collect();
        Ok(QueryNodeinfo {
            node: byte(b, 0),
            domain: DomainName::from_field(WHAT, byte(b, 2), field(b, 4, 64))?,
            nodes,
        })
    }
}
