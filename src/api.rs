//! The backend-neutral Rust API behind the C functions.
//!
//! `Context` validates every argument once, here, so both backends see only
//! well-formed requests, then forwards to the backend chosen at
//! initialisation. All methods take `&self`: a context may be shared by
//! threads, and each backend serialises what must be serialised.

use crate::error::{Error, Result};
use std::ffi::OsStr;
use std::os::unix::io::RawFd;
use std::path::Path;
use std::sync::Arc;

/// Lock ids must be shorter than this (ocfs2-tools' O2DLM_LOCK_ID_MAX_LEN).
pub const LOCK_ID_MAX_LEN: usize = 32;
/// Domain names must be shorter than this (O2DLM_DOMAIN_MAX_LEN).
pub const DOMAIN_MAX_LEN: usize = 255;
/// Longest dlmfs path + domain the original accepts (PATH_MAX + 1).
pub const MAX_FULL_DOMAIN_PATH: usize = libc::PATH_MAX as usize + 1;
/// Size of a lock value block.
pub const LVB_LEN: usize = 64;
/// `O2DLM_TRYLOCK`: fail instead of waiting.
pub const TRYLOCK: i32 = 0x01;
/// Every flag bit the API defines.
pub const VALID_FLAGS: i32 = TRYLOCK;

/// The two levels libo2dlm exposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockLevel {
    /// Protected read: shared with other PR holders.
    Pr,
    /// Exclusive.
    Ex,
}

impl LockLevel {
    /// Maps `enum o2dlm_lock_level` values (PRMODE = 0, EXMODE = 1).
    pub fn from_raw(level: i32) -> Result<LockLevel> {
        match level {
            0 => Ok(LockLevel::Pr),
            1 => Ok(LockLevel::Ex),
            _ => Err(Error::InvalidLockLevel),
        }
    }
}

/// Options of one lock request, decoded from the C `lockflags`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LockFlags {
    pub trylock: bool,
}

impl LockFlags {
    /// Unknown bits are refused rather than silently dropped: a caller that
    /// passes them expects a behaviour we do not have.
    pub fn from_raw(flags: i32) -> Result<LockFlags> {
        if flags & !VALID_FLAGS != 0 {
            return Err(Error::InvalidArgs);
        }
        Ok(LockFlags {
            trylock: flags & TRYLOCK != 0,
        })
    }
}

/// A blocking-AST callback; runs from `process_bast` on the caller's thread.
pub type BastCallback = Arc<dyn Fn() + Send + Sync>;

/// A validated lock id: 1..=31 bytes, no '/', not starting with '.'.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LockId(Vec<u8>);

impl LockId {
    /// Validates a user-supplied id. Names starting with '.' are reserved
    /// for the per-context private lock, as in the original.
    pub fn new(id: &[u8]) -> Result<LockId> {
        let id = Self::new_unchecked_reserved(id)?;
        if id.0.first() == Some(&b'.') {
            return Err(Error::InvalidLockName);
        }
        Ok(id)
    }

    /// Like `new` but allows the reserved '.' prefix (internal use).
    pub(crate) fn new_unchecked_reserved(id: &[u8]) -> Result<LockId> {
        if id.is_empty() || id.len() >= LOCK_ID_MAX_LEN || id.contains(&b'/') || id.contains(&0) {
            return Err(Error::InvalidLockName);
        }
        Ok(LockId(id.to_vec()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn as_os_str(&self) -> &OsStr {
        use std::os::unix::ffi::OsStrExt;
        OsStr::from_bytes(&self.0)
    }
}

impl std::fmt::Display for LockId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Checks a domain name the way both backends need it.
pub fn validate_domain(domain: &[u8]) -> Result<()> {
    if domain.len() >= DOMAIN_MAX_LEN {
        return Err(Error::NameTooLong);
    }
    // These would name a different directory than the caller meant.
    if domain.is_empty() || domain == b"." || domain == b".." || domain.contains(&b'/') {
        return Err(Error::InvalidArgs);
    }
    if domain.contains(&0) {
        return Err(Error::InvalidArgs);
    }
    Ok(())
}

/// What a backend implements. Arguments arrive validated.
pub(crate) trait Backend: Send + Sync {
    fn lock(&self, id: &LockId, level: LockLevel, flags: LockFlags) -> Result<()>;
    fn lock_with_bast(
        &self,
        id: &LockId,
        level: LockLevel,
        flags: LockFlags,
        bast: BastCallback,
    ) -> Result<RawFd>;
    /// Ok when BASTs can be delivered; the original's errors otherwise
    /// (SERVICE_UNAVAILABLE, BAST_UNSUPPORTED).
    fn check_bast_support(&self) -> Result<()>;
    fn process_bast(&self, poll_fd: RawFd);
    fn unlock(&self, id: &LockId) -> Result<()>;
    fn drop_lock(&self, id: &LockId) -> Result<()>;
    fn read_lvb(&self, id: &LockId, buf: &mut [u8]) -> Result<usize>;
    fn write_lvb(&self, id: &LockId, data: &[u8]) -> Result<usize>;
    /// Releases everything; the context is unusable afterwards.
    fn destroy(&self) -> Result<()>;
    /// Cluster messages (requests and status replies) this node has sent,
    /// when the backend can count them.
    fn messages_sent(&self) -> Option<u64> {
        None
    }
}

/// Which backend `O2DLM_BACKEND` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendChoice {
    Auto,
    Dlmfs,
    Engine,
}

impl BackendChoice {
    pub fn parse(value: &str) -> Option<BackendChoice> {
        match value.trim() {
            "" | "auto" => Some(BackendChoice::Auto),
            "dlmfs" => Some(BackendChoice::Dlmfs),
            "engine" => Some(BackendChoice::Engine),
            _ => None,
        }
    }

    /// Reads `O2DLM_BACKEND` (default auto).
    pub fn from_env() -> Result<BackendChoice> {
        match std::env::var("O2DLM_BACKEND") {
            Err(std::env::VarError::NotPresent) => Ok(BackendChoice::Auto),
            Err(std::env::VarError::NotUnicode(v)) => {
                log::error!("O2DLM_BACKEND={v:?} is not auto, dlmfs or engine");
                Err(Error::ServiceUnavailable)
            }
            Ok(v) => BackendChoice::parse(&v).ok_or_else(|| {
                log::error!("O2DLM_BACKEND={v:?} is not auto, dlmfs or engine");
                Error::ServiceUnavailable
            }),
        }
    }
}

/// One libo2dlm context: a joined domain and the locks taken through it.
pub struct Context {
    backend: Box<dyn Backend>,
    domain: String,
}

impl Context {
    /// `o2dlm_initialize`: picks the backend and joins `domain`.
    pub fn initialize(dlmfs_path: Option<&Path>, domain: &[u8]) -> Result<Context> {
        crate::logging::init_from_env();
        validate_domain(domain)?;
        if let Some(path) = dlmfs_path {
            use std::os::unix::ffi::OsStrExt;
            if path.as_os_str().as_bytes().len() + domain.len() > MAX_FULL_DOMAIN_PATH {
                return Err(Error::NameTooLong);
            }
        }
        let choice = BackendChoice::from_env()?;
        let name = String::from_utf8_lossy(domain).into_owned();
        let backend: Box<dyn Backend> = match choice {
            BackendChoice::Dlmfs => Box::new(dlmfs_backend(dlmfs_path, domain)?),
            BackendChoice::Engine => crate::engine::initialize(domain)?,
            BackendChoice::Auto => {
                let is_dlmfs = dlmfs_path.is_some_and(crate::dlmfs::is_dlmfs_mount);
                if is_dlmfs {
                    Box::new(dlmfs_backend(dlmfs_path, domain)?)
                } else if crate::config::engine_configured() {
                    log::info!("{name}: no dlmfs mount here; using the embedded engine");
                    crate::engine::initialize(domain)?
                } else {
                    // Neither is available: fail exactly as the original does.
                    Box::new(dlmfs_backend(dlmfs_path, domain)?)
                }
            }
        };
        log::info!("{name}: context ready ({choice:?})");
        Ok(Context {
            backend,
            domain: name,
        })
    }

    pub fn domain(&self) -> &str {
        &self.domain
    }

    pub fn lock(&self, id: &[u8], flags: i32, level: i32) -> Result<()> {
        let (id, level, flags) = check_lock_args(id, flags, level)?;
        self.backend.lock(&id, level, flags)
    }

    pub fn lock_with_bast(
        &self,
        id: &[u8],
        flags: i32,
        level: i32,
        bast: BastCallback,
    ) -> Result<RawFd> {
        // The original checks BAST support before the lock arguments.
        self.backend.check_bast_support()?;
        let (id, level, flags) = check_lock_args(id, flags, level)?;
        self.backend.lock_with_bast(&id, level, flags, bast)
    }

    pub fn process_bast(&self, poll_fd: RawFd) {
        self.backend.process_bast(poll_fd)
    }

    pub fn unlock(&self, id: &[u8]) -> Result<()> {
        self.backend.unlock(&LockId::new(id)?)
    }

    pub fn drop_lock(&self, id: &[u8]) -> Result<()> {
        self.backend.drop_lock(&LockId::new(id)?)
    }

    /// Reads up to `buf.len()` bytes (at most 64) of the LVB. A zero-length
    /// read reports LVB_INVALID, as a 0-byte read of a dlmfs file does.
    pub fn read_lvb(&self, id: &[u8], buf: &mut [u8]) -> Result<usize> {
        let len = buf.len().min(LVB_LEN);
        self.backend.read_lvb(&LockId::new(id)?, &mut buf[..len])
    }

    /// Writes the first `data.len()` bytes of the LVB; more than 64 is an
    /// error rather than a silent truncation.
    pub fn write_lvb(&self, id: &[u8], data: &[u8]) -> Result<usize> {
        if data.len() > LVB_LEN {
            return Err(Error::InvalidArgs);
        }
        self.backend.write_lvb(&LockId::new(id)?, data)
    }

    /// o2net messages (DLM requests and status replies) this process's
    /// engine node has sent so far; None on dlmfs, where the kernel sends.
    pub fn messages_sent(&self) -> Option<u64> {
        self.backend.messages_sent()
    }

    pub fn destroy(self) -> Result<()> {
        self.backend.destroy()
    }
}

/// `o2dlm_supports_bast` / `_stackglue`: what dlmfs publishes; without
/// dlmfs, BASTs are supported when the engine would serve this process.
pub fn supports(capability: &str) -> Result<bool> {
    crate::logging::init_from_env();
    if let Some(v) = crate::dlmfs::capability_file(capability)? {
        return Ok(v);
    }
    let engine = match BackendChoice::from_env() {
        Ok(BackendChoice::Engine) => true,
        Ok(BackendChoice::Auto) => crate::config::engine_configured(),
        Ok(BackendChoice::Dlmfs) | Err(_) => false,
    };
    Ok(engine && capability == "bast")
}

fn dlmfs_backend(path: Option<&Path>, domain: &[u8]) -> Result<crate::dlmfs::DlmfsBackend> {
    match path {
        Some(p) => crate::dlmfs::DlmfsBackend::initialize(p, domain),
        None => {
            // The original's NULL path means fs/dlm, which we do not carry.
            log::error!("no dlmfs path given and the fs/dlm stack is not supported");
            Err(Error::ServiceUnavailable)
        }
    }
}

fn check_lock_args(id: &[u8], flags: i32, level: i32) -> Result<(LockId, LockLevel, LockFlags)> {
    let id = LockId::new(id)?;
    let level = LockLevel::from_raw(level)?;
    let flags = LockFlags::from_raw(flags)?;
    Ok((id, level, flags))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_ids() {
        assert!(LockId::new(b"a").is_ok());
        assert!(LockId::new(&[b'x'; 31]).is_ok());
        assert_eq!(LockId::new(&[b'x'; 32]), Err(Error::InvalidLockName));
        assert_eq!(LockId::new(b""), Err(Error::InvalidLockName));
        assert_eq!(LockId::new(b".priv"), Err(Error::InvalidLockName));
        assert_eq!(LockId::new(b"a/b"), Err(Error::InvalidLockName));
        assert!(LockId::new_unchecked_reserved(b".0123456789abcdef").is_ok());
    }

    #[test]
    fn levels_and_flags() {
        assert_eq!(LockLevel::from_raw(0), Ok(LockLevel::Pr));
        assert_eq!(LockLevel::from_raw(1), Ok(LockLevel::Ex));
        assert_eq!(LockLevel::from_raw(2), Err(Error::InvalidLockLevel));
        assert_eq!(LockLevel::from_raw(-1), Err(Error::InvalidLockLevel));
        assert_eq!(LockFlags::from_raw(0), Ok(LockFlags { trylock: false }));
        assert_eq!(LockFlags::from_raw(1), Ok(LockFlags { trylock: true }));
        assert_eq!(LockFlags::from_raw(2), Err(Error::InvalidArgs));
    }

    #[test]
    fn domains() {
        assert!(validate_domain(b"d").is_ok());
        assert!(validate_domain(&[b'd'; 254]).is_ok());
        assert_eq!(validate_domain(&[b'd'; 255]), Err(Error::NameTooLong));
        for bad in [&b""[..], b".", b"..", b"a/b"] {
            assert_eq!(validate_domain(bad), Err(Error::InvalidArgs));
        }
    }

    #[test]
    fn backend_choice() {
        assert_eq!(BackendChoice::parse("auto"), Some(BackendChoice::Auto));
        assert_eq!(BackendChoice::parse("dlmfs"), Some(BackendChoice::Dlmfs));
        assert_eq!(BackendChoice::parse("engine"), Some(BackendChoice::Engine));
        assert_eq!(BackendChoice::parse("kernel"), None);
    }
}
