//! o2hb liveness state machine (sans-IO).
//!
//! Follows the kernel's per-slot rules (fs/ocfs2/cluster/heartbeat.c, as
//! restated in the o2hb reference §5-7) so that this node and kernel nodes
//! reach the same verdicts from the same disk contents:
//!
//! - a slot becomes live after two observed changes of its `seq`;
//! - a live slot goes dead after `dead_threshold` unchanged samples, or at
//!   once when its generation changes (restart, or the generation-0 block a
//!   clean leaver writes);
//! - a slot with a bad checksum is ignored while not live and counts as a
//!   missed sample while live;
//! - before each write our own slot must still hold what we wrote last time,
//!   otherwise somebody else is writing it.
//!
//! The driver calls [`Heartbeat::handle_read`] once per period with the
//! slots it just read and writes back the block it returns; it reports the
//! write's outcome with [`Heartbeat::handle_write_done`] and calls
//! [`Heartbeat::handle_timeout`] when [`Heartbeat::poll_timeout`] is due.
//! Events come out of [`Heartbeat::poll_event`]. Our own node is evaluated
//! like any other (from the block being written, as the kernel does), so
//! `NodeUp(local)` is reported after our second write.

use crate::config::EngineConfig;
use crate::wire::o2hb::{self, HbBlock};
use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

/// Node numbers 0..=254 have slots.
pub const MAX_NODES: usize = 255;
/// The kernel's heartbeat period.
pub const PERIOD: Duration = Duration::from_millis(2000);
/// Changed samples needed before a node is live.
pub const LIVE_THRESHOLD: u32 = 2;

/// Fixed parameters of one heartbeat region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HbParams {
    pub local: u8,
    /// Configured node numbers (the local one included). Only their slots
    /// are evaluated.
    pub nodes: Vec<u8>,
    pub block_bytes: usize,
    pub dead_threshold: u32,
    /// Our random non-zero generation for this run.
    pub generation: u64,
    pub period: Duration,
    /// Own writes failing (or our slot being overwritten) for this long
    /// means we must consider ourselves fenced.
    pub max_write_timeout: Duration,
}

impl HbParams {
    pub fn from_config(cfg: &EngineConfig, generation: u64) -> HbParams {
        HbParams {
            local: cfg.local.number,
            nodes: cfg.nodes.iter().map(|n| n.number).collect(),
            block_bytes: cfg.heartbeat.block_bytes as usize,
            dead_threshold: cfg.timeouts.heartbeat_threshold,
            generation,
            period: PERIOD,
            max_write_timeout: Duration::from_millis(cfg.timeouts.max_write_timeout_ms() as u64),
        }
    }

    /// `hb_dead_ms` of our blocks.
    pub fn dead_ms(&self) -> u32 {
        self.dead_threshold
            .saturating_mul(PERIOD.as_millis() as u32)
    }

    /// Bytes of region (from slot 0) that `handle_read` needs to see every
    /// configured slot.
    pub fn read_len(&self) -> usize {
        let top = self
            .nodes
            .iter()
            .copied()
            .max()
            .unwrap_or(self.local)
            .max(self.local);
        (top as usize + 1) * self.block_bytes
    }
}

/// What is wrong with our own slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnSlotConflict {
    /// A different node number is heartbeating in our slot.
    OtherNode { node: u8 },
    /// Our node number but another generation: a second writer (or a
    /// restarted one) uses our number.
    Generation { expected: u64, found: u64 },
    /// Same writer but not our last sequence: a lost write or a flaky
    /// device, or a second writer that copied our generation.
    Sequence { expected: u64, found: u64 },
    /// Our slot could not be read back (region too short).
    Unreadable,
}

impl fmt::Display for OwnSlotConflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OwnSlotConflict::OtherNode { node } => {
                write!(f, "node {node} is heartbeating in our slot")
            }
            OwnSlotConflict::Generation { expected, found } => write!(
                f,
                "our slot has generation {found:#018x}, we wrote {expected:#018x}: another writer uses our node number"
            ),
            OwnSlotConflict::Sequence { expected, found } => write!(
                f,
                "our slot has sequence {found}, we wrote {expected}: lost write or another writer"
            ),
            OwnSlotConflict::Unreadable => write!(f, "our slot was not read"),
        }
    }
}

/// Something the layers above need to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HbEvent {
    NodeUp(u8),
    NodeDown(u8),
    OwnSlotConflict(OwnSlotConflict),
    /// Our heartbeat has not been good for `max_write_timeout`: other nodes
    /// are about to declare us dead, so we must stop using the cluster.
    WriteTimeout,
}

/// Per-slot reader state (kernel's `o2hb_disk_slot`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotState {
    pub configured: bool,
    pub last_seq: u64,
    pub last_gen: u64,
    pub changed_samples: u32,
    pub equal_samples: u32,
    pub live: bool,
}

/// The state machine of one region.
pub struct Heartbeat {
    params: HbParams,
    slots: Vec<SlotState>,
    populated: bool,
    last_written: Option<HbBlock>,
    own_ok: bool,
    events: VecDeque<HbEvent>,
    next_read: Option<Instant>,
    write_deadline: Option<Instant>,
    timed_out: bool,
}

impl Heartbeat {
    pub fn new(params: HbParams) -> Result<Heartbeat, String> {
        if params.generation == 0 {
            return Err("generation must be non-zero (0 means 'leaving')".into());
        }
        if !(o2hb::MIN_BLOCK_BYTES..=o2hb::MAX_BLOCK_BYTES).contains(&params.block_bytes)
            || !params.block_bytes.is_power_of_two()
        {
            return Err(format!("bad block size {}", params.block_bytes));
        }
        if params.local as usize >= MAX_NODES
            || params.nodes.iter().any(|&n| n as usize >= MAX_NODES)
        {
            return Err("node numbers must be 0..=254".into());
        }
        if params.dead_threshold == 0 {
            return Err("dead threshold must be positive".into());
        }
        let mut slots = vec![SlotState::default(); MAX_NODES];
        for &n in params.nodes.iter().chain(std::iter::once(&params.local)) {
            slots[n as usize].configured = true;
        }
        Ok(Heartbeat {
            params,
            slots,
            populated: false,
            last_written: None,
            own_ok: false,
            events: VecDeque::new(),
            next_read: None,
            write_deadline: None,
            timed_out: false,
        })
    }

    pub fn params(&self) -> &HbParams {
        &self.params
    }

    /// One period: `region` holds the slots just read, starting at slot 0
    /// (at least [`HbParams::read_len`] bytes; slots beyond its end count
    /// as unreadable). `wall_secs` is the Unix time for our `seq`. Returns
    /// the block to write into our slot.
    pub fn handle_read(&mut self, region: &[u8], wall_secs: u64, now: Instant) -> Vec<u8> {
        let bb = self.params.block_bytes;
        let me = self.params.local;
        let slot_bytes = |n: u8| -> Option<&[u8]> {
            let start = n as usize * bb;
            region.get(start..start + bb)
        };

        if !self.populated {
            // Start from whatever is on disk, checksum or not, as the kernel
            // does when heartbeat starts: stale slots must not look changed.
            for n in 0..MAX_NODES as u8 {
                if !self.slots[n as usize].configured {
                    continue;
                }
                if let Some(d) = slot_bytes(n).and_then(|s| o2hb::decode(s).ok()) {
                    let s = &mut self.slots[n as usize];
                    s.last_seq = d.block.seq;
                    s.last_gen = d.block.generation;
                }
            }
            self.populated = true;
        }

        // Own-slot check: what we wrote last time must still be there.
        self.own_ok = match self.last_written {
            None => true,
            Some(w) => {
                let found = slot_bytes(me).and_then(|s| o2hb::decode(s).ok());
                let conflict = match found {
                    None => Some(OwnSlotConflict::Unreadable),
                    Some(d) if d.block.node != me => {
                        Some(OwnSlotConflict::OtherNode { node: d.block.node })
                    }
                    Some(d) if d.block.generation != w.generation => {
                        Some(OwnSlotConflict::Generation {
                            expected: w.generation,
                            found: d.block.generation,
                        })
                    }
                    Some(d) if d.block.seq != w.seq => Some(OwnSlotConflict::Sequence {
                        expected: w.seq,
                        found: d.block.seq,
                    }),
                    Some(_) => None,
                };
                if let Some(c) = conflict {
                    log::error!("o2hb: own slot {me}: {c}");
                    self.events.push_back(HbEvent::OwnSlotConflict(c));
                }
                conflict.is_none()
            }
        };

        let block = self.next_block(wall_secs, self.params.generation);
        // encode cannot fail: block_bytes was checked in new().
        let out = o2hb::encode(&block, bb).unwrap_or_default();
        self.last_written = Some(block);

        for n in 0..MAX_NODES as u8 {
            if !self.slots[n as usize].configured {
                continue;
            }
            if n == me {
                // The kernel evaluates its own slot from the buffer it is
                // writing.
                self.evaluate(n, Some(&out));
            } else {
                self.evaluate(n, slot_bytes(n));
            }
        }
        self.next_read = Some(now + self.params.period);
        out
    }

    /// Our next block: `seq` is the wall clock in seconds, never 0, and
    /// never equal to the previous one (so readers always see a change
    /// even if two periods fall in the same second).
    fn next_block(&self, wall_secs: u64, generation: u64) -> HbBlock {
        let mut seq = wall_secs.max(1);
        if let Some(w) = self.last_written {
            if w.seq == seq {
                seq = seq.wrapping_add(1).max(1);
            }
        }
        HbBlock {
            seq,
            node: self.params.local,
            generation,
            dead_ms: self.params.dead_ms(),
        }
    }

    fn evaluate(&mut self, n: u8, bytes: Option<&[u8]>) {
        let threshold = self.params.dead_threshold;
        let own_dead_ms = self.params.dead_ms();
        let s = &mut self.slots[n as usize];
        let decoded = bytes
            .and_then(|b| o2hb::decode(b).ok())
            .filter(|d| d.crc_ok());
        let mut gen_changed = false;
        let mut block_dead_ms = 0;
        match decoded {
            None => {
                if !s.live {
                    return;
                }
                // A live node's unreadable block is a missed beat.
                s.equal_samples += 1;
                log::error!("o2hb: node {n}: bad checksum in its slot, counted as a missed beat");
            }
            Some(d) => {
                let b = d.block;
                block_dead_ms = b.dead_ms;
                if b.seq != s.last_seq {
                    s.changed_samples += 1;
                } else {
                    s.equal_samples += 1;
                }
                s.last_seq = b.seq;
                if b.generation != s.last_gen {
                    gen_changed = true;
                    s.equal_samples = 0;
                }
                s.last_gen = b.generation;
            }
        }

        if !s.live {
            if s.changed_samples >= LIVE_THRESHOLD {
                s.live = true;
                s.equal_samples = 0;
                if block_dead_ms != 0 && block_dead_ms != own_dead_ms {
                    log::warn!(
                        "o2hb: node {n} uses dead_ms {block_dead_ms}, we use {own_dead_ms}: timeouts differ"
                    );
                }
                log::info!("o2hb: node {n} up");
                self.events.push_back(HbEvent::NodeUp(n));
            }
            // A node that is not live keeps accumulating changes.
            return;
        }

        if s.equal_samples >= threshold || gen_changed {
            s.live = false;
            if !gen_changed {
                s.changed_samples = 0;
            }
            log::info!(
                "o2hb: node {n} down ({})",
                if gen_changed {
                    "generation changed"
                } else {
                    "no heartbeat"
                }
            );
            self.events.push_back(HbEvent::NodeDown(n));
            return;
        }
        if s.changed_samples > 0 {
            s.changed_samples = 0;
            s.equal_samples = 0;
        }
    }

    /// Reports the outcome of the write `handle_read` asked for. A good
    /// write while our slot was intact re-arms the write timeout.
    pub fn handle_write_done(&mut self, ok: bool, now: Instant) {
        if ok && self.own_ok {
            self.write_deadline = Some(now + self.params.max_write_timeout);
            self.timed_out = false;
        } else if !ok {
            log::error!("o2hb: write of our slot failed");
        }
    }

    /// Fires `WriteTimeout` once when the write deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.write_deadline {
            if now >= d && !self.timed_out {
                self.timed_out = true;
                log::error!(
                    "o2hb: no good heartbeat write for {} ms",
                    self.params.max_write_timeout.as_millis()
                );
                self.events.push_back(HbEvent::WriteTimeout);
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<HbEvent> {
        self.events.pop_front()
    }

    /// The earliest instant something is due: the next read, or the write
    /// deadline while it has not fired.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let wd = self.write_deadline.filter(|_| !self.timed_out);
        match (self.next_read, wd) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// When the next period's read is due (None before the first read).
    pub fn next_read(&self) -> Option<Instant> {
        self.next_read
    }

    /// Nodes currently live in our view, ascending.
    pub fn live_nodes(&self) -> Vec<u8> {
        (0..MAX_NODES as u8)
            .filter(|&n| self.slots[n as usize].live)
            .collect()
    }

    pub fn is_live(&self, n: u8) -> bool {
        self.slots.get(n as usize).is_some_and(|s| s.live)
    }

    pub fn slot_state(&self, n: u8) -> Option<SlotState> {
        self.slots.get(n as usize).copied()
    }

    /// Whether our slot held what we last wrote at the last read.
    pub fn own_slot_ok(&self) -> bool {
        self.own_ok
    }

    /// The final block of a clean stop: generation 0, so readers declare us
    /// dead at their next read instead of after the threshold.
    pub fn stop_block(&mut self, wall_secs: u64) -> Vec<u8> {
        let block = self.next_block(wall_secs, 0);
        self.last_written = Some(block);
        self.next_read = None;
        self.write_deadline = None;
        o2hb::encode(&block, self.params.block_bytes).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BB: usize = 512;

    fn params(local: u8, nodes: &[u8], threshold: u32) -> HbParams {
        HbParams {
            local,
            nodes: nodes.to_vec(),
            block_bytes: BB,
            dead_threshold: threshold,
            generation: 0xABCD,
            period: PERIOD,
            max_write_timeout: Duration::from_millis(2000 * (threshold as u64 - 1)),
        }
    }

    /// A region of `slots` slots, all blank.
    fn region(slots: usize) -> Vec<u8> {
        vec![0u8; slots * BB]
    }

    fn put(region: &mut [u8], n: u8, seq: u64, generation: u64) {
        let b = HbBlock {
            seq,
            node: n,
            generation,
            dead_ms: 14000,
        };
        o2hb::encode_into(&b, &mut region[n as usize * BB..(n as usize + 1) * BB]).unwrap();
    }

    fn drain(hb: &mut Heartbeat) -> Vec<HbEvent> {
        std::iter::from_fn(|| hb.poll_event()).collect()
    }

    /// Runs one period the way the driver does: our last write is put back
    /// into the region before the read.
    struct Rig {
        hb: Heartbeat,
        region: Vec<u8>,
        t0: Instant,
        secs: u64,
    }

    impl Rig {
        fn new(p: HbParams) -> Rig {
            Rig {
                hb: Heartbeat::new(p).unwrap(),
                region: region(8),
                t0: Instant::now(),
                secs: 1_700_000_000,
            }
        }
        fn period(&mut self) -> Vec<HbEvent> {
            self.secs += 2;
            let now = self.t0 + Duration::from_secs(self.secs - 1_700_000_000);
            let out = self.hb.handle_read(&self.region, self.secs, now);
            let me = self.hb.params().local as usize;
            self.region[me * BB..(me + 1) * BB].copy_from_slice(&out);
            self.hb.handle_write_done(true, now);
            drain(&mut self.hb)
        }
    }

    #[test]
    fn rejects_bad_params() {
        assert!(Heartbeat::new(HbParams {
            generation: 0,
            ..params(1, &[1], 7)
        })
        .is_err());
        assert!(Heartbeat::new(HbParams {
            block_bytes: 1000,
            ..params(1, &[1], 7)
        })
        .is_err());
        assert!(Heartbeat::new(params(255, &[1], 7)).is_err());
        assert!(Heartbeat::new(HbParams {
            dead_threshold: 0,
            ..params(1, &[1], 7)
        })
        .is_err());
    }

    #[test]
    fn writes_valid_blocks_with_changing_seq() {
        let mut r = Rig::new(params(1, &[1, 2], 7));
        let t = r.t0;
        let a = r.hb.handle_read(&r.region, 100, t);
        let b = r.hb.handle_read(&r.region, 100, t);
        let (da, db) = (o2hb::decode(&a).unwrap(), o2hb::decode(&b).unwrap());
        assert!(da.crc_ok() && db.crc_ok());
        assert_eq!(
            da.block,
            HbBlock {
                seq: 100,
                node: 1,
                generation: 0xABCD,
                dead_ms: 14000
            }
        );
        assert_eq!(db.block.seq, 101, "same second twice still changes seq");
        let z = Heartbeat::new(params(1, &[1], 7))
            .unwrap()
            .handle_read(&r.region, 0, t);
        assert_eq!(o2hb::decode(&z).unwrap().block.seq, 1, "seq is never 0");
    }

    #[test]
    fn node_up_after_two_changes_and_self_up() {
        let mut r = Rig::new(params(1, &[1, 2], 7));
        put(&mut r.region, 2, 50, 9);
        assert_eq!(r.period(), vec![], "first read only learns the disk");
        put(&mut r.region, 2, 52, 9);
        assert_eq!(
            r.period(),
            vec![HbEvent::NodeUp(1)],
            "own slot: 0 -> s1 -> s2"
        );
        assert!(!r.hb.is_live(2));
        put(&mut r.region, 2, 54, 9);
        assert_eq!(r.period(), vec![HbEvent::NodeUp(2)]);
        assert_eq!(r.hb.live_nodes(), vec![1, 2]);
        // A stale slot that never changes never comes up.
        let mut r = Rig::new(params(1, &[1, 3], 7));
        put(&mut r.region, 3, 77, 5);
        for _ in 0..5 {
            r.period();
        }
        assert!(!r.hb.is_live(3));
    }

    #[test]
    fn unconfigured_slot_is_ignored() {
        let mut r = Rig::new(params(1, &[1], 7));
        for i in 0..4 {
            put(&mut r.region, 2, 50 + i, 9);
            r.period();
        }
        assert_eq!(r.hb.live_nodes(), vec![1]);
    }

    fn up_rig(threshold: u32) -> Rig {
        let mut r = Rig::new(params(1, &[1, 2], threshold));
        for i in 0..3 {
            put(&mut r.region, 2, 50 + 2 * i, 9);
            r.period();
        }
        assert!(r.hb.is_live(2));
        // One more beat: going live leaves `changed_samples` set, and the
        // next sample clears it; after this the node is in steady state.
        put(&mut r.region, 2, 56, 9);
        assert_eq!(r.period(), vec![]);
        r
    }

    #[test]
    fn first_miss_after_going_live_is_absorbed() {
        // Kernel quirk kept on purpose: a node that goes silent right after
        // being seen live needs threshold + 1 unchanged samples.
        let mut r = Rig::new(params(1, &[1, 2], 7));
        for i in 0..3 {
            put(&mut r.region, 2, 50 + 2 * i, 9);
            r.period();
        }
        assert!(r.hb.is_live(2));
        for _ in 0..7 {
            assert_eq!(r.period(), vec![]);
        }
        assert_eq!(r.period(), vec![HbEvent::NodeDown(2)]);
    }

    #[test]
    fn node_down_after_threshold_equal_samples() {
        let mut r = up_rig(7);
        // Six unchanged samples: still live.
        for _ in 0..6 {
            assert_eq!(r.period(), vec![]);
        }
        assert!(r.hb.is_live(2));
        assert_eq!(
            r.period(),
            vec![HbEvent::NodeDown(2)],
            "seventh unchanged sample"
        );
        assert_eq!(r.hb.live_nodes(), vec![1]);
        // It needs two fresh changes to come back.
        put(&mut r.region, 2, 90, 9);
        assert_eq!(r.period(), vec![]);
        put(&mut r.region, 2, 92, 9);
        assert_eq!(r.period(), vec![HbEvent::NodeUp(2)]);
    }

    #[test]
    fn any_change_resets_miss_count() {
        let mut r = up_rig(7);
        for _ in 0..6 {
            r.period();
        }
        put(&mut r.region, 2, 200, 9);
        r.period();
        for _ in 0..6 {
            assert_eq!(r.period(), vec![]);
        }
        assert_eq!(r.period(), vec![HbEvent::NodeDown(2)]);
    }

    #[test]
    fn generation_change_is_immediate_down_then_quick_up() {
        let mut r = up_rig(31);
        put(&mut r.region, 2, 100, 10);
        assert_eq!(r.period(), vec![HbEvent::NodeDown(2)]);
        // The change that came with the new generation is kept.
        put(&mut r.region, 2, 102, 10);
        assert_eq!(r.period(), vec![HbEvent::NodeUp(2)]);
    }

    #[test]
    fn clean_leaver_is_down_at_once() {
        let mut r = up_rig(31);
        put(&mut r.region, 2, 100, 0);
        assert_eq!(r.period(), vec![HbEvent::NodeDown(2)]);
        for _ in 0..3 {
            assert_eq!(r.period(), vec![]);
        }
        assert!(!r.hb.is_live(2));
    }

    #[test]
    fn garbage_block_ignored_when_not_live_counted_when_live() {
        let mut r = Rig::new(params(1, &[1, 2], 7));
        r.period();
        for i in 0..5 {
            // Changing garbage with a bad checksum never makes it live.
            r.region[2 * BB..3 * BB].fill(0x5A + i);
            r.period();
        }
        assert!(!r.hb.is_live(2));

        let mut r = up_rig(7);
        // Garbage counts as a miss, and does not update last_seq: the seq
        // shown before and after the garbage is the same, so no change.
        let good = r.region[2 * BB..3 * BB].to_vec();
        for _ in 0..3 {
            r.region[2 * BB + 100] ^= 0xFF;
            assert_eq!(r.period(), vec![]);
        }
        r.region[2 * BB..3 * BB].copy_from_slice(&good);
        for _ in 0..3 {
            assert_eq!(r.period(), vec![]);
        }
        r.region[2 * BB + 7] = 0x77; // corrupt seq byte without fixing crc
        assert_eq!(
            r.period(),
            vec![HbEvent::NodeDown(2)],
            "3 bad + 4 equal = 7 misses"
        );
    }

    #[test]
    fn short_region_counts_as_unreadable() {
        let mut r = up_rig(7);
        let t = r.t0 + Duration::from_secs(1000);
        let mut events = Vec::new();
        for i in 0..7 {
            // Only slots 0 and 1 were read.
            let out =
                r.hb.handle_read(&r.region[..2 * BB], 2_000_000_000 + 2 * i, t);
            r.region[BB..2 * BB].copy_from_slice(&out);
            events.extend(drain(&mut r.hb));
        }
        assert_eq!(events, vec![HbEvent::NodeDown(2)]);
    }

    #[test]
    fn own_slot_intruders() {
        let mut r = up_rig(7);
        // Another node number writing our slot.
        let b = o2hb::decode(&r.region[BB..2 * BB]).unwrap().block;
        o2hb::encode_into(&HbBlock { node: 3, ..b }, &mut r.region[BB..2 * BB]).unwrap();
        assert_eq!(
            r.period(),
            vec![HbEvent::OwnSlotConflict(OwnSlotConflict::OtherNode {
                node: 3
            })]
        );
        assert!(!r.hb.own_slot_ok());
        // A second writer with our number but its own generation.
        put(&mut r.region, 1, 5, 0x1111);
        assert_eq!(
            r.period(),
            vec![HbEvent::OwnSlotConflict(OwnSlotConflict::Generation {
                expected: 0xABCD,
                found: 0x1111
            })]
        );
        // Our generation but not our sequence.
        let last = o2hb::decode(&r.region[BB..2 * BB]).unwrap().block.seq;
        put(&mut r.region, 1, 5, 0xABCD);
        assert_eq!(
            r.period(),
            vec![HbEvent::OwnSlotConflict(OwnSlotConflict::Sequence {
                expected: last,
                found: 5
            })]
        );
        // Untouched: fine again.
        assert_eq!(r.period(), vec![]);
        assert!(r.hb.own_slot_ok());
    }

    #[test]
    fn write_timeout_fires_once_when_not_rearmed() {
        let mut r = up_rig(7);
        let base = r.t0 + Duration::from_secs(r.secs - 1_700_000_000);
        let due = r.hb.poll_timeout().unwrap();
        assert_eq!(
            due,
            base + PERIOD,
            "next read is sooner than the 12 s write deadline"
        );
        // Writes fail from now on.
        let mut fired = Vec::new();
        for i in 1..=8u64 {
            let now = base + Duration::from_secs(2 * i);
            r.hb.handle_read(&r.region, r.secs + 2 * i, now);
            r.hb.handle_write_done(false, now);
            r.hb.handle_timeout(now);
            fired.extend(
                drain(&mut r.hb)
                    .into_iter()
                    .filter(|e| *e == HbEvent::WriteTimeout)
                    .map(|_| i),
            );
        }
        // Last good write at `base`; deadline base + 12 s = period 6. Once.
        assert_eq!(fired, vec![6]);
    }

    #[test]
    fn intruder_prevents_rearming() {
        let mut r = up_rig(7);
        let base = r.t0 + Duration::from_secs(r.secs - 1_700_000_000);
        let mut fired = false;
        for i in 1..=7u64 {
            let now = base + Duration::from_secs(2 * i);
            put(&mut r.region, 1, 1000 + i, 0x2222);
            r.hb.handle_read(&r.region, r.secs + 2 * i, now);
            r.hb.handle_write_done(true, now);
            r.hb.handle_timeout(now);
            fired |= drain(&mut r.hb).contains(&HbEvent::WriteTimeout);
        }
        assert!(fired);
    }

    #[test]
    fn stop_block_is_generation_zero() {
        let mut r = up_rig(7);
        let b = r.hb.stop_block(r.secs + 2);
        let d = o2hb::decode(&b).unwrap();
        assert!(d.crc_ok());
        assert_eq!(d.block.generation, 0);
        assert_eq!(d.block.node, 1);
        assert_eq!(d.block.seq, r.secs + 2);
        assert_eq!(r.hb.poll_timeout(), None);

        // Another reader that saw us live declares us down on its next read.
        let mut other = Rig::new(params(2, &[1, 2], 7));
        for i in 0..3 {
            put(&mut other.region, 1, 10 + 2 * i, 0xABCD);
            other.period();
        }
        assert!(other.hb.is_live(1));
        other.region[BB..2 * BB].copy_from_slice(&b);
        assert_eq!(other.period(), vec![HbEvent::NodeDown(1)]);
    }

    #[test]
    fn read_len_covers_highest_node() {
        assert_eq!(params(1, &[1, 5], 7).read_len(), 6 * BB);
        assert_eq!(params(9, &[1, 5], 7).read_len(), 10 * BB);
    }
}
