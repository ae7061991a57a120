//! The pollable descriptor `o2dlm_lock_with_bast` hands out on the engine:
//! an eventfd that is readable while another node waits for the lock, just
//! as a dlmfs lock file polls readable from BAST until the down-convert.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A level-triggered "someone wants this lock" flag with a pollable fd.
#[derive(Debug)]
pub struct BastSignal {
    fd: OwnedFd,
}

impl BastSignal {
    pub fn new() -> io::Result<BastSignal> {
        // SAFETY: eventfd takes no pointers; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor owned only here.
        Ok(BastSignal {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Makes the fd readable (idempotent: the counter only matters as
    /// zero / non-zero).
    pub fn raise(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd. A full
        // counter (EAGAIN) still leaves the fd readable, which is the point.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// True while raised (a zero-timeout poll).
    #[cfg(test)]
    pub fn is_raised(&self) -> bool {
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n == 1 && pfd.revents & libc::POLLIN != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raise_is_level_triggered() {
        let s = BastSignal::new().unwrap();
        assert!(!s.is_raised());
        s.raise();
        s.raise();
        assert!(s.is_raised());
        assert!(s.is_raised(), "polling does not consume the notice");
    }
}
