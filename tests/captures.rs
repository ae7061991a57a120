//! The o2net (and o2dlm) codecs against real Linux 6.1 kernel traffic.
//!
//! Every TCP stream on the o2net port of every reference capture is split
//! into its 32-byte handshake and frames; each is decoded and re-encoded and
//! must give back the captured bytes exactly. Message counts per file are
//! pinned (and cross-checked with the capture's own story file), so a decoder
//! regression that drops or invents frames is caught.

mod support;

use o2dlm::wire::dlm::*;
use o2dlm::wire::o2net::{
    peek_frame, Handshake, MsgHeader, HANDSHAKE_LEN, KEEP_REQ_MAGIC, KEEP_RESP_MAGIC, MSG_MAGIC,
    STATUS_MAGIC,
};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use support::pcap;

/// crc32_le(0, "testdomain"): the o2net key of the captures' domain.
const TESTDOMAIN_KEY: u32 = 0xC5C5_3CEA;

/// Every node in the captures listens on this port.
const O2NET_PORT: u16 = 7777;

/// One o2net message found in a stream.
#[derive(Debug, Clone)]
struct Msg {
    conn: usize,
    from: Ipv4Addr,
    to: Ipv4Addr,
    /// Frame holding the message's first byte.
    frame: usize,
    header: MsgHeader,
    payload: Vec<u8>,
}

#[derive(Debug, Default)]
struct Analysis {
    pcap_frames: usize,
    connections: usize,
    handshakes: Vec<Handshake>,
    keep_req: usize,
    keep_resp: usize,
    requests: BTreeMap<u16, usize>,
    replies: BTreeMap<u16, usize>,
    /// Requests (0xFA55) in stream order per direction.
    msgs: Vec<Msg>,
    /// `msgs[i]` decoded.
    dlm: Vec<DlmMessage>,
    /// (request type, status) for every matched status reply.
    reply_status: Vec<(u16, u32, i32)>,
    /// For each request, its reply's `status` if it got one.
    answer: Vec<Option<i32>>,
    retransmitted_frames: usize,
    /// Messages (handshakes included) whose bytes came in several TCP segments.
    split_messages: usize,
    /// TCP segments that carried the starts of more than one message.
    shared_segments: usize,
}

fn capture_path(name: &str) -> PathBuf {
    support::captures_dir().join(name)
}

fn frame_at(offsets: &[(usize, usize)], off: usize) -> usize {
    // The last frame whose first new byte is at or before `off`.
    let i = offsets.partition_point(|&(o, _)| o <= off);
    if i == 0 {
        0
    } else {
        offsets[i - 1].1
    }
}

fn analyse(name: &str) -> Analysis {
    let path = capture_path(name);
    let (packets, conns) = pcap::tcp_connections_on_port(&path, O2NET_PORT)
        .unwrap_or_else(|e| panic!("reading {name}: {e}"));
    let mut a = Analysis {
        pcap_frames: packets.len(),
        connections: conns.len(),
        ..Analysis::default()
    };
    let mut replies: Vec<Msg> = Vec::new();
    for c in &conns {
        for dir in [&c.client, &c.server] {
            a.retransmitted_frames += dir.retransmitted_frames + dir.partly_retransmitted_frames;
            let data = &dir.data;
            if data.is_empty() {
                continue;
            }
            let (Some(src), Some(dst)) = (dir.src, dir.dst) else {
                panic!("{name}: connection {} direction without endpoints", c.index);
            };
            // Each direction opens with exactly one handshake.
            assert!(
                data.len() >= HANDSHAKE_LEN,
                "{name}: conn {} {}→{}: only {} bytes, no complete handshake",
                c.index,
                src.0,
                dst.0,
                data.len()
            );
            let hs = Handshake::decode(data).unwrap_or_else(|e| panic!("{name}: handshake: {e}"));
            assert_eq!(
                hs.encode()[..],
                data[..HANDSHAKE_LEN],
                "{name}: handshake re-encoding differs"
            );
            a.handshakes.push(hs);
            let mut starts = vec![0, HANDSHAKE_LEN];
            let mut off = HANDSHAKE_LEN;
            while off < data.len() {
                let frame = frame_at(&dir.frame_offsets, off);
                let (hdr, total) = match peek_frame(&data[off..]) {
                    Ok(Some(x)) => x,
                    Ok(None) => panic!(
                        "{name}: conn {} {}→{}: stream ends inside a frame at offset {off} (frame {frame})",
                        c.index, src.0, dst.0
                    ),
                    Err(e) => panic!(
                        "{name}: conn {} {}→{}: bad frame at offset {off} (frame {frame}): {e}",
                        c.index, src.0, dst.0
                    ),
                };
                assert_eq!(
                    hdr.encode()[..],
                    data[off..off + 24],
                    "{name}: frame {frame}: header re-encoding differs"
                );
                let msg = Msg {
                    conn: c.index,
                    from: src.0,
                    to: dst.0,
                    frame,
                    header: hdr,
                    payload: data[off + 24..off + total].to_vec(),
                };
                match hdr.magic {
                    MSG_MAGIC => {
                        // Request headers carry only type, length, key and id.
                        assert_eq!(
                            (hdr.pad1, hdr.sys_status, hdr.status),
                            (0, 0, 0),
                            "{name}: frame {frame}: request with non-zero pad/status"
                        );
                        *a.requests.entry(hdr.msg_type).or_default() += 1;
                        // Every request here is an o2dlm message: decode it
                        // and demand the identical bytes back.
                        let dlm =
                            DlmMessage::decode(hdr.msg_type, &msg.payload).unwrap_or_else(|e| {
                                panic!("{name}: frame {frame}: type {}: {e}", hdr.msg_type)
                            });
                        assert_eq!(dlm.msg_type(), hdr.msg_type);
                        assert_eq!(
                            dlm.encode(),
                            msg.payload,
                            "{name}: frame {frame}: {dlm:?} re-encodes differently"
                        );
                        // The decoded message alone (plus msg_num) rebuilds
                        // the captured frame, key choice included.
                        assert_eq!(
                            dlm.to_frame(TESTDOMAIN_KEY, hdr.msg_num),
                            data[off..off + total],
                            "{name}: frame {frame}: rebuilt frame differs"
                        );
                        a.dlm.push(dlm);
                        a.msgs.push(msg);
                    }
                    STATUS_MAGIC => {
                        assert_eq!(hdr.data_len, 0, "{name}: frame {frame}: reply payload");
                        replies.push(msg);
                    }
                    KEEP_REQ_MAGIC | KEEP_RESP_MAGIC => {
                        let want = if hdr.magic == KEEP_REQ_MAGIC {
                            a.keep_req += 1;
                            MsgHeader::keepalive_request()
                        } else {
                            a.keep_resp += 1;
                            MsgHeader::keepalive_response()
                        };
                        assert_eq!(hdr, want, "{name}: frame {frame}: keepalive not all zero");
                    }
                    other => unreachable!("peek_frame accepted magic {other:#x}"),
                }
                off += total;
                starts.push(off);
            }
            // How the kernel's messages fell into TCP segments: framing must
            // cope with both splits and several messages per segment.
            let mut bounds: Vec<usize> = dir.frame_offsets.iter().map(|x| x.0).collect();
            bounds.push(data.len());
            a.split_messages += starts
                .windows(2)
                .filter(|w| bounds.iter().any(|&b| b > w[0] && b < w[1]))
                .count();
            a.shared_segments += bounds
                .windows(2)
                .filter(|w| starts.iter().filter(|&&m| m >= w[0] && m < w[1]).count() > 1)
                .count();
        }
    }
    // Match each reply with the request it answers: same connection,
    // opposite direction, identical type/pad/key/msg_num, sent no later.
    let mut pending: Vec<Option<&Msg>> = a.msgs.iter().map(Some).collect();
    let mut answer = vec![None; a.msgs.len()];
    for r in &replies {
        let h = r.header;
        let slot = pending.iter_mut().enumerate().find(|(_, m)| {
            m.is_some_and(|m| {
                m.conn == r.conn
                    && m.from == r.to
                    && m.frame <= r.frame
                    && (
                        m.header.msg_type,
                        m.header.pad1,
                        m.header.key,
                        m.header.msg_num,
                    ) == (h.msg_type, h.pad1, h.key, h.msg_num)
            })
        });
        let Some((i, slot)) = slot else {
            panic!("{name}: frame {}: reply {h:?} answers no request", r.frame);
        };
        answer[i] = Some(h.status);
        let req = slot.take().map(|m| m.header);
        assert_eq!(
            req.map(|q| MsgHeader::status_reply(&q, h.sys_status, h.status)),
            Some(h),
            "{name}: frame {}: reply is not the kernel's echo of the request",
            r.frame
        );
        *a.replies.entry(h.msg_type).or_default() += 1;
        a.reply_status.push((h.msg_type, h.sys_status, h.status));
    }
    a.answer = answer;
    a
}

/// Counts a capture's story file (`NN-name.md`, "Message counts" table)
/// gives: (row label, count).
fn story_counts(name: &str) -> BTreeMap<String, usize> {
    let md = capture_path(name).with_extension("md");
    let text = std::fs::read_to_string(&md)
        .unwrap_or_else(|e| panic!("reading story {}: {e}", md.display()));
    let mut out = BTreeMap::new();
    let mut in_table = false;
    for line in text.lines() {
        if line.starts_with("Message counts") {
            in_table = true;
            continue;
        }
        if !in_table {
            continue;
        }
        if !line.starts_with('|') {
            if !out.is_empty() {
                break;
            }
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() == 2 {
            if let Ok(n) = cells[1].parse::<usize>() {
                out.insert(cells[0].to_string(), n);
            }
        }
    }
    assert!(!out.is_empty(), "{}: no Message counts table", md.display());
    out
}

/// The frame count tshark printed in part 1 of `NN-name.txt` (one summary
/// line per frame, numbered from 1).
fn tshark_frame_count(name: &str) -> usize {
    let txt = capture_path(name).with_extension("txt");
    let text = std::fs::read_to_string(&txt)
        .unwrap_or_else(|e| panic!("reading decode {}: {e}", txt.display()));
    let mut last = 0;
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        // Part 1 ends where part 2 (expanded frames) starts.
        if t.starts_with("Frame ") {
            break;
        }
        match t
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if n == last + 1 => last = n,
            _ => break,
        }
    }
    last
}

/// Names and labels as the story files write them.
fn dlm_name(t: u16) -> &'static str {
    match t {
        500 => "MASTER_REQUEST",
        502 => "ASSERT_MASTER",
        503 => "CREATE_LOCK",
        504 => "CONVERT_LOCK",
        505 => "PROXY_AST",
        506 => "UNLOCK_LOCK",
        507 => "DEREF_LOCKRES",
        508 => "MIGRATE_REQUEST",
        509 => "MIG_LOCKRES",
        510 => "QUERY_JOIN",
        511 => "ASSERT_JOINED",
        512 => "CANCEL_JOIN",
        513 => "EXIT_DOMAIN",
        514 => "MASTER_REQUERY",
        515 => "LOCK_REQUEST",
        516 => "RECO_DATA_DONE",
        517 => "BEGIN_RECO",
        518 => "FINALIZE_RECO",
        519 => "QUERY_REGION",
        520 => "QUERY_NODEINFO",
        521 => "BEGIN_EXIT_DOMAIN",
        522 => "DEREF_LOCKRES_DONE",
        _ => "?",
    }
}

fn our_counts(a: &Analysis) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (&t, &n) in &a.requests {
        m.insert(format!("{t} {}", dlm_name(t)), n);
    }
    for (&t, &n) in &a.replies {
        m.insert(format!("{t} {} reply", dlm_name(t)), n);
    }
    m.insert("HANDSHAKE".into(), a.handshakes.len());
    m.insert("KEEPALIVE_REQ".into(), a.keep_req);
    m.insert("KEEPALIVE_RESP".into(), a.keep_resp);
    m.retain(|_, n| *n > 0);
    m
}

/// What each capture holds, pinned from our own decode (which agrees with
/// the story files and the README table of the capture set).
struct Expected {
    name: &'static str,
    pcap_frames: usize,
    /// TCP connections on the o2net port (a refused first attempt counts).
    connections: usize,
    /// Frames that only or partly repeat bytes already seen.
    retransmitted_frames: usize,
    /// Messages spread over several segments (QUERY_NODEINFO's 2132 bytes
    /// always are) and segments holding several messages.
    split_messages: usize,
    shared_segments: usize,
    handshakes: usize,
    keep_req: usize,
    keep_resp: usize,
    /// (msg_type, requests, status replies).
    dlm: &'static [(u16, usize, usize)],
}

/// The join sequence both nodes of a two-node domain go through.
const JOIN2: [(u16, usize, usize); 4] = [(510, 2, 2), (511, 1, 1), (519, 1, 1), (520, 1, 1)];

const EXPECTED: &[Expected] = &[
    Expected {
        name: "01-connect.pcap",
        pcap_frames: 59,
        connections: 1,
        retransmitted_frames: 0,
        split_messages: 0,
        shared_segments: 0,
        handshakes: 2,
        keep_req: 12,
        keep_resp: 12,
        dlm: &[],
    },
    Expected {
        name: "02-domain-join.pcap",
        pcap_frames: 64,
        connections: 2,
        retransmitted_frames: 0,
        split_messages: 1,
        shared_segments: 0,
        handshakes: 3,
        keep_req: 8,
        keep_resp: 8,
        dlm: &JOIN2,
    },
    Expected {
        name: "03-mastery.pcap",
        pcap_frames: 87,
        connections: 1,
        retransmitted_frames: 0,
        split_messages: 1,
        shared_segments: 0,
        handshakes: 2,
        keep_req: 8,
        keep_resp: 8,
        dlm: &[
            (500, 3, 3),
            (502, 3, 3),
            (503, 1, 1),
            (505, 1, 1),
            JOIN2[0],
            JOIN2[1],
            JOIN2[2],
            JOIN2[3],
        ],
    },
    Expected {
        name: "04-contention.pcap",
        pcap_frames: 129,
        connections: 2,
        retransmitted_frames: 0,
        split_messages: 1,
        shared_segments: 0,
        handshakes: 3,
        keep_req: 9,
        keep_resp: 9,
        dlm: &[
            (500, 5, 5),
            (502, 5, 5),
            (503, 3, 3),
            (504, 1, 1),
            (505, 4, 4),
            JOIN2[0],
            JOIN2[1],
            JOIN2[2],
            JOIN2[3],
        ],
    },
    Expected {
        name: "05-convert.pcap",
        pcap_frames: 134,
        connections: 1,
        retransmitted_frames: 0,
        split_messages: 1,
        shared_segments: 0,
        handshakes: 2,
        keep_req: 12,
        keep_resp: 12,
        dlm: &[
            (500, 6, 6),
            (502, 6, 6),
            (503, 2, 2),
            (504, 2, 2),
            (505, 5, 5),
            JOIN2[0],
            JOIN2[1],
            JOIN2[2],
            JOIN2[3],
        ],
    },
    Expected {
        name: "06-unlink-leave.pcap",
        pcap_frames: 288,
        connections: 1,
        retransmitted_frames: 0,
        split_messages: 1,
        shared_segments: 0,
        handshakes: 2,
        keep_req: 44,
        keep_resp: 44,
        dlm: &[
            (500, 9, 9),
            (502, 10, 10),
            (503, 3, 3),
            (505, 3, 3),
            (506, 2, 2),
            (507, 3, 3),
            (509, 1, 1),
            JOIN2[0],
            JOIN2[1],
            (513, 1, 1),
            JOIN2[2],
            JOIN2[3],
            (521, 1, 1),
        ],
    },
    Expected {
        name: "07-node-death.pcap",
        pcap_frames: 104,
        connections: 1,
        // Node 0's keepalive to the killed node, sent seven more times.
        retransmitted_frames: 7,
        split_messages: 1,
        shared_segments: 1,
        handshakes: 2,
        keep_req: 10,
        keep_resp: 8,
        dlm: &[
            (500, 5, 5),
            (502, 5, 5),
            (503, 2, 2),
            (505, 1, 1),
            // Sent to the dead node: never answered.
            (507, 1, 0),
            JOIN2[0],
            JOIN2[1],
            JOIN2[2],
            JOIN2[3],
        ],
    },
    Expected {
        name: "08-recovery-3node.pcap",
        pcap_frames: 567,
        connections: 4,
        retransmitted_frames: 15,
        split_messages: 3,
        shared_segments: 2,
        handshakes: 7,
        keep_req: 62,
        keep_resp: 58,
        dlm: &[
            (500, 25, 25),
            (502, 32, 32),
            (503, 6, 6),
            (504, 1, 1),
            (505, 8, 8),
            (509, 1, 1),
            (510, 6, 6),
            (511, 3, 3),
            (514, 1, 1),
            (515, 1, 1),
            (516, 1, 1),
            (517, 1, 1),
            (518, 2, 2),
            (519, 3, 3),
            (520, 3, 3),
        ],
    },
    Expected {
        name: "09-leave-3node.pcap",
        pcap_frames: 372,
        connections: 4,
        retransmitted_frames: 0,
        split_messages: 3,
        shared_segments: 0,
        handshakes: 7,
        keep_req: 52,
        keep_resp: 52,
        dlm: &[
            (500, 7, 7),
            (502, 12, 12),
            (503, 2, 2),
            (504, 2, 2),
            (505, 5, 5),
            (507, 1, 1),
            (508, 1, 1),
            (509, 1, 1),
            (510, 6, 6),
            (511, 3, 3),
            (513, 2, 2),
            (519, 3, 3),
            (520, 3, 3),
            (521, 2, 2),
        ],
    },
];

fn expected(name: &str) -> &'static Expected {
    EXPECTED.iter().find(|e| e.name == name).unwrap_or_else(|| {
        panic!("{name}: no pinned counts for this capture; add an Expected entry")
    })
}

/// The handshake every node of the capture cluster sends (dead_threshold 7,
/// idle 10000 ms, keepalive 1000 ms, reconnect 1000 ms).
const CAPTURE_HANDSHAKE: Handshake = Handshake {
    protocol_version: 11,
    connector_id: 1,
    o2hb_heartbeat_timeout_ms: 12000,
    idle_timeout_ms: 10000,
    keepalive_delay_ms: 1000,
    reconnect_delay_ms: 1000,
};

fn check_capture(name: &str) {
    let e = expected(name);
    let a = analyse(name);
    assert_eq!(a.pcap_frames, e.pcap_frames, "{name}: frames in pcap");
    assert_eq!(
        a.pcap_frames,
        tshark_frame_count(name),
        "{name}: frame count differs from the tshark summary"
    );
    assert_eq!(a.connections, e.connections, "{name}: o2net connections");
    assert_eq!(
        a.retransmitted_frames, e.retransmitted_frames,
        "{name}: retransmitted frames"
    );
    assert_eq!(
        (a.split_messages, a.shared_segments),
        (e.split_messages, e.shared_segments),
        "{name}: messages split over / sharing TCP segments"
    );
    assert_eq!(a.handshakes.len(), e.handshakes, "{name}: handshakes");
    for hs in &a.handshakes {
        assert_eq!(*hs, CAPTURE_HANDSHAKE, "{name}: handshake contents");
    }
    assert_eq!(a.keep_req, e.keep_req, "{name}: KEEPALIVE_REQ");
    assert_eq!(a.keep_resp, e.keep_resp, "{name}: KEEPALIVE_RESP");
    let want_req: BTreeMap<u16, usize> = e.dlm.iter().map(|&(t, q, _)| (t, q)).collect();
    let want_rep: BTreeMap<u16, usize> = e
        .dlm
        .iter()
        .filter(|x| x.2 > 0)
        .map(|&(t, _, r)| (t, r))
        .collect();
    assert_eq!(a.requests, want_req, "{name}: requests per msg_type");
    assert_eq!(a.replies, want_rep, "{name}: status replies per msg_type");
    // Every message counted by the story file's own (independent) decoder.
    assert_eq!(
        our_counts(&a),
        story_counts(name),
        "{name}: counts differ from the story file's Message counts"
    );
    // The transport layer always delivered: no o2net-level errors.
    for &(t, sys, _) in &a.reply_status {
        assert_eq!(sys, 0, "{name}: type {t} reply with sys_status {sys}");
    }
    check_dlm_semantics(name, &a);
}

#[test]
fn capture_01_connect() {
    check_capture("01-connect.pcap");
}

#[test]
fn capture_02_domain_join() {
    check_capture("02-domain-join.pcap");
}

#[test]
fn capture_03_mastery() {
    check_capture("03-mastery.pcap");
}

#[test]
fn capture_04_contention() {
    check_capture("04-contention.pcap");
}

#[test]
fn capture_05_convert() {
    check_capture("05-convert.pcap");
}

#[test]
fn capture_06_unlink_leave() {
    check_capture("06-unlink-leave.pcap");
}

#[test]
fn capture_07_node_death() {
    check_capture("07-node-death.pcap");
}

#[test]
fn capture_08_recovery_3node() {
    check_capture("08-recovery-3node.pcap");
}

#[test]
fn capture_09_leave_3node() {
    check_capture("09-leave-3node.pcap");
}

/// Every pcap in the directory has pinned counts and passes, and every
/// pinned capture exists.
#[test]
fn every_capture_in_directory() {
    let dir = support::captures_dir();
    let mut found: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .filter_map(|d| d.ok())
        .map(|d| d.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".pcap"))
        .collect();
    found.sort();
    let pinned: Vec<String> = EXPECTED.iter().map(|e| e.name.to_string()).collect();
    assert_eq!(found, pinned, "captures in {}", dir.display());
    for name in &found {
        check_capture(name);
    }
}

/// The decoder must reject a stream whose frame header is corrupted, so the
/// round trips above cannot pass by accepting anything.
#[test]
fn corrupted_capture_stream_is_rejected() {
    let path = capture_path("03-mastery.pcap");
    let (_, conns) = pcap::tcp_connections_on_port(&path, O2NET_PORT).unwrap();
    let mut data = conns[0].client.data.clone();
    assert!(peek_frame(&data[HANDSHAKE_LEN..]).unwrap().is_some());
    data[HANDSHAKE_LEN + 1] = 0x59; // magic 0xFA59: outside FA55..FA58
    assert!(peek_frame(&data[HANDSHAKE_LEN..]).is_err());
}

/// Node number of a capture address: node n is 10.0.3.(n+1).
fn node_of(ip: Ipv4Addr) -> u8 {
    let o = ip.octets();
    assert_eq!(&o[..3], &[10, 0, 3], "unexpected address {ip}");
    o[3] - 1
}

/// An LVB's text up to the first zero byte (the captures write ASCII).
fn lvb_text(lvb: &Lvb) -> &[u8] {
    let end = lvb.iter().position(|&b| b == 0).unwrap_or(lvb.len());
    &lvb[..end]
}

/// Field-level facts every decoded message of the captures must satisfy:
/// they show the layouts put each value where the kernel meant it.
fn check_dlm_semantics(name: &str, a: &Analysis) {
    let domain_key = o2dlm::wire::crc::dlm_domain_key(b"testdomain");
    assert_eq!(domain_key, 0xC5C5_3CEA);
    let testdomain = DomainName::new(b"testdomain").unwrap();
    // Nodes configured in this capture's cluster; in the 3-node captures
    // node 2 is the one that dies or leaves.
    let nodes = if name.contains("3node") { 3u8 } else { 2 };
    for (i, (m, d)) in a.msgs.iter().zip(&a.dlm).enumerate() {
        let ctx = format!("{name}: frame {}: {d:?}", m.frame);
        let from = node_of(m.from);
        let to = node_of(m.to);
        let want_key = if d.uses_mod_key() {
            DLM_MOD_KEY
        } else {
            domain_key
        };
        assert_eq!(m.header.key, want_key, "{ctx}: key");
        let status = a.answer[i];
        let allowed: &[i32] = match d.msg_type() {
            DLM_MASTER_REQUEST_MSG => &[DLM_MASTER_RESP_NO, DLM_MASTER_RESP_YES],
            // Bits DLM_ASSERT_RESPONSE_REASSERT (1) and MASTERY_REF (2).
            DLM_ASSERT_MASTER_MSG => &[0, 2, 3],
            DLM_CREATE_LOCK_MSG => &[DLM_NORMAL, DLM_NOTQUEUED],
            DLM_QUERY_JOIN_MSG => &[0x0103_0000, 0x0200_0000],
            DLM_MASTER_REQUERY_MSG => &[DLM_LOCK_RES_OWNER_UNKNOWN as i32],
            _ => &[0],
        };
        if let Some(st) = status {
            assert!(allowed.contains(&st), "{ctx}: reply status {st}");
        }
        match d {
            DlmMessage::MasterRequest(x) => assert_eq!((x.node_idx, x.flags), (from, 0), "{ctx}"),
            DlmMessage::AssertMaster(x) => {
                assert_eq!(x.node_idx, from, "{ctx}");
                assert!([0, 1, 4].contains(&x.flags), "{ctx}: assert flags");
            }
            DlmMessage::CreateLock(x) => {
                assert_eq!((x.node_idx, cookie_node(x.cookie)), (from, from), "{ctx}");
                assert!(
                    [LKM_PRMODE, LKM_EXMODE].contains(&x.requested_type),
                    "{ctx}"
                );
                // dlmfs: VALBLK|GET_LVB, plus NOQUEUE for a trylock, which
                // alone may be refused with NOTQUEUED.
                assert!(
                    [0x4000_0100, 0x4000_0300].contains(&x.flags),
                    "{ctx}: create flags {:#x}",
                    x.flags
                );
                if status == Some(DLM_NOTQUEUED) {
                    assert_ne!(x.flags & LKM_NOQUEUE, 0, "{ctx}");
                }
            }
            DlmMessage::ConvertLock(x) => {
                assert_eq!((x.node_idx, cookie_node(x.cookie)), (from, from), "{ctx}");
                assert!(
                    [0x4000_0500, 0x2000_0500, 0x0000_0400].contains(&x.flags),
                    "{ctx}: convert flags {:#x}",
                    x.flags
                );
                assert_eq!(x.lvb.is_some(), x.flags & LKM_PUT_LVB != 0, "{ctx}");
            }
            DlmMessage::ProxyAst(x) => {
                // Sent by the master to the lock's owner.
                assert_eq!((x.node_idx, cookie_node(x.cookie)), (from, to), "{ctx}");
                match x.ast_type {
                    DLM_AST => assert_eq!(x.blocked_type, 0, "{ctx}"),
                    DLM_BAST => {
                        assert_eq!(x.flags, 0, "{ctx}: BAST flags");
                        assert!([3, 5].contains(&x.blocked_type), "{ctx}");
                    }
                    t => panic!("{ctx}: ast type {t}"),
                }
                assert!([0, LKM_GET_LVB].contains(&x.flags), "{ctx}");
            }
            DlmMessage::UnlockLock(x) => {
                assert_eq!((x.node_idx, cookie_node(x.cookie)), (from, from), "{ctx}");
                assert_eq!(x.flags, 0, "{ctx}: only PR unlocks were captured");
            }
            DlmMessage::DerefLockres(x) => assert_eq!(x.node_idx, from, "{ctx}"),
            DlmMessage::MigrateRequest(x) => {
                assert_eq!(x.new_master, from, "{ctx}: sent by the target");
                assert_ne!(x.master, to, "{ctx}: not sent to the old master");
            }
            DlmMessage::MigLockres(x) => {
                assert_eq!(x.mig_cookie, 0, "{ctx}: single-message transfer");
                assert_eq!(x.total_locks as usize, x.locks.len(), "{ctx}");
                assert!(!x.locks.is_empty(), "{ctx}");
                match x.flags {
                    0x06 => assert_eq!(x.master, from, "{ctx}: migration by the master"),
                    0x05 => assert_ne!(x.master, from, "{ctx}: recovery of a dead master"),
                    f => panic!("{ctx}: mres flags {f:#x}"),
                }
                for l in &x.locks {
                    assert_eq!(cookie_node(l.cookie), l.node, "{ctx}");
                    assert_eq!(
                        (l.list, l.convert_type, l.highest_blocked),
                        (DLM_GRANTED_LIST, LKM_IVMODE, LKM_IVMODE),
                        "{ctx}"
                    );
                }
            }
            DlmMessage::QueryJoin(x) => {
                assert_eq!(x.node_idx, from, "{ctx}");
                assert_eq!(
                    (x.dlm_proto, x.fs_proto),
                    (DLM_PROTOCOL, FS_LOCKING_PROTOCOL)
                );
                assert_eq!(x.domain, testdomain, "{ctx}");
                // The joiner's live map: every node, itself included.
                assert_eq!(x.node_map, NodeMap::from_nodes(0..nodes), "{ctx}");
            }
            DlmMessage::AssertJoined(x) => {
                assert_eq!((x.node_idx, x.domain), (from, testdomain), "{ctx}")
            }
            DlmMessage::ExitDomain(x) => assert_eq!(x.node_idx, from, "{ctx}"),
            DlmMessage::BeginExitDomain(x) => assert_eq!(x.node_idx, from, "{ctx}"),
            DlmMessage::MasterRequery(x) => assert_eq!(x.node_idx, from, "{ctx}"),
            DlmMessage::LockRequest(x) => assert_eq!((x.node_idx, x.dead_node), (from, 2)),
            DlmMessage::BeginReco(x) => assert_eq!((x.node_idx, x.dead_node), (from, 2)),
            DlmMessage::RecoDataDone(x) => assert_eq!((x.node_idx, x.dead_node), (from, 2)),
            DlmMessage::FinalizeReco(x) => {
                assert_eq!((x.node_idx, x.dead_node), (from, 2), "{ctx}");
                assert!(x.flags <= DLM_FINALIZE_STAGE2, "{ctx}");
            }
            DlmMessage::QueryRegion(x) => {
                // Local heartbeat: no regions.
                assert_eq!((x.node, x.domain, x.regions.len()), (from, testdomain, 0));
            }
            DlmMessage::QueryNodeinfo(x) => {
                assert_eq!((x.node, x.domain), (from, testdomain), "{ctx}");
                let want: Vec<NodeInfo> = (0..nodes)
                    .map(|n| NodeInfo {
                        num: n,
                        port: O2NET_PORT,
                        addr: Ipv4Addr::new(10, 0, 3, n + 1),
                    })
                    .collect();
                assert_eq!(x.nodes, want, "{ctx}");
            }
            other => panic!("{ctx}: message type not expected in captures: {other:?}"),
        }
    }
}

/// The decoded requests of a capture with their reply status.
fn decoded(name: &str) -> Vec<(Msg, DlmMessage, Option<i32>)> {
    let a = analyse(name);
    a.msgs
        .into_iter()
        .zip(a.dlm)
        .zip(a.answer)
        .map(|((m, d), s)| (m, d, s))
        .collect()
}

/// Specific messages the capture stories describe, field by field.
#[test]
fn story_messages_decode_to_the_described_values() {
    // 03: node 0's PR on lockM mastered by node 1; the grant carries the LVB.
    let d = decoded("03-mastery.pcap");
    let create = d
        .iter()
        .find_map(|(_, x, st)| match x {
            DlmMessage::CreateLock(c) => Some((*c, *st)),
            _ => None,
        })
        .expect("03 has a CREATE_LOCK");
    assert_eq!(
        create,
        (
            CreateLock {
                cookie: make_cookie(0, 1),
                flags: LKM_GET_LVB | LKM_VALBLK,
                node_idx: 0,
                requested_type: LKM_PRMODE,
                name: LockName::new(b"lockM").unwrap(),
            },
            Some(DLM_NORMAL)
        )
    );
    let ast = d
        .iter()
        .find_map(|(m, x, _)| match x {
            DlmMessage::ProxyAst(p) => Some((m.header.data_len, *p)),
            _ => None,
        })
        .expect("03 has a PROXY_AST");
    assert_eq!(ast.0, 144);
    assert_eq!(ast.1.flags, LKM_GET_LVB);
    assert_eq!(
        ast.1.lvb.as_ref().map(lvb_text),
        Some(&b"lvb-from-node1"[..])
    );

    // 04: refused trylock, BAST for PR, EX->PR convert with PUT_LVB.
    let d = decoded("04-contention.pcap");
    let refused: Vec<_> = d
        .iter()
        .filter(|(_, _, st)| *st == Some(DLM_NOTQUEUED))
        .collect();
    assert_eq!(refused.len(), 1);
    assert!(matches!(refused[0].1, DlmMessage::CreateLock(c) if c.flags == 0x4000_0300));
    assert!(d.iter().any(|(m, x, _)| matches!(x,
        DlmMessage::ProxyAst(p) if p.ast_type == DLM_BAST && p.blocked_type == 3
            && m.header.data_len == 80)));
    let conv = d
        .iter()
        .find_map(|(m, x, _)| match x {
            DlmMessage::ConvertLock(c) => Some((m.header.data_len, *c)),
            _ => None,
        })
        .expect("04 has a CONVERT_LOCK");
    assert_eq!(conv.0, 144);
    assert_eq!(
        (conv.1.flags, conv.1.requested_type),
        (LKM_PUT_LVB | LKM_CONVERT | LKM_VALBLK, LKM_PRMODE)
    );
    assert_eq!(
        conv.1.lvb.as_ref().map(lvb_text),
        Some(&b"lvb-from-node0-R"[..])
    );

    // 05: PR->EX convert asks for the LVB (80 bytes); PR->NL is CONVERT only.
    let d = decoded("05-convert.pcap");
    let convs: Vec<(u16, u32, i8)> = d
        .iter()
        .filter_map(|(m, x, _)| match x {
            DlmMessage::ConvertLock(c) => Some((m.header.data_len, c.flags, c.requested_type)),
            _ => None,
        })
        .collect();
    assert_eq!(
        convs,
        vec![
            (80, LKM_GET_LVB | LKM_CONVERT | LKM_VALBLK, LKM_EXMODE),
            (80, LKM_CONVERT, LKM_NLMODE)
        ]
    );

    // 06: the two-node migration of lockM.
    let d = decoded("06-unlink-leave.pcap");
    let mig = d
        .iter()
        .find_map(|(m, x, st)| match x {
            DlmMessage::MigLockres(r) => Some((m.header.data_len, r.clone(), *st)),
            _ => None,
        })
        .expect("06 has a MIG_LOCKRES");
    assert_eq!(mig.0, 128);
    assert_eq!(mig.2, Some(0));
    let mut lvb = [0u8; 64];
    lvb[..16].copy_from_slice(b"lvb-M-from-node1");
    assert_eq!(
        mig.1,
        MigLockres {
            master: 1,
            flags: DLM_MRES_MIGRATION | DLM_MRES_ALL_DONE,
            total_locks: 1,
            mig_cookie: 0,
            name: LockName::new(b"lockM").unwrap(),
            lvb,
            locks: vec![MigratableLock {
                cookie: make_cookie(0, 2),
                list: DLM_GRANTED_LIST,
                flags: 0,
                lock_type: LKM_PRMODE,
                convert_type: LKM_IVMODE,
                highest_blocked: LKM_IVMODE,
                node: 0,
            }],
        }
    );
    assert!(d.iter().any(|(_, x, st)| matches!(x,
        DlmMessage::AssertMaster(am) if am.flags == DLM_ASSERT_MASTER_FINISH_MIGRATION)
        && *st == Some(DLM_ASSERT_RESPONSE_MASTERY_REF)));

    // 08: recovery of dead node 2 by node 0 with node 1.
    let d = decoded("08-recovery-3node.pcap");
    let reco: Vec<String> = d
        .iter()
        .filter(|(_, x, _)| (514..=518).contains(&x.msg_type()) || x.msg_type() == 509)
        .map(|(_, x, st)| format!("{} {:?}", x.msg_type(), st))
        .collect();
    assert_eq!(
        reco,
        // Per connection, in stream order: node 1's data to node 0, then
        // node 0's requests to node 1.
        [
            "509 Some(0)",
            "516 Some(0)",
            "514 Some(255)",
            "517 Some(0)",
            "515 Some(0)",
            "518 Some(0)",
            "518 Some(0)"
        ]
    );
    let rmig = d
        .iter()
        .find_map(|(_, x, _)| match x {
            DlmMessage::MigLockres(r) => Some(r.clone()),
            _ => None,
        })
        .expect("08 has a MIG_LOCKRES");
    assert_eq!(
        (rmig.master, rmig.flags, rmig.name.as_bytes()),
        (2, DLM_MRES_RECOVERY | DLM_MRES_ALL_DONE, &b"lockR2"[..])
    );
    assert_eq!(lvb_text(&rmig.lvb), b"lvb-R2-from-node2");
    assert_eq!(rmig.locks.len(), 1);
    assert_eq!(
        (rmig.locks[0].cookie, rmig.locks[0].node),
        (make_cookie(1, 1), 1)
    );
    assert!(d.iter().any(|(_, x, _)| matches!(x,
        DlmMessage::MasterRequery(q) if q.name.as_bytes() == DLM_RECOVERY_LOCK_NAME)));

    // 09: three-node migration: the target tells the third node.
    let d = decoded("09-leave-3node.pcap");
    let mreq: Vec<_> = d
        .iter()
        .filter_map(|(m, x, st)| match x {
            DlmMessage::MigrateRequest(r) => Some((node_of(m.from), node_of(m.to), *r, *st)),
            _ => None,
        })
        .collect();
    assert_eq!(
        mreq,
        vec![(
            0,
            1,
            MigrateRequest {
                master: 2,
                new_master: 0,
                name: LockName::new(b"lockG").unwrap()
            },
            Some(0)
        )]
    );
    let mig = d
        .iter()
        .find_map(|(m, x, _)| match x {
            DlmMessage::MigLockres(r) => Some((m.header.data_len, r.clone())),
            _ => None,
        })
        .expect("09 has a MIG_LOCKRES");
    assert_eq!(mig.0, 144);
    assert_eq!(
        mig.1
            .locks
            .iter()
            .map(|l| (l.cookie, l.node))
            .collect::<Vec<_>>(),
        vec![(make_cookie(0, 1), 0), (make_cookie(1, 1), 1)]
    );
    assert_eq!(lvb_text(&mig.1.lvb), b"lvb-G-from-node2");
}
