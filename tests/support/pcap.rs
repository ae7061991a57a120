//! A small, test-only packet capture reader: classic libpcap files (either
//! byte order, micro- or nanosecond stamps), Ethernet / Linux cooked / raw
//! IPv4 link layers, IPv4 + TCP parsing, and per-direction TCP stream
//! reassembly by sequence number.
//!
//! Errors are plain strings: this only ever runs inside tests, where a
//! readable message is all that matters.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// One captured frame.
#[derive(Debug, Clone)]
pub struct Packet {
    /// 1-based frame number, as Wireshark counts.
    pub frame: usize,
    pub ts_sec: u32,
    pub ts_frac: u32,
    /// Link-layer header type of the file.
    pub linktype: u32,
    pub data: Vec<u8>,
}

const LINKTYPE_ETHERNET: u32 = 1;
const LINKTYPE_RAW: u32 = 101;
const LINKTYPE_LINUX_SLL: u32 = 113;
const LINKTYPE_LINUX_SLL2: u32 = 276;

fn rd32(b: &[u8], at: usize, big: bool) -> Result<u32, String> {
    let s = b
        .get(at..at + 4)
        .ok_or_else(|| format!("pcap truncated at byte {at}"))?;
    let a = [s[0], s[1], s[2], s[3]];
    Ok(if big {
        u32::from_be_bytes(a)
    } else {
        u32::from_le_bytes(a)
    })
}

/// Parses a whole classic pcap file.
pub fn read_pcap(bytes: &[u8]) -> Result<Vec<Packet>, String> {
    if bytes.len() < 24 {
        return Err(format!(
            "pcap header needs 24 bytes, file has {}",
            bytes.len()
        ));
    }
    let magic_le = u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    // Magic read little-endian tells both the writer's byte order and the
    // timestamp resolution.
    let big = match magic_le {
        0xa1b2_c3d4 | 0xa1b2_3c4d => false,
        0xd4c3_b2a1 | 0x4d3c_b2a1 => true,
        0x0a0d_0d0a => return Err("pcapng files are not supported".into()),
        m => return Err(format!("not a pcap file (magic {m:#010x})")),
    };
    let linktype = rd32(bytes, 20, big)? & 0x0fff_ffff;
    let mut out = Vec::new();
    let mut at = 24usize;
    while at < bytes.len() {
        let ts_sec = rd32(bytes, at, big)?;
        let ts_frac = rd32(bytes, at + 4, big)?;
        let caplen = rd32(bytes, at + 8, big)? as usize;
        let wirelen = rd32(bytes, at + 12, big)? as usize;
        let start = at + 16;
        let data = bytes
            .get(start..start.saturating_add(caplen))
            .ok_or_else(|| format!("pcap record {} truncated", out.len() + 1))?;
        if caplen != wirelen {
            return Err(format!(
                "frame {} was cut by the snap length ({caplen} of {wirelen} bytes)",
                out.len() + 1
            ));
        }
        out.push(Packet {
            frame: out.len() + 1,
            ts_sec,
            ts_frac,
            linktype,
            data: data.to_vec(),
        });
        at = start + caplen;
    }
    Ok(out)
}

/// A TCP segment over IPv4.
#[derive(Debug, Clone)]
pub struct TcpSegment {
    pub frame: usize,
    pub src: (Ipv4Addr, u16),
    pub dst: (Ipv4Addr, u16),
    pub seq: u32,
    pub syn: bool,
    pub fin: bool,
    pub rst: bool,
    pub ack: bool,
    pub payload: Vec<u8>,
}

/// The IPv4 packet inside a frame, if the frame carries one.
fn ipv4_of(p: &Packet) -> Option<&[u8]> {
    let d = &p.data;
    let (ethertype, off) = match p.linktype {
        LINKTYPE_ETHERNET => {
            let mut et = u16::from_be_bytes([*d.get(12)?, *d.get(13)?]);
            let mut off = 14;
            // Skip 802.1Q / 802.1ad tags.
            while et == 0x8100 || et == 0x88a8 {
                et = u16::from_be_bytes([*d.get(off + 2)?, *d.get(off + 3)?]);
                off += 4;
            }
            (et, off)
        }
        LINKTYPE_LINUX_SLL => (u16::from_be_bytes([*d.get(14)?, *d.get(15)?]), 16),
        LINKTYPE_LINUX_SLL2 => (u16::from_be_bytes([*d.first()?, *d.get(1)?]), 20),
        LINKTYPE_RAW => (0x0800, 0),
        _ => return None,
    };
    if ethertype != 0x0800 {
        return None;
    }
    d.get(off..)
}

/// Extracts the TCP segment of a frame; Ok(None) for anything else.
pub fn tcp_of(p: &Packet) -> Result<Option<TcpSegment>, String> {
    let Some(ip) = ipv4_of(p) else {
        return Ok(None);
    };
    let bad = |why: &str| format!("frame {}: {why}", p.frame);
    if ip.len() < 20 || ip[0] >> 4 != 4 {
        return Err(bad("not a valid IPv4 header"));
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ihl < 20 || total < ihl || total > ip.len() {
        return Err(bad("inconsistent IPv4 lengths"));
    }
    let frag = u16::from_be_bytes([ip[6], ip[7]]);
    if frag & 0x3fff != 0 {
        return Err(bad("IPv4 fragments are not supported"));
    }
    if ip[9] != 6 {
        return Ok(None);
    }
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    // Ethernet padding may follow the IP packet: cut at its total length.
    let tcp = &ip[ihl..total];
    if tcp.len() < 20 {
        return Err(bad("short TCP header"));
    }
    let doff = usize::from(tcp[12] >> 4) * 4;
    if doff < 20 || doff > tcp.len() {
        return Err(bad("bad TCP data offset"));
    }
    let flags = tcp[13];
    Ok(Some(TcpSegment {
        frame: p.frame,
        src: (src_ip, u16::from_be_bytes([tcp[0], tcp[1]])),
        dst: (dst_ip, u16::from_be_bytes([tcp[2], tcp[3]])),
        seq: u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]),
        fin: flags & 0x01 != 0,
        syn: flags & 0x02 != 0,
        rst: flags & 0x04 != 0,
        ack: flags & 0x10 != 0,
        payload: tcp[doff..].to_vec(),
    }))
}

/// The reassembled bytes one side sent on a connection.
#[derive(Debug, Clone, Default)]
pub struct Direction {
    pub src: Option<(Ipv4Addr, u16)>,
    pub dst: Option<(Ipv4Addr, u16)>,
    /// In-order stream contents.
    pub data: Vec<u8>,
    /// Frames that carried only bytes already seen (retransmissions).
    pub retransmitted_frames: usize,
    /// Frames that carried both old and new bytes.
    pub partly_retransmitted_frames: usize,
    pub saw_syn: bool,
    pub saw_fin: bool,
    pub saw_rst: bool,
    /// For every data-carrying frame: (stream offset of its first new byte, frame).
    pub frame_offsets: Vec<(usize, usize)>,
}

/// One TCP connection: `client` opened it (sent the SYN).
#[derive(Debug, Clone)]
pub struct Connection {
    /// 0-based index in order of first appearance (like tshark's tcp.stream).
    pub index: usize,
    pub first_frame: usize,
    pub client: Direction,
    pub server: Direction,
}

#[derive(Default)]
struct DirState {
    isn: Option<u32>,
    /// Offset (from isn + 1) -> bytes, as received; merged at the end.
    chunks: Vec<(u64, Vec<u8>, usize)>,
    dir: Direction,
}

type Key = ((Ipv4Addr, u16), (Ipv4Addr, u16));

/// Groups TCP segments into connections and reassembles each direction.
/// `filter` selects the segments of interest (e.g. by port). Overlapping
/// retransmitted bytes must be identical, and a direction must have no
/// holes: both are reported as errors since they would make a byte-exact
/// comparison meaningless.
pub fn reassemble(
    segments: &[TcpSegment],
    filter: impl Fn(&TcpSegment) -> bool,
) -> Result<Vec<Connection>, String> {
    // Each connection is keyed by (client, server); a new SYN from the same
    // endpoints after a finished connection starts a fresh one.
    let mut live: BTreeMap<Key, usize> = BTreeMap::new();
    let mut conns: Vec<(usize, Key, DirState, DirState)> = Vec::new();
    for seg in segments.iter().filter(|s| filter(s)) {
        let fwd = (seg.src, seg.dst);
        let rev = (seg.dst, seg.src);
        let idx = if seg.syn && !seg.ack {
            // A client SYN: a new connection, unless it retransmits the SYN
            // (same ISN) of the live one.
            match live.get(&fwd) {
                Some(&i) if conns[i].2.isn == Some(seg.seq) => i,
                _ => {
                    let i = conns.len();
                    conns.push((seg.frame, fwd, DirState::default(), DirState::default()));
                    live.insert(fwd, i);
                    i
                }
            }
        } else if let Some(&i) = live.get(&fwd) {
            i
        } else if let Some(&i) = live.get(&rev) {
            i
        } else {
            // Mid-stream start: treat the first sender seen as the client.
            let i = conns.len();
            conns.push((seg.frame, fwd, DirState::default(), DirState::default()));
            live.insert(fwd, i);
            i
        };
        let (_, key, c, s) = &mut conns[idx];
        let st = if *key == fwd { c } else { s };
        st.dir.src = Some(seg.src);
        st.dir.dst = Some(seg.dst);
        let mut seq = seg.seq;
        if seg.syn {
            st.dir.saw_syn = true;
            if st.isn.is_none() {
                st.isn = Some(seg.seq);
            }
            seq = seq.wrapping_add(1);
        }
        if st.isn.is_none() {
            // No SYN captured: the first sequence number seen is offset 0.
            st.isn = Some(seg.seq.wrapping_sub(1));
        }
        st.dir.saw_fin |= seg.fin;
        st.dir.saw_rst |= seg.rst;
        if !seg.payload.is_empty() {
            let isn = st.isn.unwrap_or(0);
            let off = u64::from(seq.wrapping_sub(isn).wrapping_sub(1));
            st.chunks.push((off, seg.payload.clone(), seg.frame));
        }
    }
    let mut out = Vec::new();
    for (index, (first_frame, _, c, s)) in conns.into_iter().enumerate() {
        out.push(Connection {
            index,
            first_frame,
            client: finish(c, index, "client")?,
            server: finish(s, index, "server")?,
        });
    }
    Ok(out)
}

fn finish(st: DirState, conn: usize, side: &str) -> Result<Direction, String> {
    let mut dir = st.dir;
    let mut chunks = st.chunks;
    // Stable sort: segments that arrived out of order are put back in
    // sequence order, and equal offsets keep their arrival order.
    chunks.sort_by_key(|c| c.0);
    for (off, bytes, frame) in chunks {
        let off = usize::try_from(off).map_err(|_| "offset overflow".to_string())?;
        let end = off + bytes.len();
        let have = dir.data.len();
        if off > have {
            return Err(format!(
                "connection {conn} {side}: hole before frame {frame} (stream offset {off}, have {have})"
            ));
        }
        let overlap_end = end.min(have);
        if dir.data[off..overlap_end] != bytes[..overlap_end - off] {
            return Err(format!(
                "connection {conn} {side}: frame {frame} retransmits different bytes at offset {off}"
            ));
        }
        if end <= have {
            dir.retransmitted_frames += 1;
            continue;
        }
        if off < have {
            dir.partly_retransmitted_frames += 1;
        }
        dir.frame_offsets.push((have, frame));
        dir.data.extend_from_slice(&bytes[have - off..]);
    }
    Ok(dir)
}

/// Reads a pcap file and returns its frames and TCP connections that have
/// `port` as one end.
pub fn tcp_connections_on_port(
    path: &std::path::Path,
    port: u16,
) -> Result<(Vec<Packet>, Vec<Connection>), String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let packets = read_pcap(&bytes).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut segs = Vec::new();
    for p in &packets {
        if let Some(s) = tcp_of(p).map_err(|e| format!("{}: {e}", path.display()))? {
            segs.push(s);
        }
    }
    let conns = reassemble(&segs, |s| s.src.1 == port || s.dst.1 == port)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((packets, conns))
}

#[cfg(test)]
mod self_tests {
    use super::*;

    fn seg(frame: usize, from: u16, to: u16, seq: u32, syn: bool, payload: &[u8]) -> TcpSegment {
        TcpSegment {
            frame,
            src: (Ipv4Addr::new(127, 0, 0, 1), from),
            dst: (Ipv4Addr::new(127, 0, 0, 1), to),
            seq,
            syn,
            fin: false,
            rst: false,
            ack: !(syn && from == 5000),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn reassembly_orders_dedups_and_detects_holes() {
        let segs = vec![
            seg(1, 5000, 7777, 100, true, b""),
            seg(2, 7777, 5000, 900, true, b""),
            seg(3, 5000, 7777, 101, false, b"abc"),
            seg(5, 5000, 7777, 107, false, b"gh"),
            seg(4, 5000, 7777, 104, false, b"def"),
            seg(6, 5000, 7777, 101, false, b"abc"),
            seg(7, 5000, 7777, 106, false, b"fghij"),
            seg(8, 7777, 5000, 901, false, b"xy"),
        ];
        let conns = reassemble(&segs, |_| true).unwrap();
        assert_eq!(conns.len(), 1);
        // Frame 5 arrived before frame 4; 6 and 7 repeat old bytes.
        assert_eq!(conns[0].client.data, b"abcdefghij");
        assert_eq!(conns[0].server.data, b"xy");
        let bad = vec![
            seg(1, 5000, 7777, 100, true, b""),
            seg(2, 5000, 7777, 105, false, b"zz"),
        ];
        assert!(reassemble(&bad, |_| true).is_err());
        let differ = vec![
            seg(1, 5000, 7777, 100, true, b""),
            seg(2, 5000, 7777, 101, false, b"ab"),
            seg(3, 5000, 7777, 101, false, b"aX"),
        ];
        assert!(reassemble(&differ, |_| true).is_err());
    }
}
