//! Value types shared by several o2dlm messages, and the small byte helpers
//! the codecs use.

use super::{DLM_LVB_LEN, O2NM_MAX_NODES};
use crate::wire::WireError;
use std::fmt;

/// A lock value block: always 64 bytes on the wire.
pub type Lvb = [u8; DLM_LVB_LEN];

/// A name of at most `N` bytes (lock names: 32, domain names: 64), carried
/// on the wire as a length byte plus a zero-padded fixed field. The bytes are
/// arbitrary (not necessarily UTF-8, no NUL terminator). Constructing one
/// checks the length, so encoders never have to truncate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name<const N: usize> {
    len: u8,
    // Bytes past `len` are always zero, so derived Eq/Hash/Ord are by content.
    bytes: [u8; N],
}

/// Lock resource name (DLM_LOCKID_NAME_MAX = 32 bytes).
pub type LockName = Name<32>;
/// Domain name (the wire field is 64 bytes).
pub type DomainName = Name<64>;

impl<const N: usize> Name<N> {
    /// The longest name this type holds.
    pub const MAX: usize = N;

    /// Fails when `bytes` is longer than `N`.
    pub fn new(bytes: &[u8]) -> Result<Self, WireError> {
        if bytes.len() > N || bytes.len() > usize::from(u8::MAX) {
            return Err(WireError::TooLong {
                what: "o2dlm name",
                len: bytes.len(),
                max: N,
            });
        }
        let mut b = [0u8; N];
        b[..bytes.len()].copy_from_slice(bytes);
        Ok(Name {
            len: bytes.len() as u8,
            bytes: b,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }

    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The wire length byte.
    pub(crate) fn len_u8(&self) -> u8 {
        self.len
    }

    /// Reads a name given its length byte and its fixed field. Bytes of the
    /// field past `len` are ignored (Linux senders zero them; receivers never
    /// look at them).
    pub(crate) fn from_field(what: &'static str, len: u8, field: &[u8]) -> Result<Self, WireError> {
        let l = usize::from(len);
        if l > N || l > field.len() {
            return Err(WireError::BadField {
                what,
                field: "namelen",
                value: u64::from(len),
            });
        }
        Self::new(&field[..l])
    }

    /// Appends the name zero-padded to a `field`-byte wire field.
    pub(crate) fn put_field(&self, out: &mut Vec<u8>, field: usize) {
        let n = self.as_bytes();
        out.extend_from_slice(n);
        out.resize(out.len() + field.saturating_sub(n.len()), 0);
    }
}

impl<const N: usize> fmt::Debug for Name<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.as_bytes().escape_ascii())
    }
}

impl<const N: usize> fmt::Display for Name<N> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.as_bytes().escape_ascii())
    }
}

impl<const N: usize> TryFrom<&[u8]> for Name<N> {
    type Error = WireError;
    fn try_from(b: &[u8]) -> Result<Self, WireError> {
        Self::new(b)
    }
}

impl<const N: usize> TryFrom<&str> for Name<N> {
    type Error = WireError;
    fn try_from(s: &str) -> Result<Self, WireError> {
        Self::new(s.as_bytes())
    }
}

/// A node bitmap as QUERY_JOIN carries it: 32 bytes, node n is bit (n & 7)
/// of byte n >> 3 (least significant bit first).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct NodeMap(pub [u8; 32]);

impl NodeMap {
    pub fn new() -> Self {
        NodeMap([0; 32])
    }

    /// A map with exactly the given nodes set (nodes ≥ 255 are ignored:
    /// 255 is "no node").
    pub fn from_nodes(nodes: impl IntoIterator<Item = u8>) -> Self {
        let mut m = Self::new();
        for n in nodes {
            m.set(n);
        }
        m
    }

    pub fn set(&mut self, node: u8) {
        if usize::from(node) < O2NM_MAX_NODES {
            self.0[usize::from(node >> 3)] |= 1 << (node & 7);
        }
    }

    pub fn clear(&mut self, node: u8) {
        self.0[usize::from(node >> 3)] &= !(1 << (node & 7));
    }

    pub fn test(&self, node: u8) -> bool {
        self.0[usize::from(node >> 3)] & (1 << (node & 7)) != 0
    }

    /// Set nodes in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u8> + '_ {
        (0..=u8::MAX).filter(move |&n| self.test(n))
    }
}

impl fmt::Debug for NodeMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// `struct dlm_protocol_version`: {major, minor}, one byte each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProtocolVersion {
    pub major: u8,
    pub minor: u8,
}

/// Lock cookie: creating node in the top byte, per-node sequence in the low
/// 56 bits.
pub fn make_cookie(node: u8, seq: u64) -> u64 {
    (u64::from(node) << 56) | (seq & COOKIE_SEQ_MASK)
}

/// The node that created a lock, from its cookie.
pub fn cookie_node(cookie: u64) -> u8 {
    (cookie >> 56) as u8
}

/// The per-node sequence number of a cookie.
pub fn cookie_seq(cookie: u64) -> u64 {
    cookie & COOKIE_SEQ_MASK
}

/// Low 56 bits of a cookie.
pub const COOKIE_SEQ_MASK: u64 = (1 << 56) - 1;

/// The answer to QUERY_JOIN, which travels in the o2net reply's `status`:
/// the four bytes (code, dlm_minor, fs_minor, reserved) read as a
/// big-endian integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QueryJoinResponse {
    pub code: u8,
    pub dlm_minor: u8,
    pub fs_minor: u8,
    pub reserved: u8,
}

impl QueryJoinResponse {
    /// A response with the given code and minors (reserved byte zero).
    pub fn new(code: u8, dlm_minor: u8, fs_minor: u8) -> Self {
        QueryJoinResponse {
            code,
            dlm_minor,
            fs_minor,
            reserved: 0,
        }
    }

    pub fn to_status(self) -> i32 {
        i32::from_be_bytes([self.code, self.dlm_minor, self.fs_minor, self.reserved])
    }

    pub fn from_status(status: i32) -> Self {
        let [code, dlm_minor, fs_minor, reserved] = status.to_be_bytes();
        QueryJoinResponse {
            code,
            dlm_minor,
            fs_minor,
            reserved,
        }
    }
}

/// `struct dlm_node_info` (QUERY_NODEINFO entry): node number, o2net port
/// and IPv4 address, both in network byte order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeInfo {
    pub num: u8,
    pub port: u16,
    pub addr: std::net::Ipv4Addr,
}

/// Checks that a payload has exactly the length its layout implies. Shorter
/// input cannot be parsed; longer input would carry bytes a re-encode could
/// not reproduce (Linux always sends exact lengths).
pub(crate) fn exact_len(what: &'static str, buf: &[u8], want: usize) -> Result<(), WireError> {
    if buf.len() < want {
        Err(WireError::Short {
            what,
            need: want,
            have: buf.len(),
        })
    } else if buf.len() > want {
        Err(WireError::TooLong {
            what,
            len: buf.len(),
            max: want,
        })
    } else {
        Ok(())
    }
}

// Field readers. Callers check the length first, so the slices are in
// bounds; they still return zero rather than panic if that is ever wrong.
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_be_bytes([s[0], s[1]]))
}

pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub(crate) fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        a.copy_from_slice(s);
    }
    u64::from_be_bytes(a)
}

pub(crate) fn byte(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

pub(crate) fn array<const M: usize>(b: &[u8], at: usize) -> [u8; M] {
    let mut a = [0u8; M];
    if let Some(s) = b.get(at..at + M) {
        a.copy_from_slice(s);
    }
    a
}

pub(crate) fn field(b: &[u8], at: usize, len: usize) -> &[u8] {
    b.get(at..at + len).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        let n = LockName::new(b"mylock").unwrap();
        assert_eq!(n.as_bytes(), b"mylock");
        assert_eq!(n.len(), 6);
        assert_eq!(format!("{n:?}"), "\"mylock\"");
        assert!(LockName::new(&[b'x'; 32]).is_ok());
        assert!(LockName::new(&[b'x'; 33]).is_err());
        assert!(DomainName::new(&[b'x'; 64]).is_ok());
        let mut out = Vec::new();
        n.put_field(&mut out, 64);
        assert_eq!(out.len(), 64);
        assert_eq!(&out[..6], b"mylock");
        assert!(out[6..].iter().all(|&b| b == 0));
        assert_eq!(LockName::from_field("t", 6, &out), Ok(n));
        assert!(LockName::from_field("t", 33, &out).is_err());
    }

    #[test]
    fn node_map_bits() {
        let m = NodeMap::from_nodes([0, 2, 9, 254, 255]);
        assert_eq!(m.0[0], 0x05);
        assert_eq!(m.0[1], 0x02);
        assert_eq!(m.0[31], 0x40);
        assert_eq!(m.iter().collect::<Vec<_>>(), vec![0, 2, 9, 254]);
        let mut m = m;
        m.clear(2);
        assert!(!m.test(2) && m.test(0));
    }

    #[test]
    fn cookies_and_join_response() {
        let c = make_cookie(2, 0x11);
        assert_eq!(c.to_be_bytes(), [2, 0, 0, 0, 0, 0, 0, 0x11]);
        assert_eq!((cookie_node(c), cookie_seq(c)), (2, 0x11));
        let ok = QueryJoinResponse::new(1, 3, 0);
        assert_eq!(ok.to_status(), 0x0103_0000);
        assert_eq!(QueryJoinResponse::from_status(0x0200_0000).code, 2);
        assert_eq!(QueryJoinResponse::from_status(ok.to_status()), ok);
    }
}
