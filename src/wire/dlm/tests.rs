//! Golden bytes from the reference's worked examples, and error cases.

use super::*;
use crate::wire::crc::dlm_domain_key;
use crate::wire::o2net::MsgHeader;

fn name(s: &str) -> LockName {
    LockName::new(s.as_bytes()).unwrap()
}

fn padded(prefix: &[u8], len: usize) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.resize(len, 0);
    v
}

/// Payload bytes: `head` then `name` zero-padded to 64, then `tail`.
fn with_name(head: &[u8], n: &[u8], tail: &[u8]) -> Vec<u8> {
    let mut v = head.to_vec();
    v.extend_from_slice(&padded(n, 64));
    v.extend_from_slice(tail);
    v
}

#[test]
fn master_request_golden() {
    let m = MasterRequest {
        node_idx: 2,
        flags: 0,
        name: name("mylock"),
    };
    let want = with_name(&[2, 6, 0, 0, 0, 0, 0, 0], b"mylock", &[]);
    assert_eq!(m.encode(), want);
    assert_eq!(MasterRequest::decode(&want), Ok(m));
    // The whole frame of the reference example (domain testdomain, #3).
    let key = dlm_domain_key(b"testdomain");
    assert_eq!(key, 0xC5C5_3CEA);
    let hdr = MsgHeader::request(DLM_MASTER_REQUEST_MSG, key, 3, want.len() as u16);
    assert_eq!(
        hdr.encode(),
        [
            0xfa, 0x55, 0x00, 0x48, 0x01, 0xf4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xc5, 0xc5, 0x3c,
            0xea, 0, 0, 0, 3
        ]
    );
}

#[test]
fn create_lock_golden() {
    let m = CreateLock {
        cookie: make_cookie(2, 0x11),
        flags: LKM_GET_LVB | LKM_VALBLK,
        node_idx: 2,
        requested_type: LKM_EXMODE,
        name: name("mylock"),
    };
    let want = with_name(
        &[2, 0, 0, 0, 0, 0, 0, 0x11, 0x40, 0, 1, 0, 0, 2, 5, 6],
        b"mylock",
        &[],
    );
    assert_eq!(want.len(), 80);
    assert_eq!(m.encode(), want);
    assert_eq!(CreateLock::decode(&want), Ok(m));
}

#[test]
fn proxy_ast_golden_with_and_without_lvb() {
    let mut lvb = [0u8; 64];
    lvb[..14].copy_from_slice(b"lvb-from-node1");
    let ast = ProxyAst {
        cookie: 0x0200_0000_0000_0011,
        flags: LKM_GET_LVB,
        node_idx: 1,
        ast_type: DLM_AST,
        blocked_type: 0,
        name: name("mylock"),
        lvb: Some(lvb),
    };
    let want = with_name(
        &[2, 0, 0, 0, 0, 0, 0, 0x11, 0x40, 0, 0, 0, 1, 0, 0, 6],
        b"mylock",
        &lvb,
    );
    assert_eq!(want.len(), 144);
    assert_eq!(ast.encode(), want);
    assert_eq!(ProxyAst::decode(&want), Ok(ast));

    let bast = ProxyAst {
        flags: 0,
        ast_type: DLM_BAST,
        blocked_type: LKM_EXMODE as u8,
        lvb: None,
        ..ast
    };
    let want = with_name(
        &[2, 0, 0, 0, 0, 0, 0, 0x11, 0, 0, 0, 0, 1, 1, 5, 6],
        b"mylock",
        &[],
    );
    assert_eq!(bast.encode(), want);
    assert_eq!(ProxyAst::decode(&want), Ok(bast));
    // GET_LVB in flags but only 80 bytes: the LVB is missing.
    let mut short = want.clone();
    short[8] = 0x40;
    assert!(matches!(
        ProxyAst::decode(&short),
        Err(WireError::Short { need: 144, .. })
    ));
    // No flag but an LVB's worth of bytes: refused, not silently dropped.
    let mut long = want;
    long.extend_from_slice(&[0; 64]);
    assert!(matches!(
        ProxyAst::decode(&long),
        Err(WireError::TooLong { max: 80, .. })
    ));
}

#[test]
fn convert_and_unlock_lvb_follow_put_lvb() {
    let mut lvb = [0u8; 64];
    lvb[..16].copy_from_slice(b"lvb-from-node0-R");
    let c = ConvertLock {
        cookie: make_cookie(0, 3),
        flags: LKM_PUT_LVB | LKM_CONVERT | LKM_VALBLK,
        node_idx: 0,
        requested_type: LKM_PRMODE,
        name: name("lockR"),
        lvb: Some(lvb),
    };
    let b = c.encode();
    assert_eq!(b.len(), 144);
    assert_eq!(&b[8..16], &[0x20, 0, 5, 0, 0, 0, 3, 5]);
    assert_eq!(&b[80..], &lvb);
    assert_eq!(ConvertLock::decode(&b), Ok(c));
    // Flags decide: with PUT_LVB and no LVB given, zeros are sent.
    let z = ConvertLock { lvb: None, ..c };
    assert_eq!(&z.encode()[80..], &[0u8; 64]);

    let u = UnlockLock {
        cookie: make_cookie(1, 9),
        flags: LKM_VALBLK | LKM_PUT_LVB,
        node_idx: 1,
        name: name("lockU"),
        lvb: Some(lvb),
    };
    let b = u.encode();
    assert_eq!(
        &b[..16],
        &[1, 0, 0, 0, 0, 0, 0, 9, 0x20, 0, 1, 0, 0, 0, 1, 5]
    );
    assert_eq!(UnlockLock::decode(&b), Ok(u));
    let plain = UnlockLock {
        flags: 0,
        lvb: None,
        ..u
    };
    assert_eq!(plain.encode().len(), 80);
    assert_eq!(UnlockLock::decode(&plain.encode()), Ok(plain));
}

#[test]
fn query_join_golden() {
    let q = QueryJoin {
        node_idx: 2,
        dlm_proto: DLM_PROTOCOL,
        fs_proto: FS_LOCKING_PROTOCOL,
        domain: DomainName::new(b"testdomain").unwrap(),
        node_map: NodeMap::from_nodes([0, 2]),
    };
    let mut want = vec![2, 0, 0, 10, 1, 3, 1, 0];
    want.extend_from_slice(&padded(b"testdomain", 64));
    want.extend_from_slice(&padded(&[0x05], 32));
    assert_eq!(q.encode(), want);
    assert_eq!(QueryJoin::decode(&want), Ok(q));
    let msg = DlmMessage::QueryJoin(q);
    assert!(msg.uses_mod_key());
    assert_eq!(msg.msg_type(), 510);
    assert_eq!(
        &MsgHeader::request(msg.msg_type(), DLM_MOD_KEY, 7, 104).encode()[..8],
        &[0xfa, 0x55, 0x00, 0x68, 0x01, 0xfe, 0, 0]
    );
    assert_eq!(
        QueryJoinResponse::new(JOIN_OK, 3, 0).to_status(),
        0x0103_0000
    );
    assert_eq!(
        QueryJoinResponse::new(JOIN_OK_NO_MAP, 0, 0).to_status(),
        0x0200_0000
    );
}

#[test]
fn small_messages_golden() {
    assert_eq!(ExitDomain { node_idx: 1 }.encode(), [1, 0, 0, 0]);
    assert_eq!(BeginExitDomain { node_idx: 2 }.encode(), [2, 0, 0, 0]);
    assert_eq!(
        BeginReco {
            node_idx: 0,
            dead_node: 2
        }
        .encode(),
        [0, 2, 0, 0, 0, 0, 0, 0]
    );
    assert_eq!(
        FinalizeReco {
            node_idx: 0,
            dead_node: 2,
            flags: DLM_FINALIZE_STAGE2
        }
        .encode(),
        [0, 2, 1, 0, 0, 0, 0, 0]
    );
    let r = RecoDataDone {
        node_idx: 1,
        dead_node: 2,
    };
    assert_eq!(r.encode(), padded(&[1, 2], 72));
    let d = DerefLockres {
        node_idx: 0,
        name: name("lockU"),
    };
    assert_eq!(
        d.encode(),
        with_name(&[0, 0, 0, 0, 0, 0, 0, 5], b"lockU", &[])
    );
    let m = MigrateRequest {
        master: 2,
        new_master: 0,
        name: name("lockG"),
    };
    assert_eq!(
        m.encode(),
        with_name(&[2, 0, 5, 0, 0, 0, 0, 0], b"lockG", &[])
    );
    let q = MasterRequery {
        node_idx: 0,
        name: LockName::new(DLM_RECOVERY_LOCK_NAME).unwrap(),
    };
    assert_eq!(
        q.encode(),
        with_name(&[0, 0, 0, 9, 0, 0, 0, 0], b"$RECOVERY", &[])
    );
    let j = AssertJoined {
        node_idx: 1,
        domain: DomainName::new(b"testdomain").unwrap(),
    };
    let mut want = vec![1, 0, 0, 10];
    want.extend_from_slice(&padded(b"testdomain", 64));
    assert_eq!(j.encode(), want);
    assert_eq!(AssertJoined::decode(&want), Ok(j));
}

#[test]
fn mig_lockres_golden_and_bounds() {
    let mut lvb = [0u8; 64];
    lvb[..16].copy_from_slice(b"lvb-M-from-node1");
    let m = MigLockres {
        master: 1,
        flags: DLM_MRES_MIGRATION | DLM_MRES_ALL_DONE,
        total_locks: 1,
        mig_cookie: 0,
        name: name("lockM"),
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
    };
    let b = m.encode();
    assert_eq!(b.len(), 128);
    assert_eq!(&b[..16], &[1, 5, 1, 6, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&b[16..48], &padded(b"lockM", 32)[..]);
    assert_eq!(&b[48..112], &lvb);
    assert_eq!(
        &b[112..],
        &[0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 3, 0xff, 0xff, 0]
    );
    assert_eq!(MigLockres::decode(&b), Ok(m.clone()));

    // num_locks larger than the bytes hold.
    let mut lying = b.clone();
    lying[2] = 2;
    assert!(matches!(
        MigLockres::decode(&lying),
        Err(WireError::Short { need: 144, .. })
    ));
    // num_locks above the protocol limit, whatever the length.
    let mut huge = b.clone();
    huge[2] = 241;
    assert!(matches!(
        MigLockres::decode(&huge),
        Err(WireError::BadField {
            field: "num_locks",
            ..
        })
    ));
    // lockname_len beyond its 32-byte field.
    let mut badname = b.clone();
    badname[1] = 33;
    assert!(matches!(
        MigLockres::decode(&badname),
        Err(WireError::BadField {
            field: "namelen",
            ..
        })
    ));
    assert!(MigLockres::decode(&b[..111]).is_err());
    // 240 records is the maximum and fits the registered length.
    let full = MigLockres {
        locks: vec![m.locks[0]; DLM_MAX_MIGRATABLE_LOCKS],
        ..m
    };
    let fb = full.encode();
    assert_eq!(fb.len(), MigLockres::MAX_LEN);
    assert_eq!(fb.len(), 3952);
    assert_eq!(MigLockres::decode(&fb), Ok(full));
}

#[test]
fn query_region_and_nodeinfo() {
    let dom = DomainName::new(b"testdomain").unwrap();
    let qr = QueryRegion {
        node: 1,
        domain: dom,
        regions: vec![[b'A'; 32], [b'B'; 32]],
    };
    let b = qr.encode();
    assert_eq!(b.len(), 1092);
    assert_eq!(&b[..4], &[1, 2, 10, 0]);
    assert_eq!(&b[68..100], &[b'A'; 32]);
    assert!(b[132..].iter().all(|&x| x == 0));
    assert_eq!(QueryRegion::decode(&b), Ok(qr));
    let mut bad = b.clone();
    bad[1] = 33;
    assert!(QueryRegion::decode(&bad).is_err());

    let qn = QueryNodeinfo {
        node: 1,
        domain: dom,
        nodes: vec![
            NodeInfo {
                num: 0,
                port: 7777,
                addr: "10.0.3.1".parse().unwrap(),
            },
            NodeInfo {
                num: 1,
                port: 7777,
                addr: "10.0.3.2".parse().unwrap(),
            },
        ],
    };
    let b = qn.encode();
    assert_eq!(b.len(), 2108);
    assert_eq!(&b[68..76], &[0, 0, 0x1e, 0x61, 10, 0, 3, 1]);
    assert_eq!(&b[76..84], &[1, 0, 0x1e, 0x61, 10, 0, 3, 2]);
    assert_eq!(QueryNodeinfo::decode(&b), Ok(qn));
}

#[test]
fn decoder_rejections() {
    // Unknown and unused types.
    for t in [0u16, 1, 2, 499, 501, 523, 0xffff] {
        assert!(DlmMessage::decode(t, &[0; 72]).is_err(), "type {t}");
    }
    // Wrong lengths for every fixed-size type.
    for t in 500..=522u16 {
        if t == DLM_UNUSED_MSG1 {
            continue;
        }
        let Some(max) = registered_max_len(t) else {
            panic!("no max for {t}");
        };
        assert!(DlmMessage::decode(t, &[]).is_err(), "type {t} empty");
        assert!(
            DlmMessage::decode(t, &vec![0; max + 1]).is_err(),
            "type {t} oversize"
        );
    }
    // Lock name longer than DLM_LOCKID_NAME_MAX.
    let mut b = MasterRequest {
        node_idx: 0,
        flags: 0,
        name: name("x"),
    }
    .encode();
    b[1] = 33;
    assert!(matches!(
        DlmMessage::decode(500, &b),
        Err(WireError::BadField {
            field: "namelen",
            value: 33,
            ..
        })
    ));
    // Domain name longer than its 64-byte field.
    let mut b = AssertJoined {
        node_idx: 0,
        domain: DomainName::new(b"d").unwrap(),
    }
    .encode();
    b[3] = 65;
    assert!(AssertJoined::decode(&b).is_err());
}

#[test]
fn dispatch_covers_every_type() {
    let n = name("n");
    let dom = DomainName::new(b"d").unwrap();
    let all = vec![
        DlmMessage::MasterRequest(MasterRequest {
            node_idx: 1,
            flags: 0,
            name: n,
        }),
        DlmMessage::AssertMaster(AssertMaster {
            node_idx: 1,
            flags: 4,
            name: n,
        }),
        DlmMessage::CreateLock(CreateLock {
            cookie: 1,
            flags: 0,
            node_idx: 1,
            requested_type: 3,
            name: n,
        }),
        DlmMessage::ConvertLock(ConvertLock {
            cookie: 1,
            flags: LKM_CONVERT,
            node_idx: 1,
            requested_type: 0,
            name: n,
            lvb: None,
        }),
        DlmMessage::ProxyAst(ProxyAst {
            cookie: 1,
            flags: 0,
            node_idx: 1,
            ast_type: 1,
            blocked_type: 3,
            name: n,
            lvb: None,
        }),
        DlmMessage::UnlockLock(UnlockLock {
            cookie: 1,
            flags: LKM_CANCEL,
            node_idx: 1,
            name: n,
            lvb: None,
        }),
        DlmMessage::DerefLockres(DerefLockres {
            node_idx: 1,
            name: n,
        }),
        DlmMessage::MigrateRequest(MigrateRequest {
            master: 1,
            new_master: 2,
            name: n,
        }),
        DlmMessage::MigLockres(MigLockres {
            master: 1,
            flags: 5,
            total_locks: 0,
            mig_cookie: 0,
            name: n,
            lvb: [0; 64],
            locks: vec![],
        }),
        DlmMessage::QueryJoin(QueryJoin {
            node_idx: 1,
            dlm_proto: DLM_PROTOCOL,
            fs_proto: FS_LOCKING_PROTOCOL,
            domain: dom,
            node_map: NodeMap::new(),
        }),
        DlmMessage::AssertJoined(AssertJoined {
            node_idx: 1,
            domain: dom,
        }),
        DlmMessage::CancelJoin(CancelJoin {
            node_idx: 1,
            domain: dom,
        }),
        DlmMessage::ExitDomain(ExitDomain { node_idx: 1 }),
        DlmMessage::MasterRequery(MasterRequery {
            node_idx: 1,
            name: n,
        }),
        DlmMessage::LockRequest(LockRequest {
            node_idx: 1,
            dead_node: 2,
        }),
        DlmMessage::RecoDataDone(RecoDataDone {
            node_idx: 1,
            dead_node: 2,
        }),
        DlmMessage::BeginReco(BeginReco {
            node_idx: 1,
            dead_node: 2,
        }),
        DlmMessage::FinalizeReco(FinalizeReco {
            node_idx: 1,
            dead_node: 2,
            flags: 1,
        }),
        DlmMessage::QueryRegion(QueryRegion {
            node: 1,
            domain: dom,
            regions: vec![],
        }),
        DlmMessage::QueryNodeinfo(QueryNodeinfo {
            node: 1,
            domain: dom,
            nodes: vec![],
        }),
        DlmMessage::BeginExitDomain(BeginExitDomain { node_idx: 1 }),
        DlmMessage::DerefLockresDone(DerefLockresDone {
            node_idx: 1,
            name: n,
        }),
    ];
    let types: Vec<u16> = all.iter().map(DlmMessage::msg_type).collect();
    let want: Vec<u16> = (500..=522).filter(|&t| t != 501).collect();
    assert_eq!(types, want);
    for m in &all {
        let b = m.encode();
        let max = registered_max_len(m.msg_type()).unwrap();
        assert!(b.len() <= max, "{m:?} longer than its registered max");
        assert_eq!(DlmMessage::decode(m.msg_type(), &b).as_ref(), Ok(m));
        assert_eq!(
            m.uses_mod_key(),
            matches!(m.msg_type(), 510 | 511 | 512 | 519 | 520)
        );
    }
}
