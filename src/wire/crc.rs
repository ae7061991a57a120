//! Linux `crc32_le`: reflected CRC-32 (poly 0xEDB88320) with a caller-given
//! seed and no final inversion. The kernel uses it with seed 0 for o2hb block
//! checksums and DLM domain keys, and seed `32 + region` for o2hb
//! negotiation keys.

/// `crc32_le(seed, data)` exactly as the kernel computes it.
pub fn crc32_le(seed: u32, data: &[u8]) -> u32 {
    // crc32fast implements zlib's CRC, which inverts the register on entry
    // and exit; undo both inversions to get the raw kernel variant.
    let mut hasher = crc32fast::Hasher::new_with_initial(!seed);
    hasher.update(data);
    !hasher.finalize()
}

/// The o2net key of a DLM domain: `crc32_le(0, name)`.
pub fn dlm_domain_key(domain: &[u8]) -> u32 {
    crc32_le(0, domain)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bitwise(seed: u32, data: &[u8]) -> u32 {
        let mut r = seed;
        for &b in data {
            r ^= b as u32;
            for _ in 0..8 {
                r = (r >> 1) ^ if r & 1 != 0 { 0xEDB8_8320 } else { 0 };
            }
        }
        r
    }

    #[test]
    fn kernel_test_vectors() {
        assert_eq!(crc32_le(0, b"123456789"), 0x2DFD_2D88);
        assert_eq!(dlm_domain_key(b"testdomain"), 0xC5C5_3CEA);
        assert_eq!(
            dlm_domain_key(b"B3B05E2FA1C34E3F9E6B0A1D2C3E4F50"),
            0x5CE2_0D8B
        );
        assert_eq!(dlm_domain_key(b"ocfs2"), 0xB26E_7456);
        assert_eq!(
            crc32_le(32, b"B3B05E2FA1C34E3F9E6B0A1D2C3E4F50"),
            0x6650_D059
        );
    }

    #[test]
    fn matches_bitwise_definition() {
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        for seed in [0u32, 1, 32, 0xFFFF_FFFF, 0x1234_5678] {
            assert_eq!(crc32_le(seed, &data), bitwise(seed, &data));
        }
    }
}
