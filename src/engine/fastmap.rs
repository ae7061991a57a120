//! Small helpers for the engine's hot maps: lock names stored inline (no
//! heap allocation per lookup or per entry) and a cheap multiplicative
//! hasher. The keys are chosen by local callers only, never by peers, so a
//! DoS-resistant hash buys nothing here.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

/// Longest lock name the API accepts (31 bytes, see `api::LockId`) fits.
pub(crate) const NAME_MAX: usize = 32;

/// One lock name of one domain (the domain by its process-local index).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct NameKey {
    dom: u32,
    len: u8,
    bytes: [u8; NAME_MAX],
}

impl NameKey {
    /// None when the name is too long to be a lock name.
    pub(crate) fn new(dom: u32, name: &[u8]) -> Option<NameKey> {
        if name.len() > NAME_MAX {
            return None;
        }
        let mut bytes = [0u8; NAME_MAX];
        bytes[..name.len()].copy_from_slice(name);
        Some(NameKey {
            dom,
            len: name.len() as u8,
            bytes,
        })
    }

    pub(crate) fn dom(&self) -> u32 {
        self.dom
    }

    pub(crate) fn name(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

impl Hash for NameKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        h.write_u32(self.dom);
        h.write(self.name());
    }
}

impl std::fmt::Debug for NameKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.dom, String::from_utf8_lossy(self.name()))
    }
}

/// Word-at-a-time multiply-rotate hashing (the scheme rustc uses inside
/// the compiler): a few cycles per word.
#[derive(Default, Clone, Copy)]
pub(crate) struct FastHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            // The length keeps "a" and "a\0" apart.
            self.add(u64::from_le_bytes(w) ^ ((rest.len() as u64) << 56));
        }
    }

    #[inline]
    fn write_u8(&mut self, i: u8) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u32(&mut self, i: u32) {
        self.add(i as u64);
    }

    #[inline]
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }

    #[inline]
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FastHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_domain_and_name() {
        let a = NameKey::new(1, b"lock").unwrap();
        assert_eq!(a.name(), b"lock");
        assert_eq!(a, NameKey::new(1, b"lock").unwrap());
        assert_ne!(a, NameKey::new(2, b"lock").unwrap());
        assert_ne!(a, NameKey::new(1, b"lock\0").unwrap());
        assert!(NameKey::new(1, &[b'x'; NAME_MAX]).is_some());
        assert!(NameKey::new(1, &[b'x'; NAME_MAX + 1]).is_none());
        let mut m: FastMap<NameKey, u32> = FastMap::default();
        for i in 0..1000u32 {
            m.insert(NameKey::new(i % 3, format!("n{i}").as_bytes()).unwrap(), i);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.get(&NameKey::new(7 % 3, b"n7").unwrap()), Some(&7));
        assert_eq!(m.get(&NameKey::new(0, b"n7").unwrap()), None);
    }
}
