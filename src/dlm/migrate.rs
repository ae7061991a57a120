//! Lock resource migration (§8), used when a master leaves the domain:
//! the old-master (source) side, the new-master (target) side and third
//! nodes (MIGRATE_REQUEST). Also the shutdown drain that decides, per
//! resource, between migrating and purging.

use super::domain::{lock_record, DropState, MigSource, MigTarget, Mle, MleKind, NodeSet};
use super::lockres::{Lock, LockKey, LockRes};
use super::mode::Mode;
use super::node::*;
use crate::wire::dlm::*;
use std::time::Instant;

impl Dlm {
    /// One shutdown pass over a domain's resources. Returns true when none
    /// is left.
    pub(crate) fn drain_domain(&mut self, now: Instant, key: u32) -> bool {
        let me = self.me;
        let Some(d) = self.domains.get(&key) else {
            return true;
        };
        let names: Vec<LockName> = d.resources.keys().copied().collect();
        // Purges first (their DEREFs go out at once), then migrations, as
        // the kernel's DLM thread purges before the exit loop migrates.
        let mut migrate = Vec::new();
        for name in names {
            let Some(d) = self.domains.get(&key) else {
                return true;
            };
            let Some(r) = d.resources.get(&name) else {
                continue;
            };
            let own_locks = self
                .locks
                .values()
                .any(|l| l.domain == key && l.name == name);
            if own_locks || r.drop != DropState::None || r.mastery.is_some() || r.assert_jobs > 0 {
                continue;
            }
            if r.owner == Some(me) {
                if r.mig_source.is_some() || r.mig_target.is_some() {
                    continue;
                }
                if r.q.is_empty() && r.refmap.is_empty() {
                    if let Some(d) = self.domains.get_mut(&key) {
                        d.resources.remove(&name);
                    }
                    continue;
                }
                if let Some(t) = migration_target(r, &d.exit_map, &d.domain_map, me) {
                    migrate.push((name, t));
                }
            } else if r.owner.is_some() {
                if r.waiting_ops.is_empty() && !r.migrating && !r.recovering {
                    self.purge(now, key, name);
                }
            } else if r.waiting_ops.is_empty() {
                if let Some(d) = self.domains.get_mut(&key) {
                    d.resources.remove(&name);
                }
            }
        }
        for (name, t) in migrate {
            self.start_migration(now, key, name, t);
        }
        self.domains
            .get(&key)
            .is_none_or(|d| d.resources.is_empty())
    }

    /// Old master: freeze the resource and send it to `target`.
    fn start_migration(&mut self, now: Instant, key: u32, name: LockName, target: u8) {
        let me = self.me;
        if self
            .domains
            .get(&key)
            .is_some_and(|d| d.mles.contains_key(&name))
        {
            return;
        }
        // Deliver whatever is pending before freezing.
        self.after_change(now, key, name);
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let mut mle = Mle::new(MleKind::Migration);
        mle.master = Some(me);
        mle.new_master = Some(target);
        d.mles.insert(name, mle);
        let Some(r) = d.resources.get_mut(&name) else {
            return;
        };
        r.migrating = true;
        let mut records = Vec::new();
        for (list, q) in [
            (DLM_GRANTED_LIST, &r.q.granted),
            (DLM_CONVERTING_LIST, &r.q.converting),
            (DLM_BLOCKED_LIST, &r.q.blocked),
        ] {
            records.extend(q.iter().map(|l| lock_record(l, list)));
        }
        if records.is_empty() {
            records.push(MigratableLock {
                cookie: 0,
                list: DLM_BLOCKED_LIST,
                flags: 0,
                lock_type: LKM_IVMODE,
                convert_type: LKM_IVMODE,
                highest_blocked: LKM_IVMODE,
                node: me,
            });
        }
        let total = records.len();
        let chunks: Vec<Vec<MigratableLock>> = records
            .chunks(DLM_MAX_MIGRATABLE_LOCKS)
            .map(|c| c.to_vec())
            .collect();
        let mig_cookie = if chunks.len() > 1 {
            let c = self.next_mig_cookie;
            self.next_mig_cookie += 1;
            c
        } else {
            0
        };
        let lvb = r.q.lvb.0;
        r.mig_source = Some(MigSource {
            target,
            unanswered: chunks.len(),
            finished: false,
            failed: false,
        });
        log::info!("o2dlm: node {me} migrates {name} to node {target} ({total} locks)");
        let n = chunks.len();
        for (i, locks) in chunks.into_iter().enumerate() {
            let mut flags = DLM_MRES_MIGRATION;
            if i + 1 == n {
                flags |= DLM_MRES_ALL_DONE;
            }
            let msg = MigLockres {
                master: me,
                flags,
                total_locks: total as u32,
                mig_cookie,
                name,
                lvb,
                locks,
            };
            debug_assert!(msg.locks.iter().all(|l| l.highest_blocked == LKM_IVMODE));
            self.send(
                target,
                key,
                DlmMessage::MigLockres(msg),
                Pending::MigLockres(name),
            );
        }
    }

    pub(crate) fn on_mig_lockres_reply(
        &mut self,
        now: Instant,
        key: u32,
        name: LockName,
        to: u8,
        r: Result<i32, TransportError>,
    ) {
        let Some(res) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        else {
            return;
        };
        let Some(ms) = res.mig_source.as_mut() else {
            return;
        };
        ms.unanswered = ms.unanswered.saturating_sub(1);
        if r != Ok(0) {
            log::warn!("o2dlm: node {to} refused migration of {name}: {r:?}");
            ms.failed = true;
        }
        self.migration_source_step(now, key, name);
    }

    /// Old master: finish (or undo) once the target asserted and every
    /// message was answered.
    pub(crate) fn migration_source_step(&mut self, now: Instant, key: u32, name: LockName) {
        let me = self.me;
        let Some(d) = self.domains.get_mut(&key) else {
            return;
        };
        let Some(r) = d.resources.get_mut(&name) else {
            return;
        };
        let Some(ms) = r.mig_source.clone() else {
            return;
        };
        if ms.unanswered > 0 {
            return;
        }
        if ms.finished {
            // Now a plain non-master copy without locks; purged next pass.
            r.mig_source = None;
            r.migrating = false;
            r.owner = Some(ms.target);
            r.q = LockRes::new();
            r.refmap.clear();
            d.mles.remove(&name);
            self.kick_resource(now, key, name);
        } else if ms.failed {
            r.mig_source = None;
            r.migrating = false;
            r.owner = Some(me);
            d.mles.remove(&name);
            self.after_change(now, key, name);
        }
    }

    /// MIG_LOCKRES on the new master (migration only; recovery transfers
    /// are a later step and refused with −EINVAL, never −EFAULT).
    pub(crate) fn handle_mig_lockres(
        &mut self,
        now: Instant,
        key: u32,
        from: u8,
        m: MigLockres,
        token: ReplyToken,
    ) {
        let status = self.mig_lockres_apply(key, from, &m);
        debug_assert!(status != -14, "never -EFAULT");
        self.reply(token, from, status);
        if status == 0 && m.flags & DLM_MRES_ALL_DONE != 0 {
            let me = self.me;
            let thirds: Vec<u8> = self
                .domains
                .get(&key)
                .map(|d| {
                    d.others(me)
                        .into_iter()
                        .filter(|&n| n != m.master)
                        .collect()
                })
                .unwrap_or_default();
            self.start_assert_job(
                now,
                key,
                m.name,
                DLM_ASSERT_MASTER_FINISH_MIGRATION,
                AssertPurpose::FinishMigration { old: m.master },
                thirds,
            );
        }
    }

    fn mig_lockres_apply(&mut self, key: u32, from: u8, m: &MigLockres) -> i32 {
        let me = self.me;
        if m.flags & DLM_MRES_MIGRATION == 0 || m.flags & DLM_MRES_RECOVERY != 0 {
            return EINVAL;
        }
        if m.master != from || m.locks.is_empty() {
            return EINVAL;
        }
        // Our own records must match our own locks.
        for rec in &m.locks {
            if rec.node == me && rec.cookie != 0 {
                let ok = self
                    .locks
                    .get(&rec.cookie)
                    .is_some_and(|l| l.domain == key && l.name == m.name);
                if !ok {
                    log::error!(
                        "o2dlm: migration of {} names an unknown lock of ours",
                        m.name
                    );
                    return EINVAL;
                }
            }
        }
        let Some(d) = self.domains.get_mut(&key) else {
            return EINVAL;
        };
        let r = d
            .resources
            .entry(m.name)
            .or_insert_with(|| super::domain::Resource::new(m.name, None));
        match &mut r.mig_target {
            Some(t) if t.from == from && t.mig_cookie == m.mig_cookie => {
                t.received += m.locks.len() as u32;
            }
            Some(_) => return EINVAL,
            None => {
                r.mig_target = Some(MigTarget {
                    from,
                    mig_cookie: m.mig_cookie,
                    total: m.total_locks,
                    received: m.locks.len() as u32,
                });
                r.q = LockRes::new();
            }
        }
        r.migrating = true;
        r.owner = Some(me);
        let mut lvb_holder = false;
        for rec in &m.locks {
            if rec.cookie == 0 && rec.lock_type == LKM_IVMODE {
                // Dummy: the sender only holds a reference.
                if rec.node != me {
                    r.refmap.insert(rec.node);
                }
                continue;
            }
            let Some(mode) = Mode::from_wire(rec.lock_type) else {
                continue;
            };
            let mut lock = Lock::new(
                LockKey {
                    node: rec.node,
                    cookie: rec.cookie,
                },
                mode,
            );
            lock.convert_to = Mode::from_wire(rec.convert_type);
            lock.get_lvb = rec.flags & DLM_LKSB_GET_LVB != 0;
            if rec.list != DLM_BLOCKED_LIST && mode > Mode::Nl {
                lvb_holder = true;
            }
            if rec.node != me {
                r.refmap.insert(rec.node);
            }
            match rec.list {
                DLM_GRANTED_LIST => r.q.granted.push(lock),
                DLM_CONVERTING_LIST => r.q.converting.push(lock),
                _ => r.q.blocked.push(lock),
            }
        }
        // The kernel takes the LVB only from other nodes' PR/EX records
        // (capture 06 shows it lost when the only record is the target's
        // own). In a migration the old master's value is authoritative, so
        // we always keep it: kernel peers then read the true value where a
        // kernel target would have given them zeros.
        let _ = lvb_holder;
        if m.lvb != [0; 64] {
            r.q.lvb.0 = m.lvb;
        }
        if m.flags & DLM_MRES_ALL_DONE != 0 {
            r.refmap.insert(from);
        }
        0
    }

    /// New master: every node knows; unfreeze and grant.
    pub(crate) fn migration_target_done(&mut self, now: Instant, key: u32, name: LockName) {
        let me = self.me;
        let Some(r) = self
            .domains
            .get_mut(&key)
            .and_then(|d| d.resources.get_mut(&name))
        else {
            return;
        };
        r.mig_target = None;
        r.migrating = false;
        r.owner = Some(me);
        log::info!("o2dlm: node {me} now masters {name} (migrated)");
        self.after_change(now, key, name);
        self.kick_resource(now, key, name);
    }

    /// MIGRATE_REQUEST on a third node: the resource is moving; hold
    /// requests until the new master's FINISH_MIGRATION assert.
    pub(crate) fn handle_migrate_request(
        &mut self,
        _now: Instant,
        key: u32,
        _from: u8,
        m: &MigrateRequest,
    ) -> i32 {
        let Some(d) = self.domains.get_mut(&key) else {
            return EINVAL;
        };
        let mut ret = 0;
        if let Some(old) = d.mles.get(&m.name) {
            if old.kind == MleKind::Master {
                ret = DLM_MIGRATE_RESPONSE_MASTERY_REF;
            }
        }
        let mut mle = Mle::new(MleKind::Migration);
        mle.master = Some(m.master);
        mle.new_master = Some(m.new_master);
        d.mles.insert(m.name, mle);
        if let Some(r) = d.resources.get_mut(&m.name) {
            r.migrating = true;
        }
        ret
    }
}

/// §8 target choice: owner of the first lock on granted, converting, then
/// blocked; else the first refmap node; never a node that is leaving.
fn migration_target(
    r: &super::domain::Resource,
    exiting: &NodeSet,
    members: &NodeSet,
    me: u8,
) -> Option<u8> {
    let ok = |n: u8| n != me && !exiting.contains(&n) && members.contains(&n);
    r.q.granted
        .iter()
        .chain(r.q.converting.iter())
        .chain(r.q.blocked.iter())
        .map(|l| l.key.node)
        .find(|&n| ok(n))
        .or_else(|| r.refmap.iter().copied().find(|&n| ok(n)))
}
