//! Two network namespaces joined by one veth pair, for partition tests.
//! Every address lives only on the veth ends inside our own namespaces
//! (192.0.2.0/24, TEST-NET-1), so no traffic leaves the machine; both
//! namespaces see the same files, so a heartbeat file is shared disk.
//! `cut` drops everything crossing the veth (iptables in each namespace)
//! while nodes on the same side keep talking through their loopback.
//! Dropping the guard deletes both namespaces (and with them the veth).

#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use crate::engine_support::Cluster;

/// The prefix of every address we assign.
pub const NET: &str = "192.0.2";

pub struct Netns {
    /// Namespace names, side A then side B.
    pub ns: [String; 2],
    /// The veth end in each namespace.
    dev: [String; 2],
    /// Node numbers on each side.
    pub sides: [Vec<u8>; 2],
}

/// Runs `ip`/`iptables` and returns a readable error (command, status,
/// stderr) on failure.
fn run(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("cannot run `{}`: {e}", args.join(" ")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "`{}` failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Address of node `n` (192.0.2.(n+1)).
pub fn addr(n: u8) -> String {
    format!("{NET}.{}", n + 1)
}

impl Netns {
    /// Creates the namespaces; `sides[0]` nodes get their addresses on
    /// side A's veth end, `sides[1]` on side B's. Fails with what is
    /// missing (not root, no `ip netns`, no veth) so the caller can say so.
    pub fn new(tag: &str, sides: [Vec<u8>; 2]) -> Result<Netns, String> {
        let id = std::process::id() % 100_000;
        let ns = [format!("o2r{tag}{id}a"), format!("o2r{tag}{id}b")];
        // Interface names are at most 15 bytes.
        let dev = [format!("o2v{id}a"), format!("o2v{id}b")];
        // A leftover of an earlier run with the same pid would make `add` fail.
        for n in &ns {
            let _ = run(&["ip", "netns", "del", n]);
        }
        let me = Netns {
            ns: ns.clone(),
            dev: dev.clone(),
            sides: sides.clone(),
        };
        for n in &ns {
            run(&["ip", "netns", "add", n])?;
        }
        run(&[
            "ip", "link", "add", &dev[0], "netns", &ns[0], "type", "veth", "peer", "name", &dev[1],
            "netns", &ns[1],
        ])?;
        for s in 0..2 {
            run(&["ip", "-n", &ns[s], "link", "set", "lo", "up"])?;
            for n in &sides[s] {
                let a = format!("{}/24", addr(*n));
                run(&["ip", "-n", &ns[s], "addr", "add", &a, "dev", &dev[s]])?;
            }
            run(&["ip", "-n", &ns[s], "link", "set", &dev[s], "up"])?;
        }
        // iptables must work in there, or `cut` could not partition.
        for s in 0..2 {
            run(&["ip", "netns", "exec", &ns[s], "iptables", "-S"])?;
        }
        Ok(me)
    }

    /// Which side node `n` is on.
    pub fn side_of(&self, n: u8) -> usize {
        if self.sides[0].contains(&n) {
            0
        } else {
            1
        }
    }

    /// The wrapper that runs a program in node `n`'s namespace.
    pub fn wrap(&self, n: u8) -> [&str; 4] {
        ["ip", "netns", "exec", &self.ns[self.side_of(n)]]
    }

    /// Drops every packet crossing the veth, both ways, on both sides.
    pub fn cut(&self) -> Result<(), String> {
        for s in 0..2 {
            let ns = &self.ns[s];
            let dev = &self.dev[s];
            run(&[
                "ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", dev, "-j", "DROP",
            ])?;
            run(&[
                "ip", "netns", "exec", ns, "iptables", "-A", "OUTPUT", "-o", dev, "-j", "DROP",
            ])?;
        }
        Ok(())
    }

    /// Removes the rules `cut` added.
    pub fn heal(&self) -> Result<(), String> {
        for ns in &self.ns {
            run(&["ip", "netns", "exec", ns, "iptables", "-F"])?;
        }
        Ok(())
    }

    /// A cluster.conf of `count` nodes at `addr(n)`:`port` (and an empty
    /// heartbeat file) in a fresh directory.
    pub fn cluster(&self, tag: &str, count: u8, port: u16) -> Cluster {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("engine-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cname = format!("e{tag}");
        let mut text = format!("cluster:\n\tnode_count = {count}\n\tname = {cname}\n\n");
        for n in 0..count {
            text.push_str(&format!(
                "node:\n\tip_port = {port}\n\tip_address = {}\n\tnumber = {n}\n\tname = n{n}\n\tcluster = {cname}\n\n",
                addr(n)
            ));
        }
        let conf = dir.join("cluster.conf");
        std::fs::write(&conf, text).unwrap();
        let hb = dir.join("heartbeat");
        std::fs::write(&hb, b"").unwrap();
        Cluster {
            dir,
            conf,
            hb,
            ip_base: 0,
            port,
        }
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.ns {
            if let Err(e) = run(&["ip", "netns", "del", n]) {
                eprintln!("netns cleanup: {e}");
            }
        }
    }
}
