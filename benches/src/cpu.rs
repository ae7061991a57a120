//! CPU placement. Loopback round trips on this kind of machine cost ~4x more
//! when the two ends run on different cores (cross-core wake-ups), so every
//! figure and the baseline it is compared with run with the same placement.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::Command;

/// Where the two parties of a measurement run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Every process of the measurement pinned to the first allowed core.
    OneCore,
    /// The measuring side on the first core, the other party (server, echo
    /// process, second node) on the second; nodes alternate between them.
    TwoCores,
}

impl Placement {
    pub const ALL: [Placement; 2] = [Placement::OneCore, Placement::TwoCores];

    pub fn label(self) -> &'static str {
        match self {
            Placement::OneCore => "1 core",
            Placement::TwoCores => "2 cores",
        }
    }

    /// CPU of the measuring side (client, node 0).
    pub fn client_cpu(self) -> io::Result<usize> {
        nth_cpu(0)
    }

    /// CPU of the other party (server, echo process, node 1).
    pub fn server_cpu(self) -> io::Result<usize> {
        match self {
            Placement::OneCore => nth_cpu(0),
            Placement::TwoCores => nth_cpu(1),
        }
    }

    /// CPU of node `i` of a multi-node run.
    pub fn node_cpu(self, i: usize) -> io::Result<usize> {
        match self {
            Placement::OneCore => nth_cpu(0),
            Placement::TwoCores => nth_cpu(i % 2),
        }
    }

    /// Why this placement cannot be used here, if it cannot.
    pub fn unavailable_reason(self) -> Option<String> {
        match self.server_cpu() {
            Ok(_) => None,
            Err(e) => Some(e.to_string()),
        }
    }
}

/// The CPUs this process may run on, as the affinity mask it started with.
/// Read once, before any thread pins itself, so later pins do not shrink it.
pub fn allowed_cpus() -> &'static [usize] {
    use std::sync::OnceLock;
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| {
        // SAFETY: cpu_set_t is plain data; zeroed is the empty set, and
        // sched_getaffinity writes at most size_of::<cpu_set_t>() bytes.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        let rc =
            unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
        if rc != 0 {
            return vec![0];
        }
        (0..libc::CPU_SETSIZE as usize)
            // SAFETY: cpu < CPU_SETSIZE, within the set.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
            .collect()
    })
}

fn nth_cpu(n: usize) -> io::Result<usize> {
    allowed_cpus().get(n).copied().ok_or_else(|| {
        io::Error::other(format!(
            "needs {} allowed CPUs, this process has {}",
            n + 1,
            allowed_cpus().len()
        ))
    })
}

fn set_affinity(cpu: usize) -> io::Result<()> {
    // SAFETY: as above; CPU_SET only touches bit `cpu` < CPU_SETSIZE.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= libc::CPU_SETSIZE as usize {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; the set is initialised.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    allowed_cpus(); // record the original mask before narrowing it
    set_affinity(cpu)
}

/// Makes `cmd` start pinned to `cpu`: the mask is set between fork and exec,
/// so every thread the program later creates inherits it.
pub fn pin_command(cmd: &mut Command, cpu: usize) {
    // SAFETY: the closure only calls sched_setaffinity (a raw system call,
    // async-signal-safe) on stack data; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || set_affinity(cpu));
    }
}
