//! §10 of o2dlm-protocol.md lists what makes a Linux kernel node BUG. The
//! engine must never send any of it: every handler is fed valid, invalid,
//! unexpected and random input in several states and its replies checked,
//! and full multi-node runs are checked message by message.

use o2dlm::dlm::sim::{kernel_safety_violations, Cluster};
use o2dlm::dlm::{DomainId, Event, LockFlags, Mode, ReplyToken, Transmit, UnlockFlags};
use o2dlm::wire::dlm::*;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn pick<T: Copy>(&mut self, v: &[T]) -> T {
        v[(self.next() % v.len() as u64) as usize]
    }
}

const NAMES: [&[u8]; 5] = [b"held", b"mastered", b"remote", b"unknown", b"$RECOVERY"];

/// A 3-node cluster where node 0 masters "mastered" and "held", node 1
/// masters "remote", with locks in several states.
fn base() -> (Cluster, DomainId, Vec<u64>) {
    let mut c = Cluster::new(3, 5);
    let mut d = None;
    for n in 0..3 {
        d = Some(c.with(n, |x, now| x.join(now, b"testdomain")).unwrap());
        c.run_for(5);
    }
    let d = d.unwrap();
    let vb = LockFlags {
        noqueue: false,
        valblk: true,
    };
    let mut cookies = Vec::new();
    for (n, name, mode) in [
        (0u8, "mastered", Mode::Ex),
        (0, "held", Mode::Pr),
        (1, "remote", Mode::Pr),
        (1, "held", Mode::Pr),
        (2, "held", Mode::Ex),
        (0, "remote", Mode::Ex),
        (2, "mastered", Mode::Pr),
    ] {
        let l = c
            .with(n, |x, now| x.lock(now, d, name.as_bytes(), mode, vb))
            .unwrap();
        cookies.push(l.0);
        c.run_for(5);
    }
    (c, d, cookies)
}

fn random_message(r: &mut Rng, cookies: &[u64], domain: &[u8]) -> (u16, Vec<u8>) {
    let name = LockName::new(r.pick(&NAMES)).unwrap();
    let node = (r.next() % 4) as u8;
    let cookie = if r.next() % 3 == 0 {
        r.next()
    } else {
        r.pick(cookies)
    };
    let mode = r.pick(&[-1i8, 0, 1, 3, 4, 5, 9]);
    let junk = r.next() as u32;
    let flags = r.pick(&[
        0u32,
        LKM_VALBLK,
        LKM_GET_LVB | LKM_VALBLK,
        LKM_PUT_LVB | LKM_VALBLK,
        LKM_PUT_LVB | LKM_GET_LVB,
        LKM_CANCEL,
        LKM_CANCEL | LKM_PUT_LVB,
        LKM_NOQUEUE | LKM_CONVERT,
        junk,
    ]);
    let lvb = (flags & (LKM_PUT_LVB | LKM_GET_LVB) != 0).then_some([7u8; 64]);
    let dom = DomainName::new(domain).unwrap();
    let msg = match r.next() % 16 {
        0 => DlmMessage::MasterRequest(MasterRequest {
            node_idx: node,
            flags: 0,
            name,
        }),
        1 => DlmMessage::AssertMaster(AssertMaster {
            node_idx: node,
            flags: r.pick(&[0, 1, 2, 4, 7]),
            name,
        }),
        2 => DlmMessage::CreateLock(CreateLock {
            cookie,
            flags,
            node_idx: node,
            requested_type: mode,
            name,
        }),
        3 => DlmMessage::ConvertLock(ConvertLock {
            cookie,
            flags: flags | LKM_CONVERT,
            node_idx: node,
            requested_type: mode,
            name,
            lvb: (flags & LKM_PUT_LVB != 0).then_some([1; 64]),
        }),
        4 => DlmMessage::ProxyAst(ProxyAst {
            cookie,
            flags,
            node_idx: node,
            ast_type: r.pick(&[0, 1, 2, 9]),
            blocked_type: r.pick(&[0, 3, 5, 200]),
            name,
            lvb: (flags & LKM_GET_LVB != 0)
                .then_some([2; 64])
                .or(lvb.filter(|_| false)),
        }),
        5 => DlmMessage::UnlockLock(UnlockLock {
            cookie,
            flags,
            node_idx: node,
            name,
            lvb: (flags & LKM_PUT_LVB != 0).then_some([3; 64]),
        }),
        6 => DlmMessage::DerefLockres(DerefLockres {
            node_idx: node,
            name,
        }),
        7 => DlmMessage::MigrateRequest(MigrateRequest {
            master: node,
            new_master: (r.next() % 4) as u8,
            name,
        }),
        8 => {
            let n = (r.next() % 3) as usize;
            DlmMessage::MigLockres(MigLockres {
                master: if r.next() % 2 == 0 { node } else { 255 },
                flags: r.pick(&[0u8, 1, 2, 5, 6, 4]),
                total_locks: n as u32,
                mig_cookie: r.next() % 2,
                name,
                lvb: [4; 64],
                locks: (0..n)
                    .map(|_| MigratableLock {
                        cookie: if r.next() % 2 == 0 { 0 } else { cookie },
                        list: r.pick(&[0, 1, 2, 7]),
                        flags: r.pick(&[0, 2, 4]),
                        lock_type: r.pick(&[-1, 0, 3, 5, 2]),
                        convert_type: r.pick(&[-1, 0, 3, 5]),
                        highest_blocked: r.pick(&[-1, 3]),
                        node: (r.next() % 4) as u8,
                    })
                    .collect(),
            })
        }
        9 => DlmMessage::QueryJoin(QueryJoin {
            node_idx: node,
            dlm_proto: ProtocolVersion {
                major: 1,
                minor: r.pick(&[0, 2, 3, 9]),
            },
            fs_proto: ProtocolVersion {
                major: r.pick(&[1, 2]),
                minor: 0,
            },
            domain: dom,
            node_map: NodeMap::from_nodes(0..(r.next() % 5) as u8),
        }),
        10 => DlmMessage::AssertJoined(AssertJoined {
            node_idx: node,
            domain: dom,
        }),
        11 => DlmMessage::CancelJoin(CancelJoin {
            node_idx: node,
            domain: dom,
        }),
        12 => DlmMessage::ExitDomain(ExitDomain { node_idx: node }),
        13 => DlmMessage::BeginExitDomain(BeginExitDomain { node_idx: node }),
        14 => DlmMessage::MasterRequery(MasterRequery {
            node_idx: node,
            name,
        }),
        _ => DlmMessage::DerefLockresDone(DerefLockresDone {
            node_idx: node,
            name,
        }),
    };
    (msg.msg_type(), msg.encode())
}

fn forbidden(msg_type: u16, s: i32) -> bool {
    match msg_type {
        DLM_MASTER_REQUEST_MSG => !(0..=3).contains(&s),
        DLM_ASSERT_MASTER_MSG => s < 0,
        DLM_CREATE_LOCK_MSG => s == DLM_REJECTED,
        DLM_PROXY_AST_MSG => s == DLM_RECOVERING || s == DLM_MIGRATING,
        DLM_MIG_LOCKRES_MSG => s == -14,
        _ => false,
    }
}

#[test]
fn handlers_never_answer_what_crashes_a_kernel() {
    let mut r = Rng(0x1234_5678);
    let mut replies = 0;
    for round in 0..40 {
        let (mut c, d, cookies) = base();
        let now = c.now();
        let dlm = c.dlm((round % 3) as u8);
        for i in 0..300u64 {
            let (ty, mut payload) = random_message(&mut r, &cookies, b"testdomain");
            // Sometimes garbage bytes, truncations or extensions.
            match r.next() % 8 {
                0 => payload.iter_mut().for_each(|b| *b = r.next() as u8),
                1 => payload.truncate((r.next() as usize) % (payload.len() + 1)),
                2 => payload.extend_from_slice(&[0xFF; 64]),
                _ => {}
            }
            let key = if uses_mod_key(ty) { DLM_MOD_KEY } else { d.0 };
            let from = (r.next() % 3) as u8;
            let token = ReplyToken(i);
            if dlm
                .handle_request(now, from, ty, key, &payload, token)
                .is_err()
            {
                continue;
            }
            let mut answered = 0;
            while let Some(t) = dlm.poll_transmit() {
                if let Transmit::Reply {
                    token: t, status, ..
                } = t
                {
                    assert_eq!(t, token);
                    assert!(!forbidden(ty, status), "type {ty} answered {status}");
                    answered += 1;
                }
            }
            assert_eq!(answered, 1, "type {ty}: exactly one reply");
            replies += 1;
            while dlm.poll_event().is_some() {}
            let later = now + std::time::Duration::from_millis(i * 10);
            dlm.handle_timeout(later);
            while dlm.poll_transmit().is_some() {}
        }
    }
    assert!(replies > 5_000);
}

#[test]
fn whole_runs_never_send_what_crashes_a_kernel() {
    for seed in 0..10 {
        let (mut c, d, _) = base();
        c.shuffle_links = true;
        let mut r = Rng(seed * 7 + 1);
        let mut held: Vec<(u8, o2dlm::dlm::LockId)> = Vec::new();
        for step in 0..400 {
            let n = (r.next() % 3) as u8;
            let name = ["a", "b", "held", "mastered"][(r.next() % 4) as usize];
            match r.next() % 5 {
                0 | 1 => {
                    let mode = r.pick(&[Mode::Nl, Mode::Pr, Mode::Ex]);
                    let f = LockFlags {
                        noqueue: r.next() % 3 == 0,
                        valblk: true,
                    };
                    if let Ok(l) = c.with(n, |x, now| x.lock(now, d, name.as_bytes(), mode, f)) {
                        held.push((n, l));
                    }
                }
                2 if !held.is_empty() => {
                    let (n, l) = held.swap_remove((r.next() % held.len() as u64) as usize);
                    let cancel = r.next() % 4 == 0;
                    let f = UnlockFlags {
                        valblk: true,
                        cancel,
                    };
                    if c.with(n, |x, now| x.unlock(now, l, f, None)).is_err() || cancel {
                        held.push((n, l));
                    }
                }
                3 if !held.is_empty() => {
                    let (n, l) = held[(r.next() % held.len() as u64) as usize];
                    let mode = r.pick(&[Mode::Nl, Mode::Pr, Mode::Ex]);
                    let f = LockFlags {
                        noqueue: r.next() % 2 == 0,
                        valblk: true,
                    };
                    let _ = c.with(n, |x, now| x.convert(now, l, mode, f, None));
                }
                _ => {}
            }
            for _ in 0..(r.next() % 6) {
                c.step();
            }
            if step % 50 == 0 {
                c.run_for(200);
            }
            for n in 0..3 {
                for e in c.take_events(n) {
                    if let Event::LockFailed { lock, .. } | Event::Unlocked { lock } = e {
                        held.retain(|(m, l)| !(*m == n && *l == lock));
                    }
                }
            }
        }
        c.run_for(20_000);
        let v = kernel_safety_violations(&c.log);
        assert!(v.is_empty(), "seed {seed}: {v:?}");
    }
}

#[test]
fn the_checker_catches_forbidden_traffic() {
    use o2dlm::dlm::sim::Record;
    let bad_reply = Record::Reply {
        at_ms: 0,
        from: 1,
        to: 0,
        msg_type: DLM_ASSERT_MASTER_MSG,
        result: Ok(-22),
    };
    let stray_assert_joined = Record::Request {
        at_ms: 0,
        from: 1,
        to: 0,
        msg_type: DLM_ASSERT_JOINED_MSG,
        key: DLM_MOD_KEY,
        payload: AssertJoined {
            node_idx: 1,
            domain: DomainName::new(b"d").unwrap(),
        }
        .encode(),
    };
    assert_eq!(kernel_safety_violations(&[bad_reply]).len(), 1);
    assert_eq!(kernel_safety_violations(&[stray_assert_joined]).len(), 1);
}
