//! What one simulated run does: the cluster shape, the client operations
//! and the faults, all generated from one seed. A schedule can be written
//! out as text and read back, so a (shrunk) failing run replays exactly.

use super::rng::Rng;
use crate::dlm::Mode;
use std::fmt;

/// Which fault classes a schedule may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FaultSet {
    /// Random message delays (per-connection FIFO is always kept).
    pub delays: bool,
    /// The network between two nodes is cut for a while: the connection
    /// is lost (queued messages and unsent replies with it) and, as o2net
    /// does, not re-made while both heartbeat; the quorum rule fences one
    /// side, which restarts, and then they reconnect; the survivors
    /// recover its locks.
    pub links: bool,
    /// Short pauses of a whole node (no timers, no heartbeat, no delivery),
    /// shorter than the heartbeat dead time.
    pub pauses: bool,
    /// Node crashes with restart, and pauses long enough to be declared
    /// dead; the survivors recover its locks.
    pub crashes: bool,
}

impl FaultSet {
    pub const NONE: FaultSet = FaultSet {
        delays: false,
        links: false,
        pauses: false,
        crashes: false,
    };
    /// Every fault class (the DLM recovers from node deaths).
    pub const DEFAULT: FaultSet = FaultSet {
        delays: true,
        links: true,
        pauses: true,
        crashes: true,
    };

    /// Parses "none", "all", or a comma list of delays,links,pauses,crashes.
    pub fn parse(s: &str) -> Result<FaultSet, String> {
        let mut f = FaultSet::NONE;
        for w in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            match w {
                "none" => {}
                "all" => {
                    f = FaultSet {
                        delays: true,
                        links: true,
                        pauses: true,
                        crashes: true,
                    }
                }
                "default" => f = FaultSet::DEFAULT,
                "delays" | "delay" => f.delays = true,
                "links" | "link" => f.links = true,
                "pauses" | "pause" => f.pauses = true,
                "crashes" | "crash" => f.crashes = true,
                other => return Err(format!("unknown fault class '{other}'")),
            }
        }
        Ok(f)
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut v = Vec::new();
        if self.delays {
            v.push("delays");
        }
        if self.links {
            v.push("links");
        }
        if self.pauses {
            v.push("pauses");
        }
        if self.crashes {
            v.push("crashes");
        }
        if v.is_empty() {
            v.push("none");
        }
        write!(f, "{}", v.join(","))
    }
}

/// Deliberately broken variants of the simulated node glue, to show that
/// the checker catches them. Never set outside tests and demonstrations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broken {
    /// A cluster trylock refusal (NOTQUEUED) is turned into a grant for the
    /// local waiter: two incompatible holders.
    GrantOnRefusal,
    /// An UNLOCK_LOCK request is dropped and a fake success returned to the
    /// sender: the master keeps the lock, waiters starve.
    DropUnlock,
    /// Down-converts and releases from EX write no LVB back.
    LoseLvb,
    /// Not a made-up bug: the engine's own handling (runtime.rs
    /// `cluster_op`) of a cancel the DLM refuses because the conversion it
    /// targets was already granted (its AST still queued): it fails the
    /// local waiter and issues the next cluster op on top of the pending
    /// grant. This simulator found it; the default glue ignores the
    /// refusal instead (the queued AST completes the request).
    EngineCancel,
}

impl Broken {
    pub fn parse(s: &str) -> Result<Broken, String> {
        match s {
            "grant" => Ok(Broken::GrantOnRefusal),
            "unlock" => Ok(Broken::DropUnlock),
            "lvb" => Ok(Broken::LoseLvb),
            "engine-cancel" => Ok(Broken::EngineCancel),
            o => Err(format!(
                "unknown broken variant '{o}' (grant, unlock, lvb, engine-cancel)"
            )),
        }
    }

    fn word(self) -> &'static str {
        match self {
            Broken::GrantOnRefusal => "grant",
            Broken::DropUnlock => "unlock",
            Broken::LoseLvb => "lvb",
            Broken::EngineCancel => "engine-cancel",
        }
    }
}

/// The knobs of schedule generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimConfig {
    /// Node count is drawn from `nodes_min..=nodes_max` (2..=8).
    pub nodes_min: u8,
    pub nodes_max: u8,
    /// Domains every node joins (1..=2).
    pub domains: u8,
    /// Lock names per domain (few, so requests collide).
    pub names: u8,
    /// Clients per node going through `LocalLock` (the engine's path).
    pub cache_clients: u8,
    /// Clients per node driving the `Dlm` lock API directly.
    pub direct_clients: u8,
    /// Operations per schedule.
    pub ops: u32,
    /// Most faults per schedule.
    pub max_faults: u8,
    pub faults: FaultSet,
    pub broken: Option<Broken>,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes_min: 2,
            nodes_max: 4,
            domains: 1,
            names: 3,
            cache_clients: 2,
            direct_clients: 1,
            ops: 40,
            max_faults: 3,
            faults: FaultSet::DEFAULT,
            broken: None,
        }
    }
}

/// One client action. Actions do not depend on state when generated; one
/// that does not fit the client's state when it comes up is skipped, so
/// removing actions (shrinking) never makes a schedule invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Lock {
        dom: u8,
        name: u8,
        mode: Mode,
        try_: bool,
    },
    /// Direct clients only: convert the held lock.
    Convert { mode: Mode, try_: bool },
    /// Release the held lock (a waiting cache client gives up).
    Unlock,
    /// Write a fresh value into the LVB (needs EX).
    WriteLvb,
    /// Read and check the LVB (needs PR or EX).
    ReadLvb,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// The connection between `a` and `b` breaks for `ms`.
    Link { a: u8, b: u8, ms: u32 },
    /// Every connection of `node` is cut for `ms` (a partition of one).
    Isolate { node: u8, ms: u32 },
    /// Node stops for `ms` (a SIGSTOP or a VM stall).
    Pause { node: u8, ms: u32 },
    /// Node dies (process killed) and starts again after `ms`.
    Crash { node: u8, ms: u32 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Op {
        at: u32,
        node: u8,
        client: u8,
        act: Act,
    },
    Fault {
        at: u32,
        kind: FaultKind,
    },
}

impl Item {
    pub fn at(&self) -> u32 {
        match self {
            Item::Op { at, .. } | Item::Fault { at, .. } => *at,
        }
    }

    /// When the item's effect is over (a fault's end).
    pub fn end(&self) -> u32 {
        match self {
            Item::Op { at, .. } => *at,
            Item::Fault { at, kind } => {
                at + match kind {
                    FaultKind::Link { ms, .. }
                    | FaultKind::Isolate { ms, .. }
                    | FaultKind::Pause { ms, .. }
                    | FaultKind::Crash { ms, .. } => *ms,
                }
            }
        }
    }
}

/// Simulated time (ms) at which clients start: the cluster has formed.
pub const START_MS: u32 = 12_000;

/// A complete run description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub seed: u64,
    pub nodes: u8,
    pub cfg: SimConfig,
    /// Sorted by time.
    pub items: Vec<Item>,
}

fn mode_word(m: Mode) -> &'static str {
    match m {
        Mode::Nl => "nl",
        Mode::Pr => "pr",
        Mode::Ex => "ex",
    }
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    match s {
        "nl" => Ok(Mode::Nl),
        "pr" => Ok(Mode::Pr),
        "ex" => Ok(Mode::Ex),
        o => Err(format!("bad mode '{o}'")),
    }
}

impl Schedule {
    /// The schedule of `seed` under `cfg`.
    pub fn generate(seed: u64, cfg: &SimConfig) -> Schedule {
        let mut r = Rng::stream(seed, 1);
        let lo = cfg.nodes_min.clamp(2, 8);
        let hi = cfg.nodes_max.clamp(lo, 8);
        let nodes = r.range(u64::from(lo), u64::from(hi)) as u8;
        let clients = cfg.cache_clients + cfg.direct_clients;
        let mut items = Vec::new();
        let mut t = START_MS;
        for _ in 0..cfg.ops {
            t += if r.chance(30) {
                r.below(5) as u32
            } else {
                r.below(400) as u32
            };
            let node = r.below(u64::from(nodes)) as u8;
            let client = r.below(u64::from(clients.max(1))) as u8;
            let direct = client >= cfg.cache_clients;
            let mode = match r.below(100) {
                0..=44 => Mode::Pr,
                45..=89 => Mode::Ex,
                _ => Mode::Nl,
            };
            let try_ = r.chance(25);
            let act = match r.below(100) {
                0..=34 => Act::Lock {
                    dom: r.below(u64::from(cfg.domains.max(1))) as u8,
                    name: r.below(u64::from(cfg.names.max(1))) as u8,
                    mode,
                    try_,
                },
                35..=49 if direct => Act::Convert { mode, try_ },
                35..=49 => Act::Lock {
                    dom: r.below(u64::from(cfg.domains.max(1))) as u8,
                    name: r.below(u64::from(cfg.names.max(1))) as u8,
                    mode,
                    try_,
                },
                50..=74 => Act::Unlock,
                75..=86 => Act::WriteLvb,
                _ => Act::ReadLvb,
            };
            items.push(Item::Op {
                at: t,
                node,
                client,
                act,
            });
        }
        let span = (t - START_MS).max(1);
        let f = cfg.faults;
        let mut kinds = Vec::new();
        if f.links {
            kinds.push(0);
        }
        if f.pauses {
            kinds.push(1);
        }
        if f.crashes {
            kinds.push(2);
            kinds.push(3);
        }
        if !kinds.is_empty() {
            let n = r.range(0, u64::from(cfg.max_faults));
            for _ in 0..n {
                let at = START_MS + r.below(u64::from(span)) as u32;
                let node = r.below(u64::from(nodes)) as u8;
                let kind = match kinds[r.below(kinds.len() as u64) as usize] {
                    // With three nodes or more a single broken link stalls
                    // o2net for good (no reconnect, and the quorum rule
                    // fences nobody): cut a whole node off instead.
                    0 if nodes > 2 => FaultKind::Isolate {
                        node,
                        ms: r.range(20, 3000) as u32,
                    },
                    0 => {
                        let mut b = r.below(u64::from(nodes) - 1) as u8;
                        if b >= node {
                            b += 1;
                        }
                        FaultKind::Link {
                            a: node.min(b),
                            b: node.max(b),
                            ms: r.range(20, 3000) as u32,
                        }
                    }
                    1 => FaultKind::Pause {
                        node,
                        ms: r.range(20, 3000) as u32,
                    },
                    2 => FaultKind::Crash {
                        node,
                        ms: r.range(500, 15_000) as u32,
                    },
                    _ => FaultKind::Pause {
                        node,
                        ms: r.range(3000, 14_000) as u32,
                    },
                };
                items.push(Item::Fault { at, kind });
            }
        }
        items.sort_by_key(|i| i.at());
        Schedule {
            seed,
            nodes,
            cfg: *cfg,
            items,
        }
    }

    /// The text form: a header line, then one line per item.
    pub fn to_text(&self) -> String {
        let c = &self.cfg;
        let mut s = format!(
            "o2dlm-sim seed={:#x} nodes={} domains={} names={} cache_clients={} direct_clients={} faults={}{}\n",
            self.seed,
            self.nodes,
            c.domains,
            c.names,
            c.cache_clients,
            c.direct_clients,
            c.faults,
            c.broken.map_or(String::new(), |b| format!(" broken={}", b.word())),
        );
        for i in &self.items {
            s.push_str(&item_text(i));
            s.push('\n');
        }
        s
    }

    /// Reads the text form back.
    pub fn from_text(text: &str) -> Result<Schedule, String> {
        let mut lines = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'));
        let head = lines.next().ok_or("empty schedule")?;
        let mut words = head.split_whitespace();
        if words.next() != Some("o2dlm-sim") {
            return Err("not an o2dlm-sim schedule (first line)".into());
        }
        let mut cfg = SimConfig {
            faults: FaultSet::NONE,
            ..SimConfig::default()
        };
        let (mut seed, mut nodes) = (None, None);
        for w in words {
            let (k, v) = w.split_once('=').ok_or(format!("bad header word '{w}'"))?;
            let num = |v: &str| -> Result<u64, String> {
                let r = match v.strip_prefix("0x") {
                    Some(h) => u64::from_str_radix(h, 16),
                    None => v.parse(),
                };
                r.map_err(|_| format!("bad number '{v}'"))
            };
            match k {
                "seed" => seed = Some(num(v)?),
                "nodes" => nodes = Some(num(v)?.clamp(2, 8) as u8),
                "domains" => cfg.domains = num(v)?.clamp(1, 2) as u8,
                "names" => cfg.names = num(v)?.clamp(1, 16) as u8,
                "cache_clients" => cfg.cache_clients = num(v)?.min(8) as u8,
                "direct_clients" => cfg.direct_clients = num(v)?.min(8) as u8,
                "faults" => cfg.faults = FaultSet::parse(v)?,
                "broken" => cfg.broken = Some(Broken::parse(v)?),
                _ => return Err(format!("unknown header key '{k}'")),
            }
        }
        let nodes = nodes.ok_or("header lacks nodes=")?;
        cfg.nodes_min = nodes;
        cfg.nodes_max = nodes;
        let mut items = Vec::new();
        for l in lines {
            items.push(parse_item(l, nodes)?);
        }
        cfg.ops = items
            .iter()
            .filter(|i| matches!(i, Item::Op { .. }))
            .count() as u32;
        items.sort_by_key(|i| i.at());
        Ok(Schedule {
            seed: seed.ok_or("header lacks seed=")?,
            nodes,
            cfg,
            items,
        })
    }
}

pub fn item_text(i: &Item) -> String {
    match *i {
        Item::Op {
            at,
            node,
            client,
            act,
        } => {
            let a = match act {
                Act::Lock {
                    dom,
                    name,
                    mode,
                    try_,
                } => format!(
                    "lock d{dom} s{name} {}{}",
                    mode_word(mode),
                    if try_ { " try" } else { "" }
                ),
                Act::Convert { mode, try_ } => {
                    format!(
                        "convert {}{}",
                        mode_word(mode),
                        if try_ { " try" } else { "" }
                    )
                }
                Act::Unlock => "unlock".into(),
                Act::WriteLvb => "write-lvb".into(),
                Act::ReadLvb => "read-lvb".into(),
            };
            format!("{at} op n{node} c{client} {a}")
        }
        Item::Fault { at, kind } => match kind {
            FaultKind::Link { a, b, ms } => format!("{at} fault link n{a} n{b} {ms}ms"),
            FaultKind::Isolate { node, ms } => format!("{at} fault isolate n{node} {ms}ms"),
            FaultKind::Pause { node, ms } => format!("{at} fault pause n{node} {ms}ms"),
            FaultKind::Crash { node, ms } => format!("{at} fault crash n{node} {ms}ms"),
        },
    }
}

fn parse_item(l: &str, nodes: u8) -> Result<Item, String> {
    let w: Vec<&str> = l.split_whitespace().collect();
    let bad = || format!("bad line '{l}'");
    let num = |s: &str, prefix: &str| -> Result<u32, String> {
        s.strip_prefix(prefix)
            .and_then(|x| x.parse().ok())
            .ok_or_else(bad)
    };
    let node = |s: &str| -> Result<u8, String> {
        let n = num(s, "n")?;
        if n >= u32::from(nodes) {
            return Err(format!("node {n} out of range in '{l}'"));
        }
        Ok(n as u8)
    };
    if w.len() < 3 {
        return Err(bad());
    }
    let at: u32 = w[0].parse().map_err(|_| bad())?;
    match w[1] {
        "op" => {
            if w.len() < 4 {
                return Err(bad());
            }
            let n = node(w[2])?;
            let client = num(w[3], "c")? as u8;
            let try_ = w.last() == Some(&"try");
            let act = match w.get(4).copied() {
                Some("lock") if w.len() >= 8 => Act::Lock {
                    dom: num(w[5], "d")? as u8,
                    name: num(w[6], "s")? as u8,
                    mode: parse_mode(w[7])?,
                    try_,
                },
                Some("convert") if w.len() >= 6 => Act::Convert {
                    mode: parse_mode(w[5])?,
                    try_,
                },
                Some("unlock") => Act::Unlock,
                Some("write-lvb") => Act::WriteLvb,
                Some("read-lvb") => Act::ReadLvb,
                _ => return Err(bad()),
            };
            Ok(Item::Op {
                at,
                node: n,
                client,
                act,
            })
        }
        "fault" => {
            let ms = |s: &str| -> Result<u32, String> {
                s.strip_suffix("ms")
                    .and_then(|x| x.parse().ok())
                    .ok_or_else(bad)
            };
            let kind = match (w[2], w.len()) {
                ("link", 6) => FaultKind::Link {
                    a: node(w[3])?,
                    b: node(w[4])?,
                    ms: ms(w[5])?,
                },
                ("isolate", 5) => FaultKind::Isolate {
                    node: node(w[3])?,
                    ms: ms(w[4])?,
                },
                ("pause", 5) => FaultKind::Pause {
                    node: node(w[3])?,
                    ms: ms(w[4])?,
                },
                ("crash", 5) => FaultKind::Crash {
                    node: node(w[3])?,
                    ms: ms(w[4])?,
                },
                _ => return Err(bad()),
            };
            Ok(Item::Fault { at, kind })
        }
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip() {
        let cfg = SimConfig {
            faults: FaultSet::parse("all").unwrap(),
            direct_clients: 2,
            domains: 2,
            ..SimConfig::default()
        };
        for seed in 0..50 {
            let s = Schedule::generate(seed, &cfg);
            let back = Schedule::from_text(&s.to_text()).unwrap();
            assert_eq!(back.items, s.items, "seed {seed}");
            assert_eq!(back.nodes, s.nodes);
            assert_eq!(back.seed, s.seed);
            assert_eq!(back.cfg.faults, s.cfg.faults);
        }
    }
}
