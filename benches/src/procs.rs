//! Helper processes: temporary directories, free loopback ports, and servers
//! that are always stopped (even when a measurement fails part-way).

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// A directory under the system temp dir, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> io::Result<TempDir> {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("o2dlm-bench-{}-{tag}-{n}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(TempDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A TCP port that nothing listens on at 127.0.0.1 right now, at or above
/// 20000 (ports below are left to the shared tools). The kernel picks from
/// its ephemeral range, which is above 32768 on Linux.
pub fn free_port() -> io::Result<u16> {
    for _ in 0..64 {
        let l = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))?;
        let port = l.local_addr()?.port();
        if port >= 20000 {
            return Ok(port);
        }
    }
    Err(io::Error::other("no free port at or above 20000"))
}

/// A port free on every one of `ips` at once (engine nodes share a port
/// number on different 127.0.0.x addresses).
pub fn free_port_on_all(ips: &[Ipv4Addr]) -> io::Result<u16> {
    'next: for _ in 0..64 {
        let port = free_port()?;
        let mut held = Vec::new();
        for ip in ips {
            match TcpListener::bind(SocketAddrV4::new(*ip, port)) {
                Ok(l) => held.push(l),
                Err(_) => continue 'next,
            }
        }
        return Ok(port);
    }
    Err(io::Error::other("no port free on every node address"))
}

/// A child process that is killed and reaped when dropped.
pub struct Server {
    pub name: &'static str,
    child: Option<Child>,
}

impl Server {
    pub fn new(name: &'static str, child: Child) -> Server {
        Server {
            name,
            child: Some(child),
        }
    }

    /// Err with the exit status if the process has already ended.
    pub fn check_running(&mut self) -> Result<(), String> {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(Some(status))) => Err(format!("{} exited: {status}", self.name)),
            _ => Ok(()),
        }
    }

    /// Asks politely (SIGTERM), then kills after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = i32::try_from(child.id()) {
            // SAFETY: signalling our own child, which has not been reaped
            // yet (we hold its Child), so the pid cannot have been reused.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let end = Instant::now() + grace;
        while Instant::now() < end {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(3));
    }
}

/// Retries `connect` until it works or `timeout` passes.
pub fn connect_retry(addr: SocketAddrV4, timeout: Duration) -> io::Result<TcpStream> {
    let end = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr.into(), Duration::from_millis(500)) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) if Instant::now() >= end => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// Whether an executable is on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| p.is_file())
}
