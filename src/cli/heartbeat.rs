//! `o2dlm heartbeat [--once] DEVICE`: lists the used slots of a heartbeat
//! region, like debugfs.ocfs2's `hb` plus a live/dead verdict.
//!
//! By default the region is read twice, one heartbeat period apart, and a
//! slot is live when its sequence moved in between (what a kernel reader
//! would count as a change). With `--once` it is read once and a slot is
//! live when its age is below its dead time.

use crate::config::{timeouts, HeartbeatGeometry};
use crate::driver::heartbeat_disk::RegionFile;
use crate::heartbeat::PERIOD;
use crate::wire::o2hb::{self, DecodedHb};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

const USAGE: &str = "usage: o2dlm heartbeat [--once] DEVICE

Prints every used slot of the heartbeat region on DEVICE (block device or
file): node, seq, generation, age (now - seq), checksum, live/dead.
Without --once the region is read twice, 2 s apart, and a slot is live if
its seq changed; with --once a slot is live if its age is below its dead_ms.
Geometry: O2DLM_HEARTBEAT_BLOCK_BYTES (512), O2DLM_HEARTBEAT_START_BLOCK (1),
O2DLM_HEARTBEAT_BLOCKS (255).
";

pub fn run(args: &[String]) -> ExitCode {
    let mut once = false;
    let mut device: Option<PathBuf> = None;
    for a in args {
        match a.as_str() {
            "--once" => once = true,
            "-h" | "--help" => {
                print!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            s if s.starts_with('-') && s.len() > 1 => {
                eprintln!("o2dlm heartbeat: unknown option '{s}'\n{USAGE}");
                return ExitCode::from(2);
            }
            s => {
                if device.is_some() {
                    eprintln!("o2dlm heartbeat: more than one DEVICE\n{USAGE}");
                    return ExitCode::from(2);
                }
                device = Some(PathBuf::from(s));
            }
        }
    }
    let Some(device) = device else {
        eprint!("{USAGE}");
        return ExitCode::from(2);
    };
    let env = |k: &str| std::env::var(k).ok();
    let geom = match HeartbeatGeometry::from_lookup(&env, Some(device)) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("o2dlm heartbeat: {e}");
            return ExitCode::from(1);
        }
    };
    match list(&geom, once) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("o2dlm heartbeat: {e}");
            ExitCode::from(1)
        }
    }
}

fn read_all(
    region: &RegionFile,
    geom: &HeartbeatGeometry,
) -> std::io::Result<Vec<Option<DecodedHb>>> {
    let buf = region.read_slots(geom.blocks as usize)?;
    let bb = geom.block_bytes as usize;
    Ok((0..geom.blocks as usize)
        .map(|n| {
            let s = &buf[n * bb..(n + 1) * bb];
            if o2hb::is_blank(s) {
                None
            } else {
                o2hb::decode(s).ok()
            }
        })
        .collect())
}

fn list(geom: &HeartbeatGeometry, once: bool) -> Result<(), String> {
    let region = RegionFile::open(geom, false).map_err(|e| e.to_string())?;
    let first = read_all(&region, geom).map_err(|e| e.to_string())?;
    let second = if once {
        None
    } else {
        std::thread::sleep(PERIOD);
        Some(read_all(&region, geom).map_err(|e| e.to_string())?)
    };
    // For --once, a block without dead_ms (older writers) is judged by the
    // configured threshold.
    let fallback_dead_ms = std::env::var(timeouts::VAR_THRESHOLD)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(timeouts::DEFAULT_THRESHOLD as u64)
        * PERIOD.as_millis() as u64;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);

    println!(
        "{:>4}  {:>12}  {:>18}  {:>8}  {:>3}  STATE",
        "NODE", "SEQ", "GENERATION", "AGE", "CRC"
    );
    for n in 0..geom.blocks as usize {
        let latest = match &second {
            Some(s) => s[n].or(first[n]),
            None => first[n],
        };
        let Some(d) = latest else { continue };
        let b = d.block;
        let age = now - b.seq as i64;
        let live = match &second {
            Some(s) => match (first[n], s[n]) {
                (Some(a), Some(z)) => {
                    a.crc_ok()
                        && z.crc_ok()
                        && a.block.seq != z.block.seq
                        && z.block.generation != 0
                }
                _ => false,
            },
            None => {
                let dead_ms = if b.dead_ms != 0 {
                    b.dead_ms as i64
                } else {
                    fallback_dead_ms as i64
                };
                d.crc_ok() && b.generation != 0 && age * 1000 < dead_ms
            }
        };
        let mut note = String::new();
        if b.node as usize != n {
            note = format!("  (written by node {})", b.node);
        }
        if b.generation == 0 && d.crc_ok() {
            note.push_str("  (left cleanly)");
        }
        println!(
            "{:>4}  {:>12}  {:#018x}  {:>7}s  {:>3}  {}{}",
            n,
            b.seq,
            b.generation,
            age,
            if d.crc_ok() { "ok" } else { "BAD" },
            if live { "live" } else { "dead" },
            note
        );
    }
    Ok(())
}
