//! The o2hb on-disk heartbeat block.
//!
//! One slot per node, `block_bytes` (512..4096) long. Only the first 28
//! bytes carry fields (little-endian); the rest of the slot is written as
//! zeros and is covered by the checksum, which is the kernel's `crc32_le`
//! with seed 0 over the whole slot with the checksum field taken as zero.
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 8 | seq: writer's wall clock, seconds |
//! | 8 | 1 | node number |
//! | 9 | 3 | zero |
//! | 12 | 4 | checksum |
//! | 16 | 8 | generation (0 in the final "leaving" block) |
//! | 24 | 4 | dead_ms |
//! | 28.. | | zero |

use super::crc::crc32_le;
use super::WireError;

/// Bytes of the slot that hold fields (struct size with tail padding).
pub const HB_HEADER_BYTES: usize = 32;
pub const MIN_BLOCK_BYTES: usize = 512;
pub const MAX_BLOCK_BYTES: usize = 4096;

const CKSUM_AT: usize = 12;

/// The fields of one heartbeat block.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HbBlock {
    pub seq: u64,
    pub node: u8,
    pub generation: u64,
    pub dead_ms: u32,
}

/// A decoded slot: its fields and whether its checksum holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodedHb {
    pub block: HbBlock,
    pub stored_cksum: u32,
    pub computed_cksum: u32,
}

impl DecodedHb {
    pub fn crc_ok(&self) -> bool {
        self.stored_cksum == self.computed_cksum
    }

    /// The block as a `Result`, for callers that only accept good blocks.
    pub fn checked(self) -> Result<HbBlock, WireError> {
        if self.crc_ok() {
            Ok(self.block)
        } else {
            Err(WireError::BadChecksum {
                what: "o2hb block",
                stored: self.stored_cksum,
                computed: self.computed_cksum,
            })
        }
    }
}

/// The checksum of a slot, with bytes 12..16 counted as zero. The slot
/// must be at least 16 bytes (callers check).
fn slot_checksum(slot: &[u8]) -> u32 {
    // crc32_le has no final inversion, so it can be chained piecewise.
    let c = crc32_le(0, &slot[..CKSUM_AT]);
    let c = crc32_le(c, &[0u8; 4]);
    crc32_le(c, &slot[CKSUM_AT + 4..])
}

fn check_len(len: usize) -> Result<(), WireError> {
    if len < MIN_BLOCK_BYTES {
        return Err(WireError::Short {
            what: "o2hb block",
            need: MIN_BLOCK_BYTES,
            have: len,
        });
    }
    if len > MAX_BLOCK_BYTES || !len.is_power_of_two() {
        return Err(WireError::BadField {
            what: "o2hb block",
            field: "block_bytes",
            value: len as u64,
        });
    }
    Ok(())
}

/// Writes `block` into `slot` (the whole slot: everything past the fields
/// is zeroed) and stores the checksum last, as the kernel does.
pub fn encode_into(block: &HbBlock, slot: &mut [u8]) -> Result<(), WireError> {
    check_len(slot.len())?;
    slot.fill(0);
    slot[0..8].copy_from_slice(&block.seq.to_le_bytes());
    slot[8] = block.node;
    slot[16..24].copy_from_slice(&block.generation.to_le_bytes());
    slot[24..28].copy_from_slice(&block.dead_ms.to_le_bytes());
    let c = slot_checksum(slot);
    slot[CKSUM_AT..CKSUM_AT + 4].copy_from_slice(&c.to_le_bytes());
    Ok(())
}

/// A freshly allocated slot of `block_bytes` holding `block`.
pub fn encode(block: &HbBlock, block_bytes: usize) -> Result<Vec<u8>, WireError> {
    check_len(block_bytes)?;
    let mut v = vec![0u8; block_bytes];
    encode_into(block, &mut v)?;
    Ok(v)
}

/// Decodes one whole slot. A bad checksum is reported in the result, not
/// as an error, because readers treat it differently depending on state;
/// only a slice that cannot be a slot at all is an error.
pub fn decode(slot: &[u8]) -> Result<DecodedHb, WireError> {
    check_len(slot.len())?;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&slot[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |o: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&slot[o..o + 4]);
        u32::from_le_bytes(b)
    };
    Ok(DecodedHb {
        block: HbBlock {
            seq: u64_at(0),
            node: slot[8],
            generation: u64_at(16),
            dead_ms: u32_at(24),
        },
        stored_cksum: u32_at(CKSUM_AT),
        computed_cksum: slot_checksum(slot),
    })
}

/// True for a slot nobody has written (all zero bytes).
pub fn is_blank(slot: &[u8]) -> bool {
    slot.iter().all(|&b| b == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// §9 of the reference: node 1, seq 0x6650A1C3, generation
    /// 0x0123456789ABCDEF, dead_ms 62000.
    fn example() -> HbBlock {
        HbBlock {
            seq: 0x6650_A1C3,
            node: 1,
            generation: 0x0123_4567_89AB_CDEF,
            dead_ms: 62000,
        }
    }

    #[test]
    fn golden_worked_example() {
        let b = encode(&example(), 512).unwrap();
        let head: [u8; 32] = [
            0xc3, 0xa1, 0x50, 0x66, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x25, 0x7d,
            0xda, 0xde, 0xef, 0xcd, 0xab, 0x89, 0x67, 0x45, 0x23, 0x01, 0x30, 0xf2, 0x00, 0x00,
            0x00, 0x00, 0x00, 0x00,
        ];
        assert_eq!(&b[..32], &head);
        assert!(b[32..].iter().all(|&x| x == 0));
        let d = decode(&b).unwrap();
        assert!(d.crc_ok());
        assert_eq!(d.stored_cksum, 0xDEDA_7D25);
        assert_eq!(d.block, example());
    }

    #[test]
    fn golden_leaving_block() {
        let leave = HbBlock {
            seq: 0x6650_A1C5,
            generation: 0,
            ..example()
        };
        let b = encode(&leave, 512).unwrap();
        assert_eq!(&b[12..16], &0x96BF_05C5u32.to_le_bytes());
        assert!(decode(&b).unwrap().crc_ok());
    }

    #[test]
    fn crc_covers_whole_slot() {
        let mut b = encode(&example(), 512).unwrap();
        b[511] = 1;
        let d = decode(&b).unwrap();
        assert!(!d.crc_ok());
        assert_eq!(d.stored_cksum, 0xDEDA_7D25);
        assert!(matches!(
            d.checked(),
            Err(WireError::BadChecksum {
                stored: 0xDEDA_7D25,
                ..
            })
        ));
        // A never-written slot passes with checksum 0 (seed 0, no inversion).
        let z = decode(&[0u8; 512]).unwrap();
        assert!(z.crc_ok());
        assert_eq!(z.block, HbBlock::default());
        assert!(is_blank(&[0u8; 512]));
        assert!(!is_blank(&b));
    }

    #[test]
    fn bad_lengths_are_errors() {
        assert_eq!(
            decode(&[0u8; 31]),
            Err(WireError::Short {
                what: "o2hb block",
                need: 512,
                have: 31
            })
        );
        assert!(decode(&[]).is_err());
        assert!(decode(&[0u8; 1000]).is_err());
        assert!(decode(&[0u8; 8192]).is_err());
        assert!(encode(&example(), 256).is_err());
        assert!(encode_into(&example(), &mut [0u8; 600]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(seq: u64, node: u8, generation: u64, dead_ms: u32, shift in 0u32..4) {
            let size = 512usize << shift;
            let blk = HbBlock { seq, node, generation, dead_ms };
            let b = encode(&blk, size).unwrap();
            prop_assert_eq!(b.len(), size);
            let d = decode(&b).unwrap();
            prop_assert!(d.crc_ok());
            prop_assert_eq!(d.block, blk);
        }

        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..5000)) {
            let _ = decode(&data);
        }

        #[test]
        fn garbage_fails_crc(data in proptest::collection::vec(any::<u8>(), 512..=512)) {
            // Random bytes only pass when their stored checksum happens to be
            // right; make sure it is not by construction.
            let mut data = data;
            let c = slot_checksum(&data);
            data[12..16].copy_from_slice(&(c ^ 1).to_le_bytes());
            prop_assert!(!decode(&data).unwrap().crc_ok());
        }
    }
}
