//! The dlmfs backend: the same system calls, in the same order, as
//! ocfs2-tools' "classic" libo2dlm over a mounted `ocfs2_dlmfs`.
//!
//! mkdir joins the domain, open(O_RDONLY / O_RDWR) takes PR / EX (with
//! O_NONBLOCK as a trylock that fails with ETXTBSY), read/write move the
//! 64-byte LVB, close unlocks (the kernel keeps the lock cached), unlink
//! drops the cached lock, and poll reports a pending BAST.
//!
//! Differences from the original, all deliberate: the context is safe to use
//! from several threads, lock files are opened O_CLOEXEC (so an exec'd child
//! cannot keep a lock alive behind our back), and EINTR from a blocking open
//! is retried instead of being reported as a locking failure.

use crate::api::{Backend, BastCallback, LockFlags, LockId, LockLevel};
use crate::error::{Error, Result};
use once_cell::sync::OnceCell;
use std::collections::HashMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::io::RawFd;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// statfs `f_type` of an ocfs2_dlmfs mount.
pub const DLMFS_MAGIC: i64 = 0x76a9_f425;
/// Where dlmfs publishes what it can do ("bast stackglue").
pub const CAPABILITIES_PATH: &str = "/sys/module/ocfs2_dlmfs/parameters/capabilities";
const DOMAIN_DIR_MODE: libc::mode_t = 0o755;
const LOCK_FILE_MODE: libc::c_uint = 0o664;

/// True when `path` is a directory on an ocfs2_dlmfs mount.
pub fn is_dlmfs_mount(path: &Path) -> bool {
    check_dlmfs_root(path).is_ok()
}

fn cstring(path: &Path) -> Result<CString> {
    // Paths built from validated names contain no NUL; be defensive anyway.
    CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::InvalidArgs)
}

fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The original's root check, with its error for each failing step.
fn check_dlmfs_root(path: &Path) -> Result<()> {
    let cpath = cstring(path)?;
    // SAFETY: cpath is a valid NUL-terminated string for the whole call.
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(Error::OpenDlmDir);
    }
    // SAFETY: fd was just returned by open and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: zeroed stat/statfs are valid out-buffers for fstat/fstatfs,
    // and fd stays open while they run.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(Error::Statfs);
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFDIR {
        return Err(Error::NoFsDir);
    }
    // SAFETY: as above.
    let mut sfs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &mut sfs) } != 0 {
        return Err(Error::Statfs);
    }
    if sfs.f_type as i64 != DLMFS_MAGIC {
        return Err(Error::NoFs);
    }
    Ok(())
}

/// Reads a dlmfs capability: `Ok(false)` when dlmfs publishes none (no
/// file), an error when the file exists but cannot be read.
pub fn capability(name: &str) -> Result<bool> {
    Ok(capability_file(name)?.unwrap_or(false))
}

/// A dlmfs capability: `Ok(None)` when dlmfs publishes no capabilities
/// file (not loaded, or too old), an error when it cannot be read.
pub fn capability_file(name: &str) -> Result<Option<bool>> {
    // A test hook: lets the test suites exercise the parsing without dlmfs.
    let path = std::env::var_os("O2DLM_DLMFS_CAPABILITIES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(CAPABILITIES_PATH));
    match std::fs::read(&path) {
        Ok(bytes) => Ok(Some(has_capability(&bytes, name))),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => {
            log::error!("cannot read {}: {e}", path.display());
            Err(Error::ServiceUnavailable)
        }
    }
}

/// A capability counts when it is a whole word of the first line.
fn has_capability(contents: &[u8], name: &str) -> bool {
    let first_line = contents.split(|&b| b == b'\n').next().unwrap_or(&[]);
    first_line
        .split(|&b| b == b' ')
        .any(|word| word == name.as_bytes())
}

fn random_u64() -> Result<u64> {
    let mut buf = [0u8; 8];
    let mut file = std::fs::File::open("/dev/urandom").map_err(|_| Error::Random)?;
    io::Read::read_exact(&mut file, &mut buf).map_err(|_| Error::Random)?;
    Ok(u64::from_ne_bytes(buf))
}

enum Slot {
    /// Another thread of this context is inside open(); the id is taken.
    Acquiring,
    Held(OwnedFd),
}

#[derive(Default)]
struct State {
    locks: HashMap<LockId, Slot>,
    basts: HashMap<RawFd, BastCallback>,
    private_lock: Option<OwnedFd>,
}

pub struct DlmfsBackend {
    domain_dir: PathBuf,
    state: Mutex<State>,
    supports_bast: OnceCell<bool>,
}

impl DlmfsBackend {
    /// Joins (mkdir) or reuses the domain directory and takes the private
    /// PR lock that keeps other processes from tearing the domain down.
    pub fn initialize(root: &Path, domain: &[u8]) -> Result<DlmfsBackend> {
        check_dlmfs_root(root)?;
        let private =
            LockId::new_unchecked_reserved(format!(".{:016x}", random_u64()?).as_bytes())?;
        let domain_dir = root.join(std::ffi::OsStr::from_bytes(domain));
        let cdir = cstring(&domain_dir)?;
        let mut created = false;
        match std::fs::metadata(&domain_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(Error::BadDomainDir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                log::debug!("mkdir {} (joins the domain)", domain_dir.display());
                // SAFETY: cdir is a valid NUL-terminated path.
                if unsafe { libc::mkdir(cdir.as_ptr(), DOMAIN_DIR_MODE) } != 0 {
                    log::error!(
                        "mkdir {}: {}",
                        domain_dir.display(),
                        io::Error::last_os_error()
                    );
                    return Err(Error::DomainCreate);
                }
                created = true;
            }
            Err(_) => return Err(Error::BadDomainDir),
        }
        let backend = DlmfsBackend {
            domain_dir,
            state: Mutex::new(State::default()),
            supports_bast: OnceCell::new(),
        };
        match backend.open_lock(&private, LockLevel::Pr, LockFlags::default()) {
            Ok(fd) => {
                backend.state().private_lock = Some(fd);
                Ok(backend)
            }
            Err(e) => {
                if created {
                    // Best effort, as the original: leave no empty domain behind.
                    // SAFETY: cdir is a valid NUL-terminated path.
                    unsafe { libc::rmdir(cdir.as_ptr()) };
                }
                Err(e)
            }
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_path(&self, id: &LockId) -> Result<CString> {
        let path = self.domain_dir.join(id.as_os_str());
        if path.as_os_str().len() > libc::PATH_MAX as usize {
            return Err(Error::NameTooLong);
        }
        cstring(&path)
    }

    /// open(2) of the lock file: this is where dlmfs takes the lock.
    fn open_lock(&self, id: &LockId, level: LockLevel, flags: LockFlags) -> Result<OwnedFd> {
        let path = self.lock_path(id)?;
        let mut oflags = match level {
            LockLevel::Pr => libc::O_RDONLY,
            LockLevel::Ex => libc::O_RDWR,
        } | libc::O_CREAT
            | libc::O_CLOEXEC;
        if flags.trylock {
            oflags |= libc::O_NONBLOCK;
        }
        loop {
            // SAFETY: path is a valid NUL-terminated string; the mode is
            // passed as the variadic third argument open(2) expects.
            let fd = unsafe { libc::open(path.as_ptr(), oflags, LOCK_FILE_MODE) };
            if fd >= 0 {
                // SAFETY: fd is fresh from open and owned only here.
                return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
            }
            let err = errno();
            match err {
                libc::EINTR => continue,
                libc::ETXTBSY if flags.trylock => return Err(Error::TrylockFailed),
                _ => {
                    log::warn!(
                        "open {} ({level:?}): {}",
                        self.domain_dir.join(id.as_os_str()).display(),
                        io::Error::from_raw_os_error(err)
                    );
                    return Err(Error::Locking);
                }
            }
        }
    }

    fn take_lock(&self, id: &LockId, level: LockLevel, flags: LockFlags) -> Result<RawFd> {
        {
            let mut st = self.state();
            if st.locks.contains_key(id) {
                return Err(Error::RecursiveLock);
            }
            st.locks.insert(id.clone(), Slot::Acquiring);
        }
        // The open may block for as long as another node holds the lock, so
        // it runs without the context mutex.
        let opened = self.open_lock(id, level, flags);
        let mut st = self.state();
        match opened {
            Ok(fd) => {
                let raw = fd.as_raw_fd();
                st.locks.insert(id.clone(), Slot::Held(fd));
                log::debug!("{id}: granted {level:?} (fd {raw})");
                Ok(raw)
            }
            Err(e) => {
                st.locks.remove(id);
                Err(e)
            }
        }
    }

    /// Runs `f` on the fd of a held lock, under the context mutex so the fd
    /// cannot be closed (and its number reused) meanwhile.
    fn with_held_fd<T>(&self, id: &LockId, f: impl FnOnce(RawFd) -> Result<T>) -> Result<T> {
        let st = self.state();
        match st.locks.get(id) {
            Some(Slot::Held(fd)) => f(fd.as_raw_fd()),
            _ => Err(Error::UnknownLock),
        }
    }
}

fn seek_start(fd: RawFd) -> Result<()> {
    // SAFETY: lseek on an fd we own; no memory is involved.
    if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } < 0 {
        return Err(Error::Seek);
    }
    Ok(())
}

impl Backend for DlmfsBackend {
    fn lock(&self, id: &LockId, level: LockLevel, flags: LockFlags) -> Result<()> {
        self.take_lock(id, level, flags).map(|_| ())
    }

    fn lock_with_bast(
        &self,
        id: &LockId,
        level: LockLevel,
        flags: LockFlags,
        bast: BastCallback,
    ) -> Result<RawFd> {
        self.check_bast_support()?;
        let fd = self.take_lock(id, level, flags)?;
        self.state().basts.insert(fd, bast);
        Ok(fd)
    }

    fn check_bast_support(&self) -> Result<()> {
        // Cached per context like the original: one read of the file.
        let supported = *self.supports_bast.get_or_try_init(|| capability("bast"))?;
        if supported {
            Ok(())
        } else {
            Err(Error::BastUnsupported)
        }
    }

    fn process_bast(&self, poll_fd: RawFd) {
        let callback = self.state().basts.get(&poll_fd).cloned();
        // Called without the mutex: the callback usually unlocks.
        if let Some(cb) = callback {
            cb();
        }
    }

    fn unlock(&self, id: &LockId) -> Result<()> {
        let mut st = self.state();
        match st.locks.remove(id) {
            Some(Slot::Held(fd)) => {
                st.basts.remove(&fd.as_raw_fd());
                // close(2) is the unlock; dlmfs keeps the lock cached.
                drop(fd);
                log::debug!("{id}: unlocked");
                Ok(())
            }
            Some(Slot::Acquiring) => {
                // Still being acquired by another thread: not ours to release.
                st.locks.insert(id.clone(), Slot::Acquiring);
                Err(Error::UnknownLock)
            }
            None => Err(Error::UnknownLock),
        }
    }

    fn drop_lock(&self, id: &LockId) -> Result<()> {
        if self.state().locks.contains_key(id) {
            return Err(Error::BusyLock);
        }
        let path = self.lock_path(id)?;
        // SAFETY: path is a valid NUL-terminated string.
        if unsafe { libc::unlink(path.as_ptr()) } != 0 {
            return Err(if errno() == libc::EBUSY {
                Error::BusyLock
            } else {
                Error::Unlink
            });
        }
        Ok(())
    }

    fn read_lvb(&self, id: &LockId, buf: &mut [u8]) -> Result<usize> {
        self.with_held_fd(id, |fd| {
            seek_start(fd)?;
            // SAFETY: buf is valid for buf.len() writable bytes.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            match n {
                n if n < 0 => Err(Error::LvbRead),
                0 => Err(Error::LvbInvalid),
                n => Ok(n as usize),
            }
        })
    }

    fn write_lvb(&self, id: &LockId, data: &[u8]) -> Result<usize> {
        self.with_held_fd(id, |fd| {
            seek_start(fd)?;
            // SAFETY: data is valid for data.len() readable bytes.
            let n = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
            if n < 0 {
                return Err(Error::LvbWrite);
            }
            Ok(n as usize)
        })
    }

    fn destroy(&self) -> Result<()> {
        {
            let mut st = self.state();
            st.basts.clear();
            // Closing every fd releases every lock, the private one last.
            st.locks.clear();
            st.private_lock = None;
        }
        let entries = std::fs::read_dir(&self.domain_dir).map_err(|_| Error::DomainDir)?;
        for entry in entries {
            let entry = entry.map_err(|_| Error::DomainDir)?;
            let path = cstring(&entry.path())?;
            // SAFETY: path is a valid NUL-terminated string.
            if unsafe { libc::unlink(path.as_ptr()) } != 0 && errno() != libc::EBUSY {
                // EBUSY: another process of this node still holds it.
                return Err(Error::Unlink);
            }
        }
        let dir = cstring(&self.domain_dir)?;
        // SAFETY: dir is a valid NUL-terminated string.
        if unsafe { libc::rmdir(dir.as_ptr()) } != 0 && errno() != libc::ENOTEMPTY {
            return Err(Error::DomainDestroy);
        }
        log::debug!("left {}", self.domain_dir.display());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_words() {
        assert!(has_capability(b"bast stackglue\n", "bast"));
        assert!(has_capability(b"bast stackglue\n", "stackglue"));
        assert!(!has_capability(b"bastion\n", "bast"));
        assert!(!has_capability(b"\nbast\n", "bast"));
        assert!(!has_capability(b"", "bast"));
    }

    #[test]
    fn root_checks_give_the_original_errors() {
        let tmp = std::env::temp_dir();
        assert_eq!(check_dlmfs_root(&tmp), Err(Error::NoFs));
        assert_eq!(
            check_dlmfs_root(Path::new("/nonexistent/o2dlm")),
            Err(Error::OpenDlmDir)
        );
        let file = tmp.join(format!("o2dlm-root-check-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(check_dlmfs_root(&file), Err(Error::NoFsDir));
        std::fs::remove_file(&file).unwrap();
        assert!(!is_dlmfs_mount(&tmp));
    }
}
