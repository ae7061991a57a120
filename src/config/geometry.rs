//! Heartbeat region geometry (O2DLM_HEARTBEAT_* variables).

use super::timeouts::parse_u32;
use super::ConfigError;
use std::path::PathBuf;

pub const VAR_DEVICE: &str = "O2DLM_HEARTBEAT_DEVICE";
pub const VAR_BLOCK_BYTES: &str = "O2DLM_HEARTBEAT_BLOCK_BYTES";
pub const VAR_START_BLOCK: &str = "O2DLM_HEARTBEAT_START_BLOCK";
pub const VAR_BLOCKS: &str = "O2DLM_HEARTBEAT_BLOCKS";

pub const DEFAULT_BLOCK_BYTES: u32 = 512;
pub const DEFAULT_START_BLOCK: u64 = 1;
pub const DEFAULT_BLOCKS: u32 = 255;
pub const MIN_BLOCK_BYTES: u32 = 512;
pub const MAX_BLOCK_BYTES: u32 = 4096;
pub const MAX_BLOCKS: u32 = 255;

/// Where the heartbeat slots live: slot N is the `block_bytes` bytes at
/// `(start_block + N) * block_bytes` of `device`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatGeometry {
    pub device: PathBuf,
    pub block_bytes: u32,
    pub start_block: u64,
    pub blocks: u32,
}

impl HeartbeatGeometry {
    /// Byte offset of a slot.
    pub fn slot_offset(&self, slot: u8) -> u64 {
        (self.start_block + slot as u64) * self.block_bytes as u64
    }

    /// Byte length of the whole region.
    pub fn region_bytes(&self) -> u64 {
        self.blocks as u64 * self.block_bytes as u64
    }

    /// Reads the geometry variables; `device` overrides
    /// O2DLM_HEARTBEAT_DEVICE (the CLI takes it as an argument).
    pub fn from_lookup(
        get: &dyn Fn(&str) -> Option<String>,
        device: Option<PathBuf>,
    ) -> Result<HeartbeatGeometry, ConfigError> {
        let device = match device {
            Some(d) => d,
            None => match get(VAR_DEVICE) {
                Some(d) if !d.is_empty() => PathBuf::from(d),
                Some(_) => return Err(ConfigError::var(VAR_DEVICE, "is empty")),
                None => {
                    return Err(ConfigError::var(
                        VAR_DEVICE,
                        "not set (name the heartbeat block device or file)",
                    ))
                }
            },
        };
        let num = |var: &str| -> Result<Option<u64>, ConfigError> {
            match get(var) {
                None => Ok(None),
                Some(v) => {
                    let t = v.trim();
                    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(ConfigError::var(
                            var,
                            format!("'{v}' is not a decimal number"),
                        ));
                    }
                    t.parse::<u64>()
                        .map(Some)
                        .map_err(|_| ConfigError::var(var, format!("'{v}' is too large")))
                }
            }
        };
        let block_bytes = match get(VAR_BLOCK_BYTES) {
            None => DEFAULT_BLOCK_BYTES,
            Some(v) => parse_u32(&v).ok_or_else(|| {
                ConfigError::var(VAR_BLOCK_BYTES, format!("'{v}' is not a decimal number"))
            })?,
        };
        if !block_bytes.is_power_of_two()
            || !(MIN_BLOCK_BYTES..=MAX_BLOCK_BYTES).contains(&block_bytes)
        {
            return Err(ConfigError::var(
                VAR_BLOCK_BYTES,
                format!("{block_bytes} must be a power of two from 512 to 4096"),
            ));
        }
        let start_block = num(VAR_START_BLOCK)?.unwrap_or(DEFAULT_START_BLOCK);
        if start_block == 0 {
            return Err(ConfigError::var(
                VAR_START_BLOCK,
                "0 is refused (the kernel does not heartbeat from block 0)",
            ));
        }
        let blocks = num(VAR_BLOCKS)?.unwrap_or(DEFAULT_BLOCKS as u64);
        if !(1..=MAX_BLOCKS as u64).contains(&blocks) {
            return Err(ConfigError::var(
                VAR_BLOCKS,
                format!("{blocks} must be from 1 to {MAX_BLOCKS}"),
            ));
        }
        // The end of the region must be addressable as a file offset.
        let end = start_block
            .checked_add(blocks)
            .and_then(|b| b.checked_mul(block_bytes as u64))
            .filter(|&e| e <= i64::MAX as u64);
        if end.is_none() {
            return Err(ConfigError::var(
                VAR_START_BLOCK,
                format!("{start_block} puts the region beyond the largest file offset"),
            ));
        }
        Ok(HeartbeatGeometry {
            device,
            block_bytes,
            start_block,
            blocks: blocks as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn g(pairs: &[(&str, &str)]) -> Result<HeartbeatGeometry, ConfigError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        HeartbeatGeometry::from_lookup(&move |k| m.get(k).cloned(), None)
    }

    #[test]
    fn defaults() {
        let h = g(&[("O2DLM_HEARTBEAT_DEVICE", "/dev/sdb")]).unwrap();
        assert_eq!(h.device, PathBuf::from("/dev/sdb"));
        assert_eq!((h.block_bytes, h.start_block, h.blocks), (512, 1, 255));
        assert_eq!(h.slot_offset(0), 512);
        assert_eq!(h.slot_offset(1), 1024);
        let h = g(&[
            ("O2DLM_HEARTBEAT_DEVICE", "/dev/sdb"),
            ("O2DLM_HEARTBEAT_START_BLOCK", "3072"),
            ("O2DLM_HEARTBEAT_BLOCK_BYTES", "4096"),
            ("O2DLM_HEARTBEAT_BLOCKS", "16"),
        ])
        .unwrap();
        assert_eq!(h.slot_offset(1), 3073 * 4096);
        assert_eq!(h.region_bytes(), 16 * 4096);
    }

    #[test]
    fn errors() {
        let d = ("O2DLM_HEARTBEAT_DEVICE", "/dev/sdb");
        let e = |p: (&str, &str)| g(&[d, p]).unwrap_err().to_string();
        assert_eq!(
            g(&[]).unwrap_err().to_string(),
            "O2DLM_HEARTBEAT_DEVICE: not set (name the heartbeat block device or file)"
        );
        assert_eq!(
            g(&[("O2DLM_HEARTBEAT_DEVICE", "")])
                .unwrap_err()
                .to_string(),
            "O2DLM_HEARTBEAT_DEVICE: is empty"
        );
        assert_eq!(
            e(("O2DLM_HEARTBEAT_BLOCK_BYTES", "1000")),
            "O2DLM_HEARTBEAT_BLOCK_BYTES: 1000 must be a power of two from 512 to 4096"
        );
        assert!(e(("O2DLM_HEARTBEAT_BLOCK_BYTES", "256")).contains("power of two"));
        assert!(e(("O2DLM_HEARTBEAT_BLOCK_BYTES", "8192")).contains("power of two"));
        assert!(e(("O2DLM_HEARTBEAT_BLOCK_BYTES", "4k")).contains("'4k' is not a decimal number"));
        assert_eq!(
            e(("O2DLM_HEARTBEAT_START_BLOCK", "0")),
            "O2DLM_HEARTBEAT_START_BLOCK: 0 is refused (the kernel does not heartbeat from block 0)"
        );
        assert!(e(("O2DLM_HEARTBEAT_START_BLOCK", "x")).contains("not a decimal number"));
        assert!(
            e(("O2DLM_HEARTBEAT_START_BLOCK", "99999999999999999999999")).contains("too large")
        );
        assert!(e(("O2DLM_HEARTBEAT_START_BLOCK", "18014398509481983"))
            .contains("beyond the largest file offset"));
        assert_eq!(
            e(("O2DLM_HEARTBEAT_BLOCKS", "0")),
            "O2DLM_HEARTBEAT_BLOCKS: 0 must be from 1 to 255"
        );
        assert!(e(("O2DLM_HEARTBEAT_BLOCKS", "256")).contains("must be from 1 to 255"));
    }

    #[test]
    fn device_override() {
        let h = HeartbeatGeometry::from_lookup(&|_| None, Some(PathBuf::from("/tmp/hb"))).unwrap();
        assert_eq!(h.device, PathBuf::from("/tmp/hb"));
    }
}
