//! The kernel's quorum rule after a lost o2net link (quorum.c, restated in
//! o2net-wire.md §8.1), as bookkeeping plus a pure decision function.
//!
//! Four sets are tracked: nodes heartbeating, nodes with a usable link (we
//! always count ourselves), nodes "on hold" (in transition between
//! heartbeat-up and link-up, or with a link error whose fate is not yet
//! decided), and a pending flag. A decision is taken only when a link error
//! has been confirmed as "node still heartbeating" and every hold has
//! drained, exactly as the kernel sequences it, so that a userspace node and
//! kernel nodes reach the same verdict at about the same time.

use std::collections::BTreeSet;
use std::fmt;

/// Outcome of one quorum decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Heartbeating nodes (self included).
    pub heartbeating: usize,
    /// Nodes we can talk to (self included).
    pub connected: usize,
    /// Lowest heartbeating node, if any.
    pub lowest: Option<u8>,
    /// Whether that lowest node is among the connected ones.
    pub lowest_reachable: bool,
    /// Connected count needed to survive.
    pub needed: usize,
    /// True: this node must fence itself.
    pub fence: bool,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lowest = match self.lowest {
            Some(n) => format!(
                "{n} ({})",
                if self.lowest_reachable {
                    "reachable"
                } else {
                    "unreachable"
                }
            ),
            None => "none".to_string(),
        };
        write!(
            f,
            "{} heartbeating, {} connected, {} needed, lowest node {}",
            self.heartbeating, self.connected, self.needed, lowest
        )
    }
}

/// The pure rule. Returns None when no decision applies (we are not
/// heartbeating ourselves, or we are alone).
pub fn decide(
    local: u8,
    heartbeating: &BTreeSet<u8>,
    connected: &BTreeSet<u8>,
) -> Option<Decision> {
    let h = heartbeating.len();
    let c = connected.len();
    if !heartbeating.contains(&local) || h <= 1 {
        return None;
    }
    let lowest = heartbeating.iter().next().copied();
    let lowest_reachable = lowest.is_some_and(|n| connected.contains(&n));
    let (needed, fence) = if h % 2 == 1 {
        // Odd: a strict majority is needed.
        let q = h.div_ceil(2);
        (q, c < q)
    } else {
        // Even: half is enough only for the half holding the lowest node,
        // so two equal partitions cannot both survive.
        let q = h / 2;
        (q, c < q || (c == q && !lowest_reachable))
    };
    Some(Decision {
        heartbeating: h,
        connected: c,
        lowest,
        lowest_reachable,
        needed,
        fence,
    })
}

/// Quorum bookkeeping of one node.
#[derive(Debug, Clone)]
pub struct Quorum {
    local: u8,
    heartbeating: BTreeSet<u8>,
    connected: BTreeSet<u8>,
    holds: BTreeSet<u8>,
    pending: bool,
}

impl Quorum {
    /// Our own node counts as connected from the start (the kernel does
    /// this when it starts listening).
    pub fn new(local: u8) -> Quorum {
        let mut connected = BTreeSet::new();
        connected.insert(local);
        Quorum {
            local,
            heartbeating: BTreeSet::new(),
            connected,
            holds: BTreeSet::new(),
            pending: false,
        }
    }

    pub fn heartbeating(&self) -> &BTreeSet<u8> {
        &self.heartbeating
    }

    pub fn connected(&self) -> &BTreeSet<u8> {
        &self.connected
    }

    pub fn holds(&self) -> &BTreeSet<u8> {
        &self.holds
    }

    /// A node started heartbeating. Until its link is up it holds back
    /// decisions.
    pub fn hb_up(&mut self, node: u8) -> Option<Decision> {
        if !self.heartbeating.insert(node) {
            return None;
        }
        if self.connected.contains(&node) {
            self.clear_hold(node)
        } else {
            self.holds.insert(node);
            None
        }
    }

    /// A node stopped heartbeating: whatever hold it had is released.
    pub fn hb_down(&mut self, node: u8) -> Option<Decision> {
        self.heartbeating.remove(&node);
        self.clear_hold(node)
    }

    /// A link became usable (or recovered from idleness).
    pub fn conn_up(&mut self, node: u8) -> Option<Decision> {
        if !self.connected.insert(node) {
            return None;
        }
        if self.heartbeating.contains(&node) {
            self.clear_hold(node)
        } else {
            self.holds.insert(node);
            None
        }
    }

    /// A link failed (or went idle). While the node still heartbeats it
    /// holds decisions until `hb_still_up` or `hb_down`.
    pub fn conn_err(&mut self, node: u8) {
        if self.connected.remove(&node) && self.heartbeating.contains(&node) {
            self.holds.insert(node);
        }
    }

    /// The quorum delay passed after a link error and the node is still
    /// heartbeating: a decision is now due (once holds drain).
    pub fn hb_still_up(&mut self, node: u8) -> Option<Decision> {
        self.pending = true;
        self.clear_hold(node)
    }

    fn clear_hold(&mut self, node: u8) -> Option<Decision> {
        if self.holds.remove(&node) && self.holds.is_empty() && self.pending {
            self.pending = false;
            return Some(self.decide_now());
        }
        None
    }

    /// Runs the rule on the current sets. When the rule does not apply the
    /// result says "no fence" with the counts.
    pub fn decide_now(&self) -> Decision {
        decide(self.local, &self.heartbeating, &self.connected).unwrap_or_else(|| Decision {
            heartbeating: self.heartbeating.len(),
            connected: self.connected.len(),
            lowest: self.heartbeating.iter().next().copied(),
            lowest_reachable: false,
            needed: 0,
            fence: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[u8]) -> BTreeSet<u8> {
        v.iter().copied().collect()
    }

    #[test]
    fn rule_odd_and_even() {
        // Alone or not heartbeating: no decision.
        assert_eq!(decide(0, &set(&[0]), &set(&[0])), None);
        assert_eq!(decide(0, &set(&[1, 2]), &set(&[0])), None);
        // Three nodes: need two.
        assert!(!decide(2, &set(&[0, 1, 2]), &set(&[1, 2])).unwrap().fence);
        assert!(decide(2, &set(&[0, 1, 2]), &set(&[2])).unwrap().fence);
        // Two nodes, link lost: the lowest survives, the other fences.
        let d = decide(1, &set(&[0, 1]), &set(&[1])).unwrap();
        assert!(d.fence);
        assert_eq!((d.heartbeating, d.connected, d.needed), (2, 1, 1));
        assert!(!decide(0, &set(&[0, 1]), &set(&[0])).unwrap().fence);
        // Four nodes split 2/2: the half with node 0 survives.
        assert!(!decide(0, &set(&[0, 1, 2, 3]), &set(&[0, 1])).unwrap().fence);
        assert!(decide(2, &set(&[0, 1, 2, 3]), &set(&[2, 3])).unwrap().fence);
        assert!(decide(3, &set(&[0, 1, 2, 3]), &set(&[3])).unwrap().fence);
    }

    #[test]
    fn decision_waits_for_still_up_and_holds() {
        let mut q = Quorum::new(1);
        assert_eq!(q.hb_up(1), None);
        assert_eq!(q.hb_up(0), None);
        assert_eq!(q.holds(), &set(&[0]));
        assert_eq!(q.conn_up(0), None); // hold released, nothing pending
        assert!(q.holds().is_empty());
        q.conn_err(0);
        assert_eq!(q.holds(), &set(&[0]));
        let d = q.hb_still_up(0).expect("decision after still-up");
        assert!(d.fence, "node 1 of 2 without link fences: {d}");
    }

    #[test]
    fn node_death_cancels_the_decision() {
        let mut q = Quorum::new(0);
        q.hb_up(0);
        q.hb_up(1);
        q.conn_up(1);
        q.conn_err(1);
        // Heartbeat declares the node dead before the quorum delay: the hold
        // goes away with nothing pending, so no decision is taken.
        assert_eq!(q.hb_down(1), None);
        assert!(q.holds().is_empty());
    }

    #[test]
    fn another_hold_defers_the_decision() {
        let mut q = Quorum::new(2);
        for n in [0, 1, 2] {
            q.hb_up(n);
        }
        q.conn_up(0);
        // Node 1 heartbeats but has no link yet: it holds.
        q.conn_err(0);
        assert_eq!(q.hb_still_up(0), None, "node 1 still holds");
        let d = q.conn_up(1).expect("decision once the last hold drains");
        assert!(!d.fence, "2 of 3 connected: {d}");
    }
}
