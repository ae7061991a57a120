//! Disk heartbeat driver: the thread that runs the o2hb state machine
//! (`crate::heartbeat`) against a real device or file.
//!
//! Every period it reads the slots from slot 0 up to the highest configured
//! node, lets the state machine judge them, writes our slot, and hands the
//! resulting events to a callback. Before writing anything it watches our
//! slot for a couple of periods and refuses to start if somebody else is
//! writing there (two writers in one slot make kernel nodes fence).

use crate::config::{EngineConfig, HeartbeatGeometry};
use crate::heartbeat::{HbEvent, HbParams, Heartbeat, PERIOD};
use crate::wire::o2hb;
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// An open heartbeat region with the I/O discipline it allows.
pub struct RegionFile {
    file: File,
    geom: HeartbeatGeometry,
    direct: bool,
}

fn bad_input(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// A zeroed buffer aligned to a page (anonymous mappings are), which
/// satisfies O_DIRECT's alignment for any block size up to 4096.
fn aligned_buf(len: usize) -> io::Result<MmapMut> {
    MmapMut::map_anon(len.max(1))
}

impl RegionFile {
    /// Opens the region's device. Block devices must accept O_DIRECT and
    /// have a logical sector size equal to `block_bytes` (as the kernel
    /// requires). Regular files are extended to hold the region if shorter.
    pub fn open(geom: &HeartbeatGeometry, writable: bool) -> io::Result<RegionFile> {
        let path = &geom.device;
        let meta = std::fs::metadata(path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let ft = meta.file_type();
        let is_block = ft.is_block_device();
        if !is_block && !ft.is_file() {
            return Err(bad_input(format!(
                "{}: not a block device or regular file",
                path.display()
            )));
        }
        let open = |direct: bool| -> io::Result<File> {
            let mut o = OpenOptions::new();
            o.read(true).write(writable);
            let mut flags = 0;
            if direct {
                // The kernel's heartbeat I/O bypasses the page cache: other
                // hosts write the device behind our back, so a cached read
                // would show stale slots and a cached write might reach the
                // disk too late. O_DSYNC makes each write durable like the
                // kernel's synchronous bios.
                flags |= libc::O_DIRECT | libc::O_DSYNC;
            }
            o.custom_flags(flags);
            o.open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
        };
        let region_end = geom
            .start_block
            .checked_add(geom.blocks as u64)
            .and_then(|b| b.checked_mul(geom.block_bytes as u64))
            .ok_or_else(|| bad_input("heartbeat region beyond addressable range".into()))?;

        if is_block {
            let file = open(true)?;
            let mut ssz: libc::c_int = 0;
            // SAFETY: BLKSSZGET writes one c_int through the pointer, which
            // points at a live local of that type; the fd is open.
            let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::BLKSSZGET, &mut ssz) };
            if rc == 0 && ssz as u32 != geom.block_bytes {
                return Err(bad_input(format!(
                    "{}: logical sector size is {ssz}, but the heartbeat block size is {} (they must be equal)",
                    path.display(),
                    geom.block_bytes
                )));
            }
            let mut r = RegionFile {
                file,
                geom: geom.clone(),
                direct: true,
            };
            r.probe()?;
            return Ok(r);
        }

        if meta.len() < region_end {
            if !writable {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: {} bytes, the heartbeat region needs {region_end}",
                        path.display(),
                        meta.len()
                    ),
                ));
            }
            // Growing never truncates data: the region's writes all lie
            // below `region_end`, and the new tail reads as zeros.
            let f = OpenOptions::new().write(true).open(path)?;
            if f.metadata()?.len() < region_end {
                f.set_len(region_end)?;
            }
        }
        // A regular file may live on a file system that refuses O_DIRECT
        // (tmpfs: EINVAL at open or on the first I/O). All writers of a
        // regular file share this host's page cache, which is coherent, so
        // buffered I/O plus fdatasync after each write is correct there.
        if let Ok(file) = open(true) {
            let mut r = RegionFile {
                file,
                geom: geom.clone(),
                direct: true,
            };
            if r.probe().is_ok() {
                return Ok(r);
            }
        }
        log::debug!(
            "{}: O_DIRECT unavailable, using buffered I/O + fdatasync",
            path.display()
        );
        let mut r = RegionFile {
            file: open(false)?,
            geom: geom.clone(),
            direct: false,
        };
        r.probe()?;
        Ok(r)
    }

    /// One aligned read of slot 0, to find out early whether the I/O mode
    /// works on this file.
    fn probe(&mut self) -> io::Result<()> {
        self.read_slots(1).map(|_| ())
    }

    /// Whether O_DIRECT is in use.
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    pub fn geometry(&self) -> &HeartbeatGeometry {
        &self.geom
    }

    /// Reads slots `0..count` in one I/O.
    pub fn read_slots(&self, count: usize) -> io::Result<MmapMut> {
        let count = count.min(self.geom.blocks as usize);
        let len = count * self.geom.block_bytes as usize;
        let mut buf = aligned_buf(len)?;
        let off = self.geom.slot_offset(0);
        self.file.read_exact_at(&mut buf[..len], off)?;
        Ok(buf)
    }

    /// Writes one whole slot.
    pub fn write_slot(&self, slot: u8, block: &[u8]) -> io::Result<()> {
        let bb = self.geom.block_bytes as usize;
        if block.len() != bb || slot as u32 >= self.geom.blocks {
            return Err(bad_input(format!(
                "bad slot write: slot {slot}, {} bytes",
                block.len()
            )));
        }
        let mut buf = aligned_buf(bb)?;
        buf[..bb].copy_from_slice(block);
        self.file
            .write_all_at(&buf[..bb], self.geom.slot_offset(slot))?;
        if !self.direct {
            self.file.sync_data()?;
        }
        Ok(())
    }
}

/// A random non-zero 64-bit generation from the kernel's CSPRNG.
pub fn random_generation() -> io::Result<u64> {
    loop {
        let mut v = [0u8; 8];
        // SAFETY: the pointer and length describe the local array, which
        // getrandom fills with at most that many bytes.
        let n = unsafe { libc::getrandom(v.as_mut_ptr().cast(), v.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n as usize == v.len() {
            let g = u64::from_le_bytes(v);
            if g != 0 {
                return Ok(g);
            }
        }
    }
}

fn wall_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Start-up knobs. The defaults are what a real node should use.
#[derive(Debug, Clone)]
pub struct HbOptions {
    /// Periods to watch our slot before the first write.
    pub watch_periods: u32,
}

impl Default for HbOptions {
    fn default() -> Self {
        HbOptions { watch_periods: 2 }
    }
}

enum Stop {
    Clean,
    Unclean,
}

/// A running heartbeat.
/// Lets any thread ask "has our heartbeat been good recently?" without
/// waiting for the heartbeat thread: after a stall (SIGSTOP, a frozen VM)
/// the API may run before that thread notices its own write timeout.
#[derive(Debug, Clone)]
pub struct WriteWatch {
    base: Instant,
    /// Milliseconds after `base` of the last good write of our block.
    last_good_ms: Arc<AtomicU64>,
    timeout: Duration,
}

impl WriteWatch {
    fn new(timeout: Duration) -> WriteWatch {
        WriteWatch {
            base: Instant::now(),
            last_good_ms: Arc::new(AtomicU64::new(0)),
            timeout,
        }
    }

    fn note_good_write(&self, at: Instant) {
        let ms = at.saturating_duration_since(self.base).as_millis() as u64;
        self.last_good_ms.store(ms, Ordering::Release);
    }

    /// True when our last good write is older than the write timeout, so
    /// the other nodes may already have declared us dead.
    pub fn expired(&self, now: Instant) -> bool {
        let last = self.base + Duration::from_millis(self.last_good_ms.load(Ordering::Acquire));
        now.saturating_duration_since(last) > self.timeout
    }
}

pub struct HeartbeatDriver {
    watch: WriteWatch,
    stop_tx: Option<mpsc::Sender<Stop>>,
    thread: Option<JoinHandle<()>>,
    live: Arc<Mutex<Vec<u8>>>,
    generation: u64,
    local: u8,
}

impl HeartbeatDriver {
    /// Starts heartbeating with the default options. Returns once our slot
    /// has been watched and the first block written.
    pub fn start(
        cfg: &EngineConfig,
        on_event: Box<dyn Fn(HbEvent) + Send>,
    ) -> io::Result<HeartbeatDriver> {
        HeartbeatDriver::start_with(cfg, HbOptions::default(), on_event)
    }

    pub fn start_with(
        cfg: &EngineConfig,
        opts: HbOptions,
        on_event: Box<dyn Fn(HbEvent) + Send>,
    ) -> io::Result<HeartbeatDriver> {
        let generation = random_generation()?;
        let params = HbParams::from_config(cfg, generation);
        let local = params.local;
        let slots = params.read_len() / params.block_bytes;
        if slots > cfg.heartbeat.blocks as usize {
            return Err(bad_input(format!(
                "node {} does not fit a region of {} slots",
                slots - 1,
                cfg.heartbeat.blocks
            )));
        }
        let watch = WriteWatch::new(params.max_write_timeout);
        let hb = Heartbeat::new(params).map_err(bad_input)?;
        let region = RegionFile::open(&cfg.heartbeat, true)?;
        log::info!(
            "o2hb: node {local} on {} ({} I/O), generation {generation:#018x}",
            cfg.heartbeat.device.display(),
            if region.is_direct() {
                "O_DIRECT"
            } else {
                "buffered"
            }
        );

        let (stop_tx, stop_rx) = mpsc::channel::<Stop>();
        let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
        let live = Arc::new(Mutex::new(Vec::new()));
        let live2 = live.clone();
        let watch2 = watch.clone();
        let thread = std::thread::Builder::new()
            .name(format!("o2hb-{local}"))
            .spawn(move || {
                let mut w = Worker {
                    hb,
                    region,
                    slots,
                    on_event,
                    live: live2,
                    watch: watch2,
                };
                match w.watch_own_slot(&opts, &stop_rx) {
                    Ok(true) => {}
                    Ok(false) => {
                        let _ = ready_tx.send(Err(io::Error::new(
                            io::ErrorKind::Interrupted,
                            "stopped during start-up",
                        )));
                        return;
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                }
                if let Err(e) = w.period() {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
                let _ = ready_tx.send(Ok(()));
                w.run(&stop_rx);
            })?;
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(HeartbeatDriver {
                watch,
                stop_tx: Some(stop_tx),
                thread: Some(thread),
                live,
                generation,
                local,
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => {
                let _ = thread.join();
                Err(io::Error::other("heartbeat thread died during start-up"))
            }
        }
    }

    /// A handle to check from any thread whether our writes are current.
    pub fn write_watch(&self) -> WriteWatch {
        self.watch.clone()
    }

    /// Nodes live in our view (ours included once we have written twice).
    pub fn live_nodes(&self) -> Vec<u8> {
        self.live.lock().map(|v| v.clone()).unwrap_or_default()
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn local(&self) -> u8 {
        self.local
    }

    /// Clean stop: writes the generation-0 block so other nodes see us
    /// leave at their next read.
    pub fn stop(mut self) {
        self.finish(Stop::Clean);
    }

    /// Stops without the final write (fencing): other nodes declare us dead
    /// only after their threshold, as if we had crashed.
    pub fn stop_unclean(mut self) {
        self.finish(Stop::Unclean);
    }

    fn finish(&mut self, how: Stop) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(how);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for HeartbeatDriver {
    fn drop(&mut self) {
        self.finish(Stop::Clean);
    }
}

struct Worker {
    hb: Heartbeat,
    region: RegionFile,
    slots: usize,
    on_event: Box<dyn Fn(HbEvent) + Send>,
    live: Arc<Mutex<Vec<u8>>>,
    watch: WriteWatch,
}

impl Worker {
    /// Reads our slot every period for `watch_periods` periods; an
    /// `Err(AddrInUse)` if it changes. `Ok(false)` if asked to stop.
    fn watch_own_slot(
        &mut self,
        opts: &HbOptions,
        stop: &mpsc::Receiver<Stop>,
    ) -> io::Result<bool> {
        let me = self.hb.params().local;
        let own = |r: &RegionFile| -> io::Result<Option<o2hb::HbBlock>> {
            let buf = r.read_slots(me as usize + 1)?;
            let bb = r.geometry().block_bytes as usize;
            let s = &buf[me as usize * bb..(me as usize + 1) * bb];
            Ok(o2hb::decode(s).ok().filter(|d| d.crc_ok()).map(|d| d.block))
        };
        let first = own(&self.region)?;
        for _ in 0..opts.watch_periods {
            match stop.recv_timeout(PERIOD) {
                Err(RecvTimeoutError::Timeout) => {}
                _ => return Ok(false),
            }
            let now = own(&self.region)?;
            if now != first {
                let who = now.map(|b| b.node).unwrap_or(me);
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    format!(
                        "{}: another writer (node {who}) is heartbeating in slot {me}; refusing to start",
                        self.region.geometry().device.display()
                    ),
                ));
            }
        }
        if let Some(b) = first {
            if b.generation != 0 {
                log::info!(
                    "o2hb: slot {me} holds a stale block (node {}, generation {:#x}) from an unclean stop",
                    b.node,
                    b.generation
                );
            }
        }
        Ok(true)
    }

    /// One period: read, judge, write, deliver events.
    /// One heartbeat period. `Ok(false)`: our writes timed out (e.g. the
    /// process was stopped past the write timeout) — like the kernel's
    /// fence, this node must not write again, or peers that declared it
    /// dead would see it come back.
    fn period(&mut self) -> io::Result<bool> {
        let now = Instant::now();
        // The write timeout is checked before anything else, as the
        // kernel's separate timer would have fired during a stall.
        self.hb.handle_timeout(now);
        if self.deliver() {
            return Ok(false);
        }
        let buf = match self.region.read_slots(self.slots) {
            Ok(b) => b,
            Err(e) => {
                log::error!("o2hb: reading the region failed: {e}");
                self.hb.handle_timeout(now);
                if self.deliver() {
                    return Ok(false);
                }
                return Err(e);
            }
        };
        let block = self.hb.handle_read(&buf, wall_secs(), now);
        let res = self.region.write_slot(self.hb.params().local, &block);
        if let Err(e) = &res {
            log::error!("o2hb: writing our slot failed: {e}");
        }
        let done = Instant::now();
        self.hb.handle_write_done(res.is_ok(), done);
        if res.is_ok() && self.hb.own_slot_ok() {
            self.watch.note_good_write(done);
        }
        self.hb.handle_timeout(done);
        if self.deliver() {
            return Ok(false);
        }
        res.map(|()| true)
    }

    /// Hands events to the layer above; true when one was a write timeout.
    fn deliver(&mut self) -> bool {
        if let Ok(mut l) = self.live.lock() {
            *l = self.hb.live_nodes();
        }
        let mut timed_out = false;
        while let Some(ev) = self.hb.poll_event() {
            timed_out |= matches!(ev, HbEvent::WriteTimeout);
            (self.on_event)(ev);
        }
        timed_out
    }

    fn run(&mut self, stop: &mpsc::Receiver<Stop>) {
        loop {
            let due = self
                .hb
                .next_read()
                .unwrap_or_else(|| Instant::now() + PERIOD);
            let wait = due.saturating_duration_since(Instant::now());
            match stop.recv_timeout(wait) {
                Err(RecvTimeoutError::Timeout) => {
                    // Errors are logged and reflected in the write timeout.
                    if let Ok(false) = self.period() {
                        log::error!("o2hb: write timeout: heartbeat stopped (fenced)");
                        return;
                    }
                }
                Ok(Stop::Unclean) => {
                    log::warn!("o2hb: stopping without the final write");
                    return;
                }
                Ok(Stop::Clean) | Err(RecvTimeoutError::Disconnected) => {
                    let block = self.hb.stop_block(wall_secs());
                    match self.region.write_slot(self.hb.params().local, &block) {
                        Ok(()) => log::info!("o2hb: stopped cleanly"),
                        Err(e) => log::error!("o2hb: final write failed: {e}"),
                    }
                    return;
                }
            }
        }
    }
}

/// Pause helper for callers that poll `live_nodes` (tests, CLI).
pub fn wait_until(deadline: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
