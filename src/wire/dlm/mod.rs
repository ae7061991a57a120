//! o2dlm message codecs (types 500..522) and the constants that appear in
//! them. Every struct here is an o2net payload; the o2net header (type, key,
//! msg_num) is in [`crate::wire::o2net`].
//!
//! Facts the kernel captures taught us (beyond the layouts):
//! - every message's data_len is exactly its layout's length: 80 bytes for
//!   convert/unlock/proxy-AST without LVB, 144 with one, 112 + 16·n for
//!   MIG_LOCKRES; QUERY_REGION (1092) and QUERY_NODEINFO (2108) are always
//!   sent whole, unused slots zeroed;
//! - every pad byte and every name byte past its length byte is zero;
//! - the LVB is attached iff PUT_LVB (convert/unlock) or GET_LVB (proxy AST)
//!   is in `flags`, never otherwise (VALBLK alone does not attach one).

mod msgs;
mod types;

pub use msgs::*;
pub use types::{
    cookie_node, cookie_seq, make_cookie, DomainName, LockName, Lvb, Name, NodeInfo, NodeMap,
    ProtocolVersion, QueryJoinResponse, COOKIE_SEQ_MASK,
};

use crate::wire::WireError;

// --- message types -----------------------------------------------------------

pub const DLM_MASTER_REQUEST_MSG: u16 = 500;
/// Reserved, never sent.
pub const DLM_UNUSED_MSG1: u16 = 501;
pub const DLM_ASSERT_MASTER_MSG: u16 = 502;
pub const DLM_CREATE_LOCK_MSG: u16 = 503;
pub const DLM_CONVERT_LOCK_MSG: u16 = 504;
pub const DLM_PROXY_AST_MSG: u16 = 505;
pub const DLM_UNLOCK_LOCK_MSG: u16 = 506;
pub const DLM_DEREF_LOCKRES_MSG: u16 = 507;
pub const DLM_MIGRATE_REQUEST_MSG: u16 = 508;
pub const DLM_MIG_LOCKRES_MSG: u16 = 509;
pub const DLM_QUERY_JOIN_MSG: u16 = 510;
pub const DLM_ASSERT_JOINED_MSG: u16 = 511;
pub const DLM_CANCEL_JOIN_MSG: u16 = 512;
pub const DLM_EXIT_DOMAIN_MSG: u16 = 513;
pub const DLM_MASTER_REQUERY_MSG: u16 = 514;
pub const DLM_LOCK_REQUEST_MSG: u16 = 515;
pub const DLM_RECO_DATA_DONE_MSG: u16 = 516;
pub const DLM_BEGIN_RECO_MSG: u16 = 517;
pub const DLM_FINALIZE_RECO_MSG: u16 = 518;
pub const DLM_QUERY_REGION_MSG: u16 = 519;
pub const DLM_QUERY_NODEINFO_MSG: u16 = 520;
pub const DLM_BEGIN_EXIT_DOMAIN_MSG: u16 = 521;
pub const DLM_DEREF_LOCKRES_DONE_MSG: u16 = 522;

/// o2net key of the domain-independent messages 510, 511, 512, 519, 520
/// (ASCII "flar"). Every other message uses the domain key
/// ([`crate::wire::crc::dlm_domain_key`]).
pub const DLM_MOD_KEY: u32 = 0x666C_6172;

// --- limits and special names ------------------------------------------------

/// Longest lock name.
pub const DLM_LOCKID_NAME_MAX: usize = 32;
/// Size of the wire name / domain fields.
pub const O2NM_MAX_NAME_LEN: usize = 64;
/// Linux refuses domain names of this length or longer.
pub const DLM_DOMAIN_NAME_LIMIT: usize = 64;
pub const DLM_LVB_LEN: usize = 64;
pub const DLM_MAX_MIGRATABLE_LOCKS: usize = 240;
pub const O2NM_MAX_NODES: usize = 255;
pub const O2NM_MAX_REGIONS: usize = 32;
pub const O2HB_MAX_REGION_NAME_LEN: usize = 32;
/// "Owner unknown" / invalid node number.
pub const DLM_LOCK_RES_OWNER_UNKNOWN: u8 = 255;
pub const O2NM_INVALID_NODE_NUM: u8 = 255;
pub const DLM_RECOVERY_LOCK_NAME: &[u8] = b"$RECOVERY";

// --- lock modes (s8) -----------------------------------------------------------

pub const LKM_IVMODE: i8 = -1;
pub const LKM_NLMODE: i8 = 0;
pub const LKM_CRMODE: i8 = 1;
pub const LKM_CWMODE: i8 = 2;
pub const LKM_PRMODE: i8 = 3;
pub const LKM_PWMODE: i8 = 4;
pub const LKM_EXMODE: i8 = 5;
pub const LKM_MAXMODE: i8 = 5;

// --- LKM flags (u32) -------------------------------------------------------------

pub const LKM_ORPHAN: u32 = 0x0000_0010;
pub const LKM_PARENTABLE: u32 = 0x0000_0020;
pub const LKM_BLOCK: u32 = 0x0000_0040;
pub const LKM_LOCAL: u32 = 0x0000_0080;
pub const LKM_VALBLK: u32 = 0x0000_0100;
pub const LKM_NOQUEUE: u32 = 0x0000_0200;
pub const LKM_CONVERT: u32 = 0x0000_0400;
pub const LKM_NODLCKWT: u32 = 0x0000_0800;
pub const LKM_UNLOCK: u32 = 0x0000_1000;
pub const LKM_CANCEL: u32 = 0x0000_2000;
pub const LKM_DEQALL: u32 = 0x0000_4000;
pub const LKM_INVVALBLK: u32 = 0x0000_8000;
pub const LKM_SYNCSTS: u32 = 0x0001_0000;
pub const LKM_TIMEOUT: u32 = 0x0002_0000;
pub const LKM_SNGLDLCK: u32 = 0x0004_0000;
pub const LKM_FINDLOCAL: u32 = 0x0008_0000;
pub const LKM_PROC_OWNED: u32 = 0x0010_0000;
pub const LKM_XID: u32 = 0x0020_0000;
pub const LKM_XID_CONFLICT: u32 = 0x0040_0000;
pub const LKM_FORCE: u32 = 0x0080_0000;
pub const LKM_REVVALBLK: u32 = 0x0100_0000;
pub const LKM_MIGRATION: u32 = 0x1000_0000;
/// On the wire: a 64-byte LVB follows that the master must store.
pub const LKM_PUT_LVB: u32 = 0x2000_0000;
/// On the wire: the requester wants the LVB; in a proxy AST, it follows.
pub const LKM_GET_LVB: u32 = 0x4000_0000;
pub const LKM_RECOVERY: u32 = 0x8000_0000;
/// Flags the lock API accepts.
pub const LKM_VALID_FLAGS: u32 = LKM_VALBLK
    | LKM_CONVERT
    | LKM_UNLOCK
    | LKM_CANCEL
    | LKM_INVVALBLK
    | LKM_FORCE
    | LKM_RECOVERY
    | LKM_LOCAL
    | LKM_NOQUEUE;

// --- LKSB flags (u8, in migratable lock records) -----------------------------------

pub const DLM_LKSB_PUT_LVB: u8 = 0x02;
pub const DLM_LKSB_GET_LVB: u8 = 0x04;

// --- enum dlm_status ---------------------------------------------------------------

pub const DLM_NORMAL: i32 = 0;
pub const DLM_GRANTED: i32 = 1;
pub const DLM_DENIED: i32 = 2;
pub const DLM_DENIED_NOLOCKS: i32 = 3;
pub const DLM_WORKING: i32 = 4;
pub const DLM_BLOCKED: i32 = 5;
pub const DLM_BLOCKED_ORPHAN: i32 = 6;
pub const DLM_DENIED_GRACE_PERIOD: i32 = 7;
pub const DLM_SYSERR: i32 = 8;
pub const DLM_NOSUPPORT: i32 = 9;
pub const DLM_CANCELGRANT: i32 = 10;
pub const DLM_IVLOCKID: i32 = 11;
pub const DLM_SYNC: i32 = 12;
pub const DLM_BADTYPE: i32 = 13;
pub const DLM_BADRESOURCE: i32 = 14;
pub const DLM_MAXHANDLES: i32 = 15;
pub const DLM_NOCLINFO: i32 = 16;
pub const DLM_NOLOCKMGR: i32 = 17;
pub const DLM_NOPURGED: i32 = 18;
pub const DLM_BADARGS: i32 = 19;
pub const DLM_VOID: i32 = 20;
pub const DLM_NOTQUEUED: i32 = 21;
pub const DLM_IVBUFLEN: i32 = 22;
pub const DLM_CVTUNGRANT: i32 = 23;
pub const DLM_BADPARAM: i32 = 24;
pub const DLM_VALNOTVALID: i32 = 25;
pub const DLM_REJECTED: i32 = 26;
pub const DLM_ABORT: i32 = 27;
pub const DLM_CANCEL: i32 = 28;
pub const DLM_IVRESHANDLE: i32 = 29;
pub const DLM_DEADLOCK: i32 = 30;
pub const DLM_DENIED_NOASTS: i32 = 31;
pub const DLM_FORWARD: i32 = 32;
pub const DLM_TIMEOUT: i32 = 33;
pub const DLM_IVGROUPID: i32 = 34;
pub const DLM_VERS_CONFLICT: i32 = 35;
pub const DLM_BAD_DEVICE_PATH: i32 = 36;
pub const DLM_NO_DEVICE_PERMISSION: i32 = 37;
pub const DLM_NO_CONTROL_DEVICE: i32 = 38;
pub const DLM_RECOVERING: i32 = 39;
pub const DLM_MIGRATING: i32 = 40;
pub const DLM_MAXSTATS: i32 = 41;

// --- AST types and lock lists ---------------------------------------------------------

pub const DLM_AST: u8 = 0;
pub const DLM_BAST: u8 = 1;
/// Local only, never sent.
pub const DLM_ASTUNLOCK: u8 = 2;

pub const DLM_GRANTED_LIST: u8 = 0;
pub const DLM_CONVERTING_LIST: u8 = 1;
pub const DLM_BLOCKED_LIST: u8 = 2;

// --- mastery, assert, migrate, deref, recovery codes -------------------------------------

pub const DLM_MASTER_RESP_NO: i32 = 0;
pub const DLM_MASTER_RESP_YES: i32 = 1;
pub const DLM_MASTER_RESP_MAYBE: i32 = 2;
pub const DLM_MASTER_RESP_ERROR: i32 = 3;

pub const DLM_ASSERT_MASTER_MLE_CLEANUP: u32 = 0x1;
pub const DLM_ASSERT_MASTER_REQUERY: u32 = 0x2;
pub const DLM_ASSERT_MASTER_FINISH_MIGRATION: u32 = 0x4;
/// ASSERT_MASTER reply bit: send the assert again.
pub const DLM_ASSERT_RESPONSE_REASSERT: i32 = 0x1;
/// ASSERT_MASTER reply bit: the replier holds a reference.
pub const DLM_ASSERT_RESPONSE_MASTERY_REF: i32 = 0x2;
pub const DLM_MIGRATE_RESPONSE_MASTERY_REF: i32 = 0x1;
pub const DLM_DEREF_RESPONSE_DONE: i32 = 0;
pub const DLM_DEREF_RESPONSE_INPROG: i32 = 1;

pub const DLM_MRES_RECOVERY: u8 = 0x01;
pub const DLM_MRES_MIGRATION: u8 = 0x02;
pub const DLM_MRES_ALL_DONE: u8 = 0x04;

pub const DLM_FINALIZE_STAGE2: u8 = 0x01;

// --- join -------------------------------------------------------------------------------

pub const JOIN_DISALLOW: u8 = 0;
pub const JOIN_OK: u8 = 1;
pub const JOIN_OK_NO_MAP: u8 = 2;
pub const JOIN_PROTOCOL_MISMATCH: u8 = 3;

/// The inter-node DLM protocol current kernels speak.
pub const DLM_PROTOCOL: ProtocolVersion = ProtocolVersion { major: 1, minor: 3 };
/// The fs locking protocol ocfs2 and ocfs2_dlmfs register.
pub const FS_LOCKING_PROTOCOL: ProtocolVersion = ProtocolVersion { major: 1, minor: 0 };

/// Whether `msg_type` is sent with [`DLM_MOD_KEY`] rather than the domain key.
pub fn uses_mod_key(msg_type: u16) -> bool {
    matches!(
        msg_type,
        DLM_QUERY_JOIN_MSG
            | DLM_ASSERT_JOINED_MSG
            | DLM_CANCEL_JOIN_MSG
            | DLM_QUERY_REGION_MSG
            | DLM_QUERY_NODEINFO_MSG
    )
}

/// The largest payload a Linux node registers for `msg_type` (a longer one
/// is answered with o2net sys_status OVERFLOW); None for non-DLM types.
pub fn registered_max_len(msg_type: u16) -> Option<usize> {
    Some(match msg_type {
        DLM_MASTER_REQUEST_MSG | DLM_ASSERT_MASTER_MSG => 72,
        DLM_CREATE_LOCK_MSG => 80,
        DLM_CONVERT_LOCK_MSG | DLM_PROXY_AST_MSG | DLM_UNLOCK_LOCK_MSG => 80 + DLM_LVB_LEN,
        DLM_DEREF_LOCKRES_MSG | DLM_DEREF_LOCKRES_DONE_MSG => 72,
        DLM_MIGRATE_REQUEST_MSG | DLM_MASTER_REQUERY_MSG | DLM_RECO_DATA_DONE_MSG => 72,
        DLM_MIG_LOCKRES_MSG => MigLockres::MAX_LEN,
        DLM_QUERY_JOIN_MSG => QueryJoin::LEN,
        DLM_ASSERT_JOINED_MSG | DLM_CANCEL_JOIN_MSG => 68,
        DLM_EXIT_DOMAIN_MSG | DLM_BEGIN_EXIT_DOMAIN_MSG => 4,
        DLM_LOCK_REQUEST_MSG | DLM_BEGIN_RECO_MSG | DLM_FINALIZE_RECO_MSG => 8,
        DLM_QUERY_REGION_MSG => QueryRegion::LEN,
        DLM_QUERY_NODEINFO_MSG => QueryNodeinfo::LEN,
        _ => return None,
    })
}

/// Any o2dlm message payload, by o2net msg_type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DlmMessage {
    MasterRequest(MasterRequest),
    AssertMaster(AssertMaster),
    CreateLock(CreateLock),
    ConvertLock(ConvertLock),
    ProxyAst(ProxyAst),
    UnlockLock(UnlockLock),
    DerefLockres(DerefLockres),
    MigrateRequest(MigrateRequest),
    MigLockres(MigLockres),
    QueryJoin(QueryJoin),
    AssertJoined(AssertJoined),
    CancelJoin(CancelJoin),
    ExitDomain(ExitDomain),
    MasterRequery(MasterRequery),
    LockRequest(LockRequest),
    RecoDataDone(RecoDataDone),
    BeginReco(BeginReco),
    FinalizeReco(FinalizeReco),
    QueryRegion(QueryRegion),
    QueryNodeinfo(QueryNodeinfo),
    BeginExitDomain(BeginExitDomain),
    DerefLockresDone(DerefLockresDone),
}

impl DlmMessage {
    /// Decodes the payload of an o2net request of type `msg_type`.
    pub fn decode(msg_type: u16, payload: &[u8]) -> Result<DlmMessage, WireError> {
        use DlmMessage as M;
        Ok(match msg_type {
            DLM_MASTER_REQUEST_MSG => M::MasterRequest(MasterRequest::decode(payload)?),
            DLM_ASSERT_MASTER_MSG => M::AssertMaster(AssertMaster::decode(payload)?),
            DLM_CREATE_LOCK_MSG => M::CreateLock(CreateLock::decode(payload)?),
            DLM_CONVERT_LOCK_MSG => M::ConvertLock(ConvertLock::decode(payload)?),
            DLM_PROXY_AST_MSG => M::ProxyAst(ProxyAst::decode(payload)?),
            DLM_UNLOCK_LOCK_MSG => M::UnlockLock(UnlockLock::decode(payload)?),
            DLM_DEREF_LOCKRES_MSG => M::DerefLockres(DerefLockres::decode(payload)?),
            DLM_MIGRATE_REQUEST_MSG => M::MigrateRequest(MigrateRequest::decode(payload)?),
            DLM_MIG_LOCKRES_MSG => M::MigLockres(MigLockres::decode(payload)?),
            DLM_QUERY_JOIN_MSG => M::QueryJoin(QueryJoin::decode(payload)?),
            DLM_ASSERT_JOINED_MSG => M::AssertJoined(AssertJoined::decode(payload)?),
            DLM_CANCEL_JOIN_MSG => M::CancelJoin(CancelJoin::decode(payload)?),
            DLM_EXIT_DOMAIN_MSG => M::ExitDomain(ExitDomain::decode(payload)?),
            DLM_MASTER_REQUERY_MSG => M::MasterRequery(MasterRequery::decode(payload)?),
            DLM_LOCK_REQUEST_MSG => M::LockRequest(LockRequest::decode(payload)?),
            DLM_RECO_DATA_DONE_MSG => M::RecoDataDone(RecoDataDone::decode(payload)?),
            DLM_BEGIN_RECO_MSG => M::BeginReco(BeginReco::decode(payload)?),
            DLM_FINALIZE_RECO_MSG => M::FinalizeReco(FinalizeReco::decode(payload)?),
            DLM_QUERY_REGION_MSG => M::QueryRegion(QueryRegion::decode(payload)?),
            DLM_QUERY_NODEINFO_MSG => M::QueryNodeinfo(QueryNodeinfo::decode(payload)?),
            DLM_BEGIN_EXIT_DOMAIN_MSG => M::BeginExitDomain(BeginExitDomain::decode(payload)?),
            DLM_DEREF_LOCKRES_DONE_MSG => M::DerefLockresDone(DerefLockresDone::decode(payload)?),
            other => {
                return Err(WireError::BadField {
                    what: "o2dlm message",
                    field: "msg_type",
                    value: u64::from(other),
                })
            }
        })
    }

    /// The o2net msg_type this message travels as.
    pub fn msg_type(&self) -> u16 {
        use DlmMessage as M;
        match self {
            M::MasterRequest(_) => DLM_MASTER_REQUEST_MSG,
            M::AssertMaster(_) => DLM_ASSERT_MASTER_MSG,
            M::CreateLock(_) => DLM_CREATE_LOCK_MSG,
            M::ConvertLock(_) => DLM_CONVERT_LOCK_MSG,
            M::ProxyAst(_) => DLM_PROXY_AST_MSG,
            M::UnlockLock(_) => DLM_UNLOCK_LOCK_MSG,
            M::DerefLockres(_) => DLM_DEREF_LOCKRES_MSG,
            M::MigrateRequest(_) => DLM_MIGRATE_REQUEST_MSG,
            M::MigLockres(_) => DLM_MIG_LOCKRES_MSG,
            M::QueryJoin(_) => DLM_QUERY_JOIN_MSG,
            M::AssertJoined(_) => DLM_ASSERT_JOINED_MSG,
            M::CancelJoin(_) => DLM_CANCEL_JOIN_MSG,
            M::ExitDomain(_) => DLM_EXIT_DOMAIN_MSG,
            M::MasterRequery(_) => DLM_MASTER_REQUERY_MSG,
            M::LockRequest(_) => DLM_LOCK_REQUEST_MSG,
            M::RecoDataDone(_) => DLM_RECO_DATA_DONE_MSG,
            M::BeginReco(_) => DLM_BEGIN_RECO_MSG,
            M::FinalizeReco(_) => DLM_FINALIZE_RECO_MSG,
            M::QueryRegion(_) => DLM_QUERY_REGION_MSG,
            M::QueryNodeinfo(_) => DLM_QUERY_NODEINFO_MSG,
            M::BeginExitDomain(_) => DLM_BEGIN_EXIT_DOMAIN_MSG,
            M::DerefLockresDone(_) => DLM_DEREF_LOCKRES_DONE_MSG,
        }
    }

    /// The payload bytes.
    pub fn encode(&self) -> Vec<u8> {
        use DlmMessage as M;
        match self {
            M::MasterRequest(m) => m.encode(),
            M::AssertMaster(m) => m.encode(),
            M::CreateLock(m) => m.encode(),
            M::ConvertLock(m) => m.encode(),
            M::ProxyAst(m) => m.encode(),
            M::UnlockLock(m) => m.encode(),
            M::DerefLockres(m) => m.encode(),
            M::MigrateRequest(m) => m.encode(),
            M::MigLockres(m) => m.encode(),
            M::QueryJoin(m) => m.encode(),
            M::AssertJoined(m) => m.encode(),
            M::CancelJoin(m) => m.encode(),
            M::ExitDomain(m) => m.encode(),
            M::MasterRequery(m) => m.encode(),
            M::LockRequest(m) => m.encode(),
            M::RecoDataDone(m) => m.encode(),
            M::BeginReco(m) => m.encode(),
            M::FinalizeReco(m) => m.encode(),
            M::QueryRegion(m) => m.encode(),
            M::QueryNodeinfo(m) => m.encode(),
            M::BeginExitDomain(m) => m.encode(),
            M::DerefLockresDone(m) => m.encode(),
        }
    }

    /// The whole o2net request frame: header (msg_type, the right key, the
    /// caller's msg_num) and payload. `domain_key` is used unless the type
    /// travels with [`DLM_MOD_KEY`]. Every DLM payload fits an o2net frame.
    pub fn to_frame(&self, domain_key: u32, msg_num: u32) -> Vec<u8> {
        let key = if self.uses_mod_key() {
            DLM_MOD_KEY
        } else {
            domain_key
        };
        let payload = self.encode();
        let hdr = crate::wire::o2net::MsgHeader::request(
            self.msg_type(),
            key,
            msg_num,
            // Payloads are at most 3952 bytes (MIG_LOCKRES), well below u16.
            payload.len() as u16,
        );
        let mut out = Vec::with_capacity(crate::wire::o2net::HEADER_LEN + payload.len());
        out.extend_from_slice(&hdr.encode());
        out.extend_from_slice(&payload);
        out
    }

    /// Whether this message travels with [`DLM_MOD_KEY`].
    pub fn uses_mod_key(&self) -> bool {
        uses_mod_key(self.msg_type())
    }

    /// The lock resource name, for messages about one resource.
    pub fn lock_name(&self) -> Option<&LockName> {
        use DlmMessage as M;
        Some(match self {
            M::MasterRequest(m) => &m.name,
            M::AssertMaster(m) => &m.name,
            M::CreateLock(m) => &m.name,
            M::ConvertLock(m) => &m.name,
            M::ProxyAst(m) => &m.name,
            M::UnlockLock(m) => &m.name,
            M::DerefLockres(m) => &m.name,
            M::MigrateRequest(m) => &m.name,
            M::MigLockres(m) => &m.name,
            M::MasterRequery(m) => &m.name,
            M::DerefLockresDone(m) => &m.name,
            _ => return None,
        })
    }
}

#[cfg(test)]
mod tests;
