//! o2net handshake and message header.
//!
//! Everything on an o2net connection is big-endian. Each direction of a TCP
//! connection starts with one 32-byte [`Handshake`], followed by frames: a
//! 24-byte [`MsgHeader`] and `data_len` payload bytes.

use crate::wire::WireError;

/// The only protocol version current kernels accept (exact match).
pub const PROTOCOL_VERSION: u64 = 11;
/// Request carrying a handler payload.
pub const MSG_MAGIC: u16 = 0xFA55;
/// Status reply to a request (no payload).
pub const STATUS_MAGIC: u16 = 0xFA56;
/// Keepalive request (header only).
pub const KEEP_REQ_MAGIC: u16 = 0xFA57;
/// Keepalive response (header only).
pub const KEEP_RESP_MAGIC: u16 = 0xFA58;
/// Size of the frame header.
pub const HEADER_LEN: usize = 24;
/// Size of the handshake each side sends first.
pub const HANDSHAKE_LEN: usize = 32;
/// Largest payload: a whole frame never exceeds 4096 bytes.
pub const MAX_PAYLOAD: usize = 4096 - HEADER_LEN;
/// The connector id Linux always sends (receivers ignore it).
pub const CONNECTOR_ID: u64 = 1;

/// `sys_status`: the handler ran; `status` holds its return value.
pub const SYS_ERR_NONE: u32 = 0;
/// `sys_status`: no handler registered for (msg_type, key).
pub const SYS_ERR_NO_HANDLER: u32 = 1;
/// `sys_status`: payload longer than the handler's registered maximum.
pub const SYS_ERR_OVERFLOW: u32 = 2;
/// Local-only pseudo status for requests lost with their connection.
pub const SYS_ERR_DIED: u32 = 3;

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

/// The 32-byte connection handshake (`struct o2net_handshake`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Handshake {
    pub protocol_version: u64,
    pub connector_id: u64,
    pub o2hb_heartbeat_timeout_ms: u32,
    pub idle_timeout_ms: u32,
    pub keepalive_delay_ms: u32,
    pub reconnect_delay_ms: u32,
}

impl Handshake {
    /// Serialises to the exact wire bytes.
    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0..8].copy_from_slice(&self.protocol_version.to_be_bytes());
        out[8..16].copy_from_slice(&self.connector_id.to_be_bytes());
        out[16..20].copy_from_slice(&self.o2hb_heartbeat_timeout_ms.to_be_bytes());
        out[20..24].copy_from_slice(&self.idle_timeout_ms.to_be_bytes());
        out[24..28].copy_from_slice(&self.keepalive_delay_ms.to_be_bytes());
        out[28..32].copy_from_slice(&self.reconnect_delay_ms.to_be_bytes());
        out
    }

    /// Parses the first 32 bytes of `buf`. Field values are not validated
    /// here: comparing them with local settings is the connection's job.
    pub fn decode(buf: &[u8]) -> Result<Handshake, WireError> {
        if buf.len() < HANDSHAKE_LEN {
            return Err(WireError::Short {
                what: "o2net handshake",
                need: HANDSHAKE_LEN,
                have: buf.len(),
            });
        }
        Ok(Handshake {
            protocol_version: be64(buf, 0),
            connector_id: be64(buf, 8),
            o2hb_heartbeat_timeout_ms: be32(buf, 16),
            idle_timeout_ms: be32(buf, 20),
            keepalive_delay_ms: be32(buf, 24),
            reconnect_delay_ms: be32(buf, 28),
        })
    }
}

/// The 24-byte frame header (`struct o2net_msg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsgHeader {
    pub magic: u16,
    pub data_len: u16,
    pub msg_type: u16,
    pub pad1: u16,
    pub sys_status: u32,
    pub status: i32,
    pub key: u32,
    pub msg_num: u32,
}

impl MsgHeader {
    /// A request header (magic 0xFA55) with every other field zero.
    pub fn request(msg_type: u16, key: u32, msg_num: u32, data_len: u16) -> MsgHeader {
        MsgHeader {
            magic: MSG_MAGIC,
            data_len,
            msg_type,
            pad1: 0,
            sys_status: 0,
            status: 0,
            key,
            msg_num,
        }
    }

    /// The reply Linux builds: the received header with magic 0xFA56,
    /// data_len 0 and the two status fields replaced; msg_type, pad1, key
    /// and msg_num are echoed so the requester can match it.
    pub fn status_reply(request: &MsgHeader, sys_status: u32, status: i32) -> MsgHeader {
        MsgHeader {
            magic: STATUS_MAGIC,
            data_len: 0,
            sys_status,
            status,
            ..*request
        }
    }

    /// Keepalive request: magic 0xFA57, all other fields zero.
    pub fn keepalive_request() -> MsgHeader {
        Self::bare(KEEP_REQ_MAGIC)
    }

    /// Keepalive response: magic 0xFA58, all other fields zero.
    pub fn keepalive_response() -> MsgHeader {
        Self::bare(KEEP_RESP_MAGIC)
    }

    fn bare(magic: u16) -> MsgHeader {
        MsgHeader {
            magic,
            data_len: 0,
            msg_type: 0,
            pad1: 0,
            sys_status: 0,
            status: 0,
            key: 0,
            msg_num: 0,
        }
    }

    /// Serialises to the exact wire bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..2].copy_from_slice(&self.magic.to_be_bytes());
        out[2..4].copy_from_slice(&self.data_len.to_be_bytes());
        out[4..6].copy_from_slice(&self.msg_type.to_be_bytes());
        out[6..8].copy_from_slice(&self.pad1.to_be_bytes());
        out[8..12].copy_from_slice(&self.sys_status.to_be_bytes());
        out[12..16].copy_from_slice(&self.status.to_be_bytes());
        out[16..20].copy_from_slice(&self.key.to_be_bytes());
        out[20..24].copy_from_slice(&self.msg_num.to_be_bytes());
        out
    }

    /// Parses the first 24 bytes of `buf`. Rejects what the kernel would
    /// tear the connection down for: an unknown magic or an oversize
    /// data_len. Other fields are passed through unchecked.
    pub fn decode(buf: &[u8]) -> Result<MsgHeader, WireError> {
        if buf.len() < HEADER_LEN {
            return Err(WireError::Short {
                what: "o2net header",
                need: HEADER_LEN,
                have: buf.len(),
            });
        }
        let magic = be16(buf, 0);
        if !(MSG_MAGIC..=KEEP_RESP_MAGIC).contains(&magic) {
            return Err(WireError::BadMagic {
                what: "o2net header",
                magic: u32::from(magic),
            });
        }
        let data_len = be16(buf, 2);
        if usize::from(data_len) > MAX_PAYLOAD {
            return Err(WireError::TooLong {
                what: "o2net payload",
                len: usize::from(data_len),
                max: MAX_PAYLOAD,
            });
        }
        Ok(MsgHeader {
            magic,
            data_len,
            msg_type: be16(buf, 4),
            pad1: be16(buf, 6),
            sys_status: be32(buf, 8),
            status: be32(buf, 12) as i32,
            key: be32(buf, 16),
            msg_num: be32(buf, 20),
        })
    }

    /// Header plus payload length of the frame this header starts.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + usize::from(self.data_len)
    }
}

/// A complete frame at the front of `buf`: Ok(Some((header, total_len))) when header+payload
/// are all present, Ok(None) when more bytes are needed, Err on a bad header.
pub fn peek_frame(buf: &[u8]) -> Result<Option<(MsgHeader, usize)>, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let hdr = MsgHeader::decode(buf)?;
    let total = hdr.frame_len();
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((hdr, total)))
}

/// A whole request frame (header then payload) ready to write. Fails only
/// for a payload longer than [`MAX_PAYLOAD`], which no peer would accept.
pub fn request_frame(
    msg_type: u16,
    key: u32,
    msg_num: u32,
    payload: &[u8],
) -> Result<Vec<u8>, WireError> {
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::TooLong {
            what: "o2net payload",
            len: payload.len(),
            max: MAX_PAYLOAD,
        });
    }
    let hdr = MsgHeader::request(msg_type, key, msg_num, payload.len() as u16);
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&hdr.encode());
    out.extend_from_slice(payload);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_golden_defaults() {
        let hs = Handshake {
            protocol_version: PROTOCOL_VERSION,
            connector_id: CONNECTOR_ID,
            o2hb_heartbeat_timeout_ms: 60000,
            idle_timeout_ms: 30000,
            keepalive_delay_ms: 2000,
            reconnect_delay_ms: 2000,
        };
        let want: [u8; 32] = [
            0, 0, 0, 0, 0, 0, 0, 0x0b, 0, 0, 0, 0, 0, 0, 0, 0x01, 0, 0, 0xea, 0x60, 0, 0, 0x75,
            0x30, 0, 0, 0x07, 0xd0, 0, 0, 0x07, 0xd0,
        ];
        assert_eq!(hs.encode(), want);
        assert_eq!(Handshake::decode(&want), Ok(hs));
        // Extra bytes after the handshake are ignored.
        let mut longer = want.to_vec();
        longer.extend_from_slice(&[0xfa, 0x55]);
        assert_eq!(Handshake::decode(&longer), Ok(hs));
        assert!(matches!(
            Handshake::decode(&want[..31]),
            Err(WireError::Short {
                need: 32,
                have: 31,
                ..
            })
        ));
    }

    #[test]
    fn query_join_request_header_golden() {
        let h = MsgHeader::request(510, 0x666C_6172, 7, 104);
        let want: [u8; 24] = [
            0xfa, 0x55, 0x00, 0x68, 0x01, 0xfe, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x66, 0x6c, 0x61,
            0x72, 0, 0, 0, 0x07,
        ];
        assert_eq!(h.encode(), want);
        assert_eq!(MsgHeader::decode(&want), Ok(h));
    }

    #[test]
    fn status_reply_golden_join_ok() {
        let req = MsgHeader::request(510, 0x666C_6172, 7, 104);
        // JOIN_OK (1), dlm minor 3, fs minor 0 packed big-endian into status.
        let r = MsgHeader::status_reply(&req, SYS_ERR_NONE, 0x0103_0000);
        let want: [u8; 24] = [
            0xfa, 0x56, 0, 0, 0x01, 0xfe, 0, 0, 0, 0, 0, 0, 0x01, 0x03, 0, 0, 0x66, 0x6c, 0x61,
            0x72, 0, 0, 0, 0x07,
        ];
        assert_eq!(r.encode(), want);
        assert_eq!(MsgHeader::decode(&want), Ok(r));
    }

    #[test]
    fn status_reply_no_handler_and_negative_status() {
        let mut req = MsgHeader::request(0x1234, 0xdead_beef, 0x0102_0304, 10);
        req.pad1 = 0x0506; // echoed as received
        let r = MsgHeader::status_reply(&req, SYS_ERR_NO_HANDLER, 0);
        let b = r.encode();
        assert_eq!(
            b,
            [
                0xfa, 0x56, 0, 0, 0x12, 0x34, 0x05, 0x06, 0, 0, 0, 1, 0, 0, 0, 0, 0xde, 0xad, 0xbe,
                0xef, 1, 2, 3, 4
            ]
        );
        let e = MsgHeader::status_reply(&req, SYS_ERR_NONE, -22);
        assert_eq!(&e.encode()[12..16], &[0xff, 0xff, 0xff, 0xea]);
        assert_eq!(MsgHeader::decode(&e.encode()).map(|h| h.status), Ok(-22));
    }

    #[test]
    fn keepalives() {
        let mut want = [0u8; 24];
        want[0] = 0xfa;
        want[1] = 0x57;
        assert_eq!(MsgHeader::keepalive_request().encode(), want);
        want[1] = 0x58;
        assert_eq!(MsgHeader::keepalive_response().encode(), want);
    }

    #[test]
    fn decode_rejects_bad_magic_and_length() {
        let mut b = MsgHeader::request(1, 2, 3, 0).encode();
        b[1] = 0x54;
        assert!(matches!(
            MsgHeader::decode(&b),
            Err(WireError::BadMagic { magic: 0xfa54, .. })
        ));
        b[1] = 0x59;
        assert!(matches!(
            MsgHeader::decode(&b),
            Err(WireError::BadMagic { magic: 0xfa59, .. })
        ));
        let mut b = MsgHeader::request(1, 2, 3, 4072).encode();
        assert!(MsgHeader::decode(&b).is_ok());
        b[2..4].copy_from_slice(&4073u16.to_be_bytes());
        assert!(matches!(
            MsgHeader::decode(&b),
            Err(WireError::TooLong {
                len: 4073,
                max: 4072,
                ..
            })
        ));
        assert!(matches!(
            MsgHeader::decode(&b[..23]),
            Err(WireError::Short {
                need: 24,
                have: 23,
                ..
            })
        ));
    }

    #[test]
    fn request_frame_bounds() {
        let f = request_frame(513, 0xC5C5_3CEA, 2, &[1, 0, 0, 0]).unwrap();
        assert_eq!(f.len(), 28);
        assert_eq!(peek_frame(&f).unwrap().map(|x| x.1), Some(28));
        assert_eq!(&f[24..], &[1, 0, 0, 0]);
        assert!(request_frame(1, 2, 3, &[0; MAX_PAYLOAD]).is_ok());
        assert!(request_frame(1, 2, 3, &[0; MAX_PAYLOAD + 1]).is_err());
    }

    #[test]
    fn peek_frame_cases() {
        let h = MsgHeader::request(502, 1, 0, 3);
        let mut buf = h.encode().to_vec();
        assert_eq!(peek_frame(&buf[..10]), Ok(None));
        assert_eq!(peek_frame(&buf), Ok(None));
        buf.extend_from_slice(&[1, 2]);
        assert_eq!(peek_frame(&buf), Ok(None));
        buf.extend_from_slice(&[3]);
        assert_eq!(peek_frame(&buf), Ok(Some((h, 27))));
        buf.extend_from_slice(&MsgHeader::keepalive_request().encode());
        assert_eq!(peek_frame(&buf), Ok(Some((h, 27))));
        assert_eq!(
            peek_frame(&buf[27..]),
            Ok(Some((MsgHeader::keepalive_request(), 24)))
        );
        let mut bad = buf.clone();
        bad[0] = 0;
        assert!(peek_frame(&bad).is_err());
    }
}
