//! Randomised clients on 3..5 engine nodes with seeded message
//! interleavings: mutual exclusion must hold at every step, the LVB counter
//! written under EX must be exactly what every later grant delivers, and
//! everybody must get through (no lost grant, no stuck request).

use o2dlm::dlm::sim::Cluster;
use o2dlm::dlm::{DomainId, Event, LockFlags, LockId, Mode, UnlockFlags};

const NAMES: [&str; 3] = ["s0", "s1", "s2"];

#[derive(Debug, Clone, Copy, PartialEq)]
enum St {
    Idle,
    Requesting(LockId),
    Held(LockId, Mode),
    Converting(LockId, Mode, Mode),
    Releasing(LockId),
}

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
    fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
}

fn lvb_of(v: u64) -> [u8; 64] {
    let mut l = [0u8; 64];
    l[..8].copy_from_slice(&v.to_le_bytes());
    l
}

fn val(l: &[u8; 64]) -> u64 {
    u64::from_le_bytes(l[..8].try_into().unwrap())
}

fn using(s: St) -> Option<Mode> {
    match s {
        St::Held(_, m) => Some(m),
        St::Converting(_, from, to) => Some(from.min(to)),
        _ => None,
    }
}

fn run(nodes: usize, seed: u64, steps: usize, churn: bool) {
    let mut c = Cluster::new(nodes, seed);
    c.shuffle_links = true;
    let mut dom: Option<DomainId> = None;
    for n in 0..nodes as u8 {
        dom = Some(c.with(n, |x, now| x.join(now, b"stress")).unwrap());
    }
    assert!(
        c.run_until(60_000, |c| (0..nodes as u8)
            .all(|n| c.dlm(n).is_joined(dom.unwrap()))),
        "seed {seed}: join"
    );
    let d = dom.unwrap();
    let mut rng = Rng(seed.wrapping_mul(31) | 1);
    let mut st = vec![[St::Idle; 3]; nodes];
    let mut bast = vec![[false; 3]; nodes];
    let mut committed = [0u64; 3];
    let mut grants = 0usize;
    // Membership churn: a node drains its locks, leaves, and later rejoins.
    #[derive(Clone, Copy, PartialEq, Debug)]
    enum Member {
        In,
        Draining,
        Leaving,
        Out(usize),
        Joining,
    }
    let mut member = vec![Member::In; nodes];
    let mut leaves = 0usize;
    for step in 0..steps + 20_000 {
        let stopping = step >= steps;
        let k = rng.next() % 4;
        for _ in 0..k {
            if !c.step() {
                break;
            }
        }
        if rng.chance(10) {
            c.run_for(1 + rng.next() % 120);
        }
        for n in 0..nodes {
            for e in c.take_events(n as u8) {
                match e {
                    Event::LeaveDone { .. } => {
                        member[n] = Member::Out(step + 300);
                        leaves += 1;
                        continue;
                    }
                    Event::JoinDone { result, .. } => {
                        assert!(result.is_ok(), "seed {seed}: rejoin failed");
                        member[n] = Member::In;
                        continue;
                    }
                    _ => {}
                }
                let Some(i) = (0..3).find(|&i| match st[n][i] {
                    St::Requesting(l)
                    | St::Held(l, _)
                    | St::Converting(l, _, _)
                    | St::Releasing(l) => match &e {
                        Event::Ast { lock, .. }
                        | Event::Bast { lock, .. }
                        | Event::LockFailed { lock, .. }
                        | Event::ConvertFailed { lock, .. }
                        | Event::Unlocked { lock }
                        | Event::Cancelled { lock } => *lock == l,
                        _ => false,
                    },
                    St::Idle => false,
                }) else {
                    continue;
                };
                match e {
                    Event::Ast { lock, mode, lvb } => {
                        grants += 1;
                        if mode > Mode::Nl {
                            let v = val(&lvb.expect("valblk grant carries the LVB"));
                            assert_eq!(
                                v, committed[i],
                                "seed {seed} step {step}: stale LVB on node {n} {}",
                                NAMES[i]
                            );
                        }
                        st[n][i] = St::Held(lock, mode);
                    }
                    Event::Bast { .. } => bast[n][i] = true,
                    Event::LeaveDone { .. } | Event::JoinDone { .. } => {}
                    Event::LockFailed { .. } | Event::Unlocked { .. } => {
                        st[n][i] = St::Idle;
                        bast[n][i] = false;
                    }
                    Event::ConvertFailed { lock, .. } | Event::Cancelled { lock } => {
                        if let St::Converting(_, from, _) = st[n][i] {
                            st[n][i] = St::Held(lock, from);
                        } else {
                            st[n][i] = St::Idle;
                        }
                    }
                }
            }
        }
        // Mutual exclusion.
        for i in 0..3 {
            let users: Vec<(usize, Mode)> = (0..nodes)
                .filter_map(|n| using(st[n][i]).map(|m| (n, m)))
                .collect();
            for a in &users {
                for b in &users {
                    if a.0 != b.0 {
                        assert!(
                            a.1.compatible(b.1),
                            "seed {seed} step {step}: {} held {:?}",
                            NAMES[i],
                            users
                        );
                    }
                }
            }
        }
        // Membership changes.
        if churn && !stopping && step % 500 == 250 {
            let n = (rng.next() % nodes as u64) as usize;
            if member.iter().all(|m| *m == Member::In) {
                member[n] = Member::Draining;
            }
        }
        for n in 0..nodes {
            match member[n] {
                Member::Draining if st[n].iter().all(|s| *s == St::Idle) => {
                    c.with(n as u8, |x, now| x.leave(now, d)).unwrap();
                    member[n] = Member::Leaving;
                }
                Member::Out(at) if step >= at || stopping => {
                    c.with(n as u8, |x, now| x.join(now, b"stress")).unwrap();
                    member[n] = Member::Joining;
                }
                _ => {}
            }
        }
        // Client actions.
        let n = (rng.next() % nodes as u64) as usize;
        let leaving = member[n] != Member::In;
        let i = (rng.next() % 3) as usize;
        let name = NAMES[i];
        let vb = LockFlags {
            noqueue: false,
            valblk: true,
        };
        match st[n][i] {
            St::Idle if !stopping && !leaving && rng.chance(40) => {
                let mode = if rng.chance(50) { Mode::Ex } else { Mode::Pr };
                let flags = LockFlags {
                    noqueue: rng.chance(20),
                    valblk: true,
                };
                let l = c
                    .with(n as u8, |x, now| {
                        x.lock(now, d, name.as_bytes(), mode, flags)
                    })
                    .unwrap();
                st[n][i] = St::Requesting(l);
            }
            St::Held(l, m) if bast[n][i] || stopping || leaving || rng.chance(25) => {
                bast[n][i] = false;
                let lvb = if m == Mode::Ex {
                    committed[i] += 1;
                    Some(lvb_of(committed[i]))
                } else {
                    None
                };
                if stopping || leaving || rng.chance(60) {
                    c.with(n as u8, |x, now| {
                        x.unlock(
                            now,
                            l,
                            UnlockFlags {
                                valblk: true,
                                cancel: false,
                            },
                            lvb,
                        )
                    })
                    .unwrap();
                    st[n][i] = St::Releasing(l);
                } else if m == Mode::Ex {
                    c.with(n as u8, |x, now| x.convert(now, l, Mode::Nl, vb, lvb))
                        .unwrap();
                    st[n][i] = St::Converting(l, m, Mode::Nl);
                } else {
                    let to = if m == Mode::Nl { Mode::Pr } else { Mode::Ex };
                    c.with(n as u8, |x, now| x.convert(now, l, to, vb, None))
                        .unwrap();
                    st[n][i] = St::Converting(l, m, to);
                }
            }
            St::Converting(l, from, to) if to > from && (bast[n][i] || stopping || leaving) => {
                // Give way instead of deadlocking on a conversion.
                bast[n][i] = false;
                let _ = c.with(n as u8, |x, now| {
                    x.unlock(
                        now,
                        l,
                        UnlockFlags {
                            valblk: false,
                            cancel: true,
                        },
                        None,
                    )
                });
            }
            St::Requesting(l) if (stopping || leaving) && rng.chance(5) => {
                let _ = c.with(n as u8, |x, now| {
                    x.unlock(
                        now,
                        l,
                        UnlockFlags {
                            valblk: false,
                            cancel: true,
                        },
                        None,
                    )
                });
            }
            _ => {}
        }
        if stopping
            && st.iter().all(|s| s.iter().all(|x| *x == St::Idle))
            && member.iter().all(|m| *m == Member::In)
        {
            if churn {
                assert!(leaves > 0, "seed {seed}: no node left");
            }
            c.run_for(20_000);
            for n in 0..nodes as u8 {
                assert_eq!(c.dlm(n).outstanding_requests(), 0, "seed {seed}");
            }
            assert!(grants > 10, "seed {seed}: only {grants} grants");
            let v = o2dlm::dlm::sim::kernel_safety_violations(&c.log);
            assert!(v.is_empty(), "seed {seed}: {v:?}");
            return;
        }
    }
    panic!("seed {seed}: clients stuck: {st:?}");
}

#[test]
fn three_nodes_random_interleavings() {
    for seed in 1..=12 {
        run(3, seed, 3_000, false);
    }
}

#[test]
fn five_nodes_random_interleavings() {
    for seed in 100..=104 {
        run(5, seed, 3_000, false);
    }
}

#[test]
fn nodes_leave_and_rejoin_under_load() {
    for seed in 200..=209 {
        run(3, seed, 3_000, true);
    }
    for seed in 300..=302 {
        run(4, seed, 3_000, true);
    }
}
