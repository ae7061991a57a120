//! Property tests for the o2net and o2dlm codecs: every value round-trips,
//! and arbitrary bytes never make a decoder panic or accept something it
//! cannot reproduce.

use o2dlm::wire::dlm::*;
use o2dlm::wire::o2net::*;
use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};
use std::net::Ipv4Addr;

fn lock_name() -> impl Strategy<Value = LockName> {
    prop::collection::vec(any::<u8>(), 0..=DLM_LOCKID_NAME_MAX)
        .prop_map(|v| LockName::new(&v).expect("length bounded by the strategy"))
}

fn domain_name() -> impl Strategy<Value = DomainName> {
    prop::collection::vec(any::<u8>(), 0..=O2NM_MAX_NAME_LEN)
        .prop_map(|v| DomainName::new(&v).expect("length bounded by the strategy"))
}

fn lvb() -> impl Strategy<Value = Lvb> {
    prop::collection::vec(any::<u8>(), DLM_LVB_LEN).prop_map(|v| {
        let mut a = [0u8; DLM_LVB_LEN];
        a.copy_from_slice(&v);
        a
    })
}

/// Flags with the LVB bit chosen independently, and an LVB exactly when
/// that bit is set (the consistent values `decode` produces).
fn flags_and_lvb(bit: u32) -> impl Strategy<Value = (u32, Option<Lvb>)> {
    (any::<u32>(), any::<bool>(), lvb()).prop_map(move |(f, with, l)| {
        if with {
            (f | bit, Some(l))
        } else {
            (f & !bit, None)
        }
    })
}

fn mig_lock() -> impl Strategy<Value = MigratableLock> {
    (
        any::<u64>(),
        any::<u8>(),
        any::<u8>(),
        any::<i8>(),
        any::<i8>(),
        any::<i8>(),
        any::<u8>(),
    )
        .prop_map(
            |(cookie, list, flags, lock_type, convert_type, highest_blocked, node)| {
                MigratableLock {
                    cookie,
                    list,
                    flags,
                    lock_type,
                    convert_type,
                    highest_blocked,
                    node,
                }
            },
        )
}

fn node_info() -> impl Strategy<Value = NodeInfo> {
    (any::<u8>(), any::<u16>(), any::<u32>()).prop_map(|(num, port, a)| NodeInfo {
        num,
        port,
        addr: Ipv4Addr::from(a),
    })
}

fn proto() -> impl Strategy<Value = ProtocolVersion> {
    (any::<u8>(), any::<u8>()).prop_map(|(major, minor)| ProtocolVersion { major, minor })
}

fn dlm_message() -> BoxedStrategy<DlmMessage> {
    use DlmMessage as M;
    let arms: Vec<BoxedStrategy<DlmMessage>> = vec![
        (any::<u8>(), any::<u32>(), lock_name())
            .prop_map(|(node_idx, flags, name)| {
                M::MasterRequest(MasterRequest {
                    node_idx,
                    flags,
                    name,
                })
            })
            .boxed(),
        (any::<u8>(), any::<u32>(), lock_name())
            .prop_map(|(node_idx, flags, name)| {
                M::AssertMaster(AssertMaster {
                    node_idx,
                    flags,
                    name,
                })
            })
            .boxed(),
        (
            any::<u64>(),
            any::<u32>(),
            any::<u8>(),
            any::<i8>(),
            lock_name(),
        )
            .prop_map(|(cookie, flags, node_idx, requested_type, name)| {
                M::CreateLock(CreateLock {
                    cookie,
                    flags,
                    node_idx,
                    requested_type,
                    name,
                })
            })
            .boxed(),
        (
            any::<u64>(),
            flags_and_lvb(LKM_PUT_LVB),
            any::<u8>(),
            any::<i8>(),
            lock_name(),
        )
            .prop_map(|(cookie, (flags, lvb), node_idx, requested_type, name)| {
                M::ConvertLock(ConvertLock {
                    cookie,
                    flags,
                    node_idx,
                    requested_type,
                    name,
                    lvb,
                })
            })
            .boxed(),
        (
            any::<u64>(),
            flags_and_lvb(LKM_GET_LVB),
            any::<u8>(),
            any::<u8>(),
            any::<u8>(),
            lock_name(),
        )
            .prop_map(
                |(cookie, (flags, lvb), node_idx, ast_type, blocked_type, name)| {
                    M::ProxyAst(ProxyAst {
                        cookie,
                        flags,
                        node_idx,
                        ast_type,
                        blocked_type,
                        name,
                        lvb,
                    })
                },
            )
            .boxed(),
        (
            any::<u64>(),
            flags_and_lvb(LKM_PUT_LVB),
            any::<u8>(),
            lock_name(),
        )
            .prop_map(|(cookie, (flags, lvb), node_idx, name)| {
                M::UnlockLock(UnlockLock {
                    cookie,
                    flags,
                    node_idx,
                    name,
                    lvb,
                })
            })
            .boxed(),
        (any::<u8>(), lock_name())
            .prop_map(|(node_idx, name)| M::DerefLockres(DerefLockres { node_idx, name }))
            .boxed(),
        (any::<u8>(), any::<u8>(), lock_name())
            .prop_map(|(master, new_master, name)| {
                M::MigrateRequest(MigrateRequest {
                    master,
                    new_master,
                    name,
                })
            })
            .boxed(),
        (
            (any::<u8>(), any::<u8>(), any::<u32>(), any::<u64>()),
            lock_name(),
            lvb(),
            prop::collection::vec(mig_lock(), 0..=DLM_MAX_MIGRATABLE_LOCKS),
        )
            .prop_map(
                |((master, flags, total_locks, mig_cookie), name, lvb, locks)| {
                    M::MigLockres(MigLockres {
                        master,
                        flags,
                        total_locks,
                        mig_cookie,
                        name,
                        lvb,
                        locks,
                    })
                },
            )
            .boxed(),
        (
            any::<u8>(),
            proto(),
            proto(),
            domain_name(),
            prop::array::uniform32(any::<u8>()),
        )
            .prop_map(|(node_idx, dlm_proto, fs_proto, domain, map)| {
                M::QueryJoin(QueryJoin {
                    node_idx,
                    dlm_proto,
                    fs_proto,
                    domain,
                    node_map: NodeMap(map),
                })
            })
            .boxed(),
        (any::<u8>(), domain_name())
            .prop_map(|(node_idx, domain)| M::AssertJoined(AssertJoined { node_idx, domain }))
            .boxed(),
        (any::<u8>(), domain_name())
            .prop_map(|(node_idx, domain)| M::CancelJoin(CancelJoin { node_idx, domain }))
            .boxed(),
        any::<u8>()
            .prop_map(|node_idx| M::ExitDomain(ExitDomain { node_idx }))
            .boxed(),
        (any::<u8>(), lock_name())
            .prop_map(|(node_idx, name)| M::MasterRequery(MasterRequery { node_idx, name }))
            .boxed(),
        (any::<u8>(), any::<u8>())
            .prop_map(|(node_idx, dead_node)| {
                M::LockRequest(LockRequest {
                    node_idx,
                    dead_node,
                })
            })
            .boxed(),
        (any::<u8>(), any::<u8>())
            .prop_map(|(node_idx, dead_node)| {
                M::RecoDataDone(RecoDataDone {
                    node_idx,
                    dead_node,
                })
            })
            .boxed(),
        (any::<u8>(), any::<u8>())
            .prop_map(|(node_idx, dead_node)| {
                M::BeginReco(BeginReco {
                    node_idx,
                    dead_node,
                })
            })
            .boxed(),
        (any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(node_idx, dead_node, flags)| {
                M::FinalizeReco(FinalizeReco {
                    node_idx,
                    dead_node,
                    flags,
                })
            })
            .boxed(),
        (
            any::<u8>(),
            domain_name(),
            prop::collection::vec(prop::array::uniform32(any::<u8>()), 0..=O2NM_MAX_REGIONS),
        )
            .prop_map(|(node, domain, regions)| {
                M::QueryRegion(QueryRegion {
                    node,
                    domain,
                    regions,
                })
            })
            .boxed(),
        (
            any::<u8>(),
            domain_name(),
            prop::collection::vec(node_info(), 0..=O2NM_MAX_NODES),
        )
            .prop_map(|(node, domain, nodes)| {
                M::QueryNodeinfo(QueryNodeinfo {
                    node,
                    domain,
                    nodes,
                })
            })
            .boxed(),
        any::<u8>()
            .prop_map(|node_idx| M::BeginExitDomain(BeginExitDomain { node_idx }))
            .boxed(),
        (any::<u8>(), lock_name())
            .prop_map(|(node_idx, name)| M::DerefLockresDone(DerefLockresDone { node_idx, name }))
            .boxed(),
    ];
    Union::new(arms).boxed()
}

fn msg_header() -> impl Strategy<Value = MsgHeader> {
    (
        MSG_MAGIC..=KEEP_RESP_MAGIC,
        0..=MAX_PAYLOAD as u16,
        any::<u16>(),
        any::<u16>(),
        any::<u32>(),
        any::<i32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(magic, data_len, msg_type, pad1, sys_status, status, key, msg_num)| MsgHeader {
                magic,
                data_len,
                msg_type,
                pad1,
                sys_status,
                status,
                key,
                msg_num,
            },
        )
}

/// Every o2dlm type number, plus neighbours that must be refused.
fn any_msg_type() -> impl Strategy<Value = u16> {
    prop_oneof![498u16..=524, any::<u16>()]
}

proptest! {
    #[test]
    fn handshake_round_trip(
        protocol_version in any::<u64>(),
        connector_id in any::<u64>(),
        hb in any::<u32>(),
        idle in any::<u32>(),
        ka in any::<u32>(),
        rc in any::<u32>(),
    ) {
        let h = Handshake {
            protocol_version,
            connector_id,
            o2hb_heartbeat_timeout_ms: hb,
            idle_timeout_ms: idle,
            keepalive_delay_ms: ka,
            reconnect_delay_ms: rc,
        };
        prop_assert_eq!(Handshake::decode(&h.encode()), Ok(h));
    }

    #[test]
    fn header_round_trip(h in msg_header()) {
        let b = h.encode();
        prop_assert_eq!(MsgHeader::decode(&b), Ok(h));
        let reply = MsgHeader::status_reply(&h, 1, -5);
        prop_assert_eq!(
            (reply.magic, reply.data_len, reply.msg_type, reply.pad1, reply.key, reply.msg_num),
            (STATUS_MAGIC, 0, h.msg_type, h.pad1, h.key, h.msg_num)
        );
    }

    #[test]
    fn header_decode_arbitrary_bytes(b in prop::collection::vec(any::<u8>(), 0..64)) {
        match MsgHeader::decode(&b) {
            Ok(h) => {
                prop_assert!(b.len() >= HEADER_LEN);
                prop_assert_eq!(&h.encode()[..], &b[..HEADER_LEN]);
                prop_assert!((MSG_MAGIC..=KEEP_RESP_MAGIC).contains(&h.magic));
                prop_assert!(usize::from(h.data_len) <= MAX_PAYLOAD);
            }
            Err(_) => {
                let bad_magic = b.len() >= 2
                    && !(0xFA55..=0xFA58).contains(&u16::from_be_bytes([b[0], b[1]]));
                let bad_len = b.len() >= 4 && usize::from(u16::from_be_bytes([b[2], b[3]])) > MAX_PAYLOAD;
                prop_assert!(b.len() < HEADER_LEN || bad_magic || bad_len);
            }
        }
    }

    /// Frames cut at any point are reported incomplete, never misparsed.
    #[test]
    fn peek_frame_split_anywhere(
        h in msg_header(),
        payload_seed in any::<u8>(),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut frame = h.encode().to_vec();
        frame.extend((0..h.data_len).map(|i| payload_seed.wrapping_add(i as u8)));
        let total = frame.len();
        let k = cut.index(total + 1);
        let r = peek_frame(&frame[..k]);
        if k == total {
            prop_assert_eq!(r, Ok(Some((h, total))));
        } else {
            prop_assert_eq!(r, Ok(None));
        }
        frame.extend_from_slice(&MsgHeader::keepalive_request().encode());
        prop_assert_eq!(peek_frame(&frame), Ok(Some((h, total))));
    }

    #[test]
    fn dlm_round_trip(m in dlm_message()) {
        let b = m.encode();
        prop_assert!(b.len() <= registered_max_len(m.msg_type()).unwrap_or(0));
        prop_assert!(b.len() <= MAX_PAYLOAD);
        let frame = m.to_frame(0xC5C5_3CEA, 9);
        let (h, total) = peek_frame(&frame).unwrap().unwrap();
        prop_assert_eq!(total, frame.len());
        prop_assert_eq!(usize::from(h.data_len), b.len());
        prop_assert_eq!(h.key == DLM_MOD_KEY, m.uses_mod_key());
        prop_assert_eq!(&frame[HEADER_LEN..], &b[..]);
        prop_assert_eq!(DlmMessage::decode(m.msg_type(), &b), Ok(m));
    }

    /// Arbitrary payloads: no panic, and anything accepted has exactly the
    /// length its re-encoding has (the decoders never skip or invent bytes).
    #[test]
    fn dlm_decode_arbitrary_bytes(
        t in any_msg_type(),
        b in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        if let Ok(m) = DlmMessage::decode(t, &b) {
            prop_assert_eq!(m.msg_type(), t);
            let again = m.encode();
            prop_assert_eq!(again.len(), b.len());
            prop_assert_eq!(DlmMessage::decode(t, &again), Ok(m));
        }
    }

    /// A valid encoding with one byte changed is refused, or decodes to a
    /// value whose encoding matches the changed bytes except where it writes
    /// zeros (pads and name tails, which decoders ignore); never a panic.
    #[test]
    fn dlm_decode_mutated(
        m in dlm_message(),
        at in any::<prop::sample::Index>(),
        val in any::<u8>(),
    ) {
        let mut b = m.encode();
        let i = at.index(b.len());
        b[i] = val;
        if let Ok(d) = DlmMessage::decode(m.msg_type(), &b) {
            let again = d.encode();
            prop_assert_eq!(again.len(), b.len());
            for (k, (x, y)) in again.iter().zip(&b).enumerate() {
                prop_assert!(x == y || *x == 0, "byte {} re-encoded as {:#x}, was {:#x}", k, x, y);
            }
            prop_assert_eq!(DlmMessage::decode(m.msg_type(), &again), Ok(d));
        }
    }
}

/// Large payloads (QUERY_NODEINFO, full MIG_LOCKRES) with arbitrary contents.
#[test]
fn big_arbitrary_payloads_do_not_panic() {
    let mut seed = 0x1234_5678u32;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        seed
    };
    for len in [1092usize, 2108, 3952, 4072] {
        for _ in 0..50 {
            let b: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            for t in 500..=522u16 {
                if let Ok(m) = DlmMessage::decode(t, &b) {
                    assert_eq!(m.encode().len(), len, "type {t}");
                }
            }
        }
    }
}
