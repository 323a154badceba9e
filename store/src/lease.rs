//! Leases: the persisted lease table operations that `apply` runs, and the [`Lessor`], this
//! member's in-memory view of leases with the leader's expiry clocks.
//!
//! As in etcd 3.5 (`server/lease/lessor.go`): grants and revokes are raft entries, applied on
//! every member; only the leader keeps expiry deadlines (set to `now + election timeout +
//! remaining TTL` when it is promoted, so a new leader refreshes every lease), renews them on
//! keep-alive, and proposes a revoke through raft when one passes. Followers keep leases forever
//! until told. Expiry therefore never depends on a follower's clock. Revoking deletes the lease's
//! keys in one revision.
//!
//! Lease checkpointing (`--experimental-enable-lease-checkpoint`), as etcd's: the leader
//! schedules a checkpoint `interval` after a grant, a promotion or an applied checkpoint when the
//! lease's remaining TTL exceeds the interval, and proposes due ones (with their remaining TTL,
//! rounded up to seconds) through raft in batches of up to [`MAX_CHECKPOINT_BATCH`]. Applying one
//! sets the lease's remaining TTL on every member, which a new leader then uses instead of the
//! granted TTL; a keep-alive of a lease with a remaining TTL first proposes resetting it to 0.
//! With `-persist` the remaining TTL is also written to the `leases` table and survives a
//! restart; without it a restart starts leases again from their granted TTL.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prost::Message;
use redb::{ReadableDatabase, ReadableTable};

use crate::backend::{Backend, LEASES};
use crate::error::{Error, Result};
use crate::mvcc::{KeyInterval, WriteTables};
use crate::proto::concordpb::LeaseRecord;

/// etcd's `MaxLeaseTTL`: 9e9 seconds.
pub const MAX_LEASE_TTL: i64 = 9_000_000_000;

/// etcd's `maxLeaseCheckpointBatchSize`: checkpoints per raft entry.
pub const MAX_CHECKPOINT_BATCH: usize = 1000;

/// etcd's `defaultLeaseCheckpointInterval` (used when the interval is 0).
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// A lease change made by an applied entry, for the lessor once it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Granted {
        id: i64,
        ttl: i64,
    },
    Revoked {
        id: i64,
    },
    /// A checkpointed remaining TTL in seconds (0 resets it to the granted TTL).
    Checkpointed {
        id: i64,
        remaining_ttl: i64,
    },
}

/// Whether lease `id` is granted, as of this transaction.
pub fn exists(tables: &WriteTables<'_>, id: i64) -> Result<bool> {
    Ok(tables.leases.open()?.get(id)?.is_some())
}

/// Applies a grant of `id` for `ttl` seconds (already raised to the minimum).
pub fn grant(tables: &mut WriteTables<'_>, id: i64, ttl: i64) -> Result<()> {
    if id == 0 {
        return Err(Error::LeaseNotFound);
    }
    if ttl > MAX_LEASE_TTL {
        return Err(Error::LeaseTtlTooLarge);
    }
    if exists(tables, id)? {
        return Err(Error::LeaseExists);
    }
    let rec = LeaseRecord {
        id,
        ttl,
        remaining_ttl: 0,
    }
    .encode_to_vec();
    tables.leases.open_mut()?.insert(id, rec.as_slice())?;
    tables.lease_changes.push(LeaseChange::Granted { id, ttl });
    Ok(())
}

/// Applies a revoke: deletes every attached key in one revision, then the lease.
pub fn revoke(tables: &mut WriteTables<'_>, id: i64) -> Result<i64> {
    if !exists(tables, id)? {
        return Err(Error::LeaseNotFound);
    }
    let keys = attached_keys(tables, id)?;
    let mut w = tables.begin();
    for k in &keys {
        w.delete_range(&KeyInterval::Point(k))?;
    }
    let rev = w.finish()?;
    tables.leases.open_mut()?.remove(id)?;
    tables.lease_changes.push(LeaseChange::Revoked { id });
    Ok(rev)
}

/// Applies a checkpoint of lease `id` (etcd's `lessor.Checkpoint`): unknown leases are
/// skipped; with `persist` the remaining TTL is also written to the `leases` table.
pub fn checkpoint(
    tables: &mut WriteTables<'_>,
    id: i64,
    remaining_ttl: i64,
    persist: bool,
) -> Result<()> {
    let rec = match tables.leases.open()?.get(id)? {
        Some(v) => LeaseRecord::decode(v.value())?,
        None => return Ok(()),
    };
    if persist {
        let rec = LeaseRecord {
            remaining_ttl,
            ..rec
        }
        .encode_to_vec();
        tables.leases.open_mut()?.insert(id, rec.as_slice())?;
    }
    tables
        .lease_changes
        .push(LeaseChange::Checkpointed { id, remaining_ttl });
    Ok(())
}

/// Keys attached to lease `id`, in key order, from a `LEASE_KEYS` table of any transaction.
fn keys_of(table: &impl ReadableTable<(i64, &'static [u8]), ()>, id: i64) -> Result<Vec<Vec<u8>>> {
    let lo: (i64, &[u8]) = (id, &[]);
    let mut keys = Vec::new();
    for item in table.range(lo..)? {
        let (k, _) = item?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

/// Keys attached to lease `id`, in key order, as of this transaction.
pub fn attached_keys(tables: &WriteTables<'_>, id: i64) -> Result<Vec<Vec<u8>>> {
    keys_of(tables.lease_keys.open()?, id)
}

/// Keys attached to lease `id` in the committed state.
pub fn committed_keys(backend: &Backend, id: i64) -> Result<Vec<Vec<u8>>> {
    let rtx = backend.db().begin_read()?;
    keys_of(&rtx.open_table(crate::backend::LEASE_KEYS)?, id)
}

#[derive(Debug, Clone)]
struct LeaseState {
    /// Granted TTL in seconds.
    ttl: i64,
    /// Last checkpointed remaining TTL in seconds; 0 when unset (etcd's `remainingTTL`).
    remaining_ttl: i64,
    /// Leader only: when the lease expires. `None` on followers (forever).
    expiry: Option<Instant>,
}

impl LeaseState {
    /// etcd's `Lease.RemainingTTL()`: the checkpointed remaining TTL if set, else the TTL.
    fn remaining_or_ttl(&self) -> i64 {
        if self.remaining_ttl > 0 {
            self.remaining_ttl
        } else {
            self.ttl
        }
    }
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, LeaseState>,
    primary: bool,
    /// Expired leases whose revoke is in flight, so each is proposed once.
    revoking: HashSet<i64>,
    /// Checkpoint interval; `None` when checkpointing is off.
    checkpoint_interval: Option<Duration>,
    /// Leader only: scheduled checkpoints, soonest first.
    checkpoints: BinaryHeap<Reverse<(Instant, i64)>>,
}

impl Inner {
    /// etcd's `scheduleCheckpointIfNeeded`: a checkpoint one interval from now, if the lease's
    /// remaining TTL is longer than the interval (in whole seconds).
    fn schedule_checkpoint(&mut self, id: i64, now: Instant) {
        let (Some(interval), Some(l)) = (self.checkpoint_interval, self.leases.get(&id)) else {
            return;
        };
        if l.remaining_or_ttl() > interval.as_secs() as i64 {
            self.checkpoints.push(Reverse((now + interval, id)));
        }
    }
}

/// This member's leases.
pub struct Lessor {
    inner: Mutex<Inner>,
}

impl Lessor {
    /// Loads the granted leases from the backend (all "forever" until promoted), with their
    /// persisted remaining TTLs. `checkpoint_interval` is `Some` when checkpointing is on (0
    /// means etcd's default, 5 minutes).
    pub fn load(backend: &Backend, checkpoint_interval: Option<Duration>) -> Result<Lessor> {
        let mut inner = Lessor::empty(checkpoint_interval);
        inner.leases = Lessor::read(backend)?;
        Ok(Lessor {
            inner: Mutex::new(inner),
        })
    }

    /// The granted leases in the backend, none expiring.
    fn read(backend: &Backend) -> Result<HashMap<i64, LeaseState>> {
        let rtx = backend.db().begin_read()?;
        let t = rtx.open_table(LEASES)?;
        let mut leases = HashMap::new();
        for item in t.iter()? {
            let (_, v) = item?;
            let rec = LeaseRecord::decode(v.value())?;
            leases.insert(
                rec.id,
                LeaseState {
                    ttl: rec.ttl,
                    remaining_ttl: rec.remaining_ttl,
                    expiry: None,
                },
            );
        }
        Ok(leases)
    }

    /// Replaces the leases with the backend's, after a raft snapshot replaced the whole state
    /// (etcd's `lessor.Recover`). Only followers install snapshots, and their leases never
    /// expire; promotion gives them deadlines.
    pub fn reload(&self, backend: &Backend) -> Result<()> {
        let leases = Lessor::read(backend)?;
        let mut inner = self.lock();
        inner.leases = leases;
        inner.revoking.clear();
        inner.checkpoints.clear();
        Ok(())
    }

    fn empty(checkpoint_interval: Option<Duration>) -> Inner {
        Inner {
            checkpoint_interval: checkpoint_interval.map(|i| {
                if i.is_zero() {
                    DEFAULT_CHECKPOINT_INTERVAL
                } else {
                    i
                }
            }),
            ..Inner::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies committed lease changes.
    pub fn apply(&self, changes: &[LeaseChange], now: Instant) {
        let mut inner = self.lock();
        for c in changes {
            match *c {
                LeaseChange::Granted { id, ttl } => {
                    let expiry = inner.primary.then(|| now + Duration::from_secs(ttl as u64));
                    inner.leases.insert(
                        id,
                        LeaseState {
                            ttl,
                            remaining_ttl: 0,
                            expiry,
                        },
                    );
                    if inner.primary {
                        inner.schedule_checkpoint(id, now);
                    }
                }
                LeaseChange::Revoked { id } => {
                    inner.leases.remove(&id);
                    inner.revoking.remove(&id);
                }
                LeaseChange::Checkpointed { id, remaining_ttl } => {
                    // Only the remaining TTL changes; promotion applies it to the expiry.
                    if let Some(l) = inner.leases.get_mut(&id) {
                        l.remaining_ttl = remaining_ttl;
                        if inner.primary {
                            inner.schedule_checkpoint(id, now);
                        }
                    }
                }
            }
        }
    }

    /// This member became leader: every lease gets a fresh deadline of `extend` plus its
    /// remaining TTL (the checkpointed one if set, else the granted TTL).
    pub fn promote(&self, extend: Duration, now: Instant) {
        let mut inner = self.lock();
        inner.primary = true;
        inner.revoking.clear();
        inner.checkpoints.clear();
        let mut ids = Vec::with_capacity(inner.leases.len());
        for (id, l) in inner.leases.iter_mut() {
            l.expiry = Some(now + extend + Duration::from_secs(l.remaining_or_ttl() as u64));
            ids.push(*id);
        }
        for id in ids {
            inner.schedule_checkpoint(id, now);
        }
    }

    /// This member stopped leading: leases no longer expire here.
    pub fn demote(&self) {
        let mut inner = self.lock();
        inner.primary = false;
        inner.revoking.clear();
        inner.checkpoints.clear();
        for l in inner.leases.values_mut() {
            l.expiry = None;
        }
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary
    }

    /// Whether a keep-alive of `id` must first propose a checkpoint resetting its remaining
    /// TTL (etcd: checkpointing is on and the lease has a checkpointed remaining TTL).
    pub fn needs_checkpoint_reset(&self, id: i64) -> bool {
        let inner = self.lock();
        inner.primary
            && inner.checkpoint_interval.is_some()
            && inner.leases.get(&id).is_some_and(|l| l.remaining_ttl > 0)
    }

    /// Keep-alive: restarts the lease's deadline; returns its TTL. Leader only.
    pub fn renew(&self, id: i64, now: Instant) -> Result<i64> {
        let mut inner = self.lock();
        if !inner.primary {
            return Err(Error::NotLeader);
        }
        let revoking = inner.revoking.contains(&id);
        let Some(l) = inner.leases.get_mut(&id) else {
            return Err(Error::LeaseNotFound);
        };
        // An expired lease waiting for its revoke cannot be renewed (etcd: not found).
        if revoking || l.expiry.is_some_and(|e| e <= now) {
            return Err(Error::LeaseNotFound);
        }
        // etcd's `refresh(0)`: the remaining TTL, which the keep-alive's checkpoint reset to 0.
        l.expiry = Some(now + Duration::from_secs(l.remaining_or_ttl() as u64));
        Ok(l.ttl)
    }

    /// Remaining and granted TTL in seconds. On the leader the remaining TTL runs from its
    /// deadline; on a follower it is the checkpointed remaining TTL, else the granted TTL.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let inner = self.lock();
        let l = inner.leases.get(&id)?;
        let remaining = match l.expiry {
            Some(e) => e.saturating_duration_since(now).as_secs() as i64,
            None => l.remaining_or_ttl(),
        };
        Some((remaining, l.ttl))
    }

    /// Ids of every granted lease, soonest expiry first (as etcd's `Leases()` sorts them);
    /// leases without a deadline (on followers) last, by id.
    pub fn ids(&self) -> Vec<i64> {
        let inner = self.lock();
        let mut ids: Vec<(Option<Instant>, i64)> =
            inner.leases.iter().map(|(id, l)| (l.expiry, *id)).collect();
        ids.sort_unstable_by_key(|(expiry, id)| (expiry.is_none(), *expiry, *id));
        ids.into_iter().map(|(_, id)| id).collect()
    }

    /// Leader only: expired leases not yet being revoked; marks them as being revoked.
    pub fn take_expired(&self, now: Instant) -> Vec<i64> {
        let mut inner = self.lock();
        if !inner.primary {
            return Vec::new();
        }
        let expired: Vec<i64> = inner
            .leases
            .iter()
            .filter(|(id, l)| l.expiry.is_some_and(|e| e <= now) && !inner.revoking.contains(id))
            .map(|(id, _)| *id)
            .collect();
        inner.revoking.extend(&expired);
        expired
    }

    /// Leader only: up to `limit` due checkpoints as `(id, remaining TTL)`, removed from the
    /// schedule (etcd's `findDueScheduledCheckpoints`). Leases gone, expired, or with a
    /// remaining TTL not below their TTL are dropped; applying a checkpoint schedules the next.
    pub fn take_due_checkpoints(&self, now: Instant, limit: usize) -> Vec<(i64, i64)> {
        let mut inner = self.lock();
        let mut out = Vec::new();
        if !inner.primary {
            return out;
        }
        while out.len() < limit {
            let Some(&Reverse((at, id))) = inner.checkpoints.peek() else {
                break;
            };
            if at > now {
                break;
            }
            inner.checkpoints.pop();
            let Some(l) = inner.leases.get(&id) else {
                continue;
            };
            let Some(expiry) = l.expiry.filter(|e| now < *e) else {
                continue;
            };
            let remaining = (expiry - now).as_nanos().div_ceil(1_000_000_000) as i64;
            if remaining >= l.ttl {
                continue;
            }
            out.push((id, remaining));
        }
        out
    }

    /// A revoke proposal failed: let the expiry loop try again.
    pub fn revoke_failed(&self, id: i64) {
        self.lock().revoking.remove(&id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leader_clocks_renew_and_expire() {
        let l = Lessor {
            inner: Mutex::new(Inner::default()),
        };
        let t0 = Instant::now();
        l.apply(&[LeaseChange::Granted { id: 1, ttl: 10 }], t0);
        // A follower never expires leases and cannot renew them.
        assert!(l.take_expired(t0 + Duration::from_secs(100)).is_empty());
        assert!(matches!(l.renew(1, t0), Err(Error::NotLeader)));
        assert_eq!(l.time_to_live(1, t0), Some((10, 10)));
        // Promotion refreshes: election timeout + TTL from now.
        l.promote(Duration::from_secs(1), t0);
        assert_eq!(l.time_to_live(1, t0), Some((11, 10)));
        assert!(l.take_expired(t0 + Duration::from_secs(10)).is_empty());
        assert_eq!(l.renew(1, t0 + Duration::from_secs(5)).unwrap(), 10);
        assert!(l.take_expired(t0 + Duration::from_secs(14)).is_empty());
        assert_eq!(l.take_expired(t0 + Duration::from_secs(15)), vec![1]);
        // Proposed once; not renewable while its revoke is in flight.
        assert!(l.take_expired(t0 + Duration::from_secs(16)).is_empty());
        assert!(matches!(
            l.renew(1, t0 + Duration::from_secs(16)),
            Err(Error::LeaseNotFound)
        ));
        l.revoke_failed(1);
        assert_eq!(l.take_expired(t0 + Duration::from_secs(17)), vec![1]);
        l.apply(&[LeaseChange::Revoked { id: 1 }], t0);
        assert_eq!(l.time_to_live(1, t0), None);
        assert!(l.ids().is_empty());
        // Listed soonest expiry first, as etcd lists them.
        l.apply(
            &[
                LeaseChange::Granted { id: 5, ttl: 60 },
                LeaseChange::Granted { id: 9, ttl: 50 },
            ],
            t0,
        );
        assert_eq!(l.ids(), vec![9, 5]);
        l.renew(9, t0 + Duration::from_secs(40)).unwrap();
        assert_eq!(l.ids(), vec![5, 9]);
    }

    fn checkpointing(interval: u64) -> Lessor {
        Lessor {
            inner: Mutex::new(Lessor::empty(Some(Duration::from_secs(interval)))),
        }
    }

    #[test]
    fn checkpoints_are_scheduled_for_leases_longer_than_the_interval() {
        let s = Duration::from_secs;
        let l = checkpointing(10);
        let t0 = Instant::now();
        // Followers schedule nothing.
        l.apply(&[LeaseChange::Granted { id: 1, ttl: 60 }], t0);
        assert!(l.take_due_checkpoints(t0 + s(100), 1000).is_empty());
        l.promote(Duration::ZERO, t0);
        l.apply(
            &[
                LeaseChange::Granted { id: 2, ttl: 10 }, // not longer than the interval
                LeaseChange::Granted { id: 3, ttl: 30 },
            ],
            t0,
        );
        assert!(l.take_due_checkpoints(t0 + s(9), 1000).is_empty());
        // Due one interval later, with the remaining TTL rounded up.
        let mut due = l.take_due_checkpoints(t0 + s(10) + Duration::from_millis(1), 1000);
        due.sort_unstable();
        assert_eq!(due, vec![(1, 50), (3, 20)]);
        assert!(l.take_due_checkpoints(t0 + s(20), 1000).is_empty());
        // Applying a checkpoint schedules the next one; batches respect the limit.
        l.apply(
            &[
                LeaseChange::Checkpointed {
                    id: 1,
                    remaining_ttl: 50,
                },
                LeaseChange::Checkpointed {
                    id: 3,
                    remaining_ttl: 20,
                },
            ],
            t0 + s(10),
        );
        assert_eq!(l.take_due_checkpoints(t0 + s(20), 1).len(), 1);
        assert_eq!(l.take_due_checkpoints(t0 + s(20), 1).len(), 1);
        assert!(l.take_due_checkpoints(t0 + s(20), 1).is_empty());
        // A lease renewed just before its checkpoint has nothing to checkpoint.
        l.apply(
            &[LeaseChange::Checkpointed {
                id: 1,
                remaining_ttl: 40,
            }],
            t0 + s(20),
        );
        // (the keep-alive first resets the checkpointed remaining TTL, as the server does).
        l.apply(
            &[LeaseChange::Checkpointed {
                id: 1,
                remaining_ttl: 0,
            }],
            t0 + s(30),
        );
        l.renew(1, t0 + s(30)).unwrap();
        assert!(l.take_due_checkpoints(t0 + s(30), 1000).is_empty());
        // Demotion drops the schedule.
        l.apply(
            &[LeaseChange::Checkpointed {
                id: 3,
                remaining_ttl: 10,
            }],
            t0 + s(30),
        );
        l.demote();
        assert!(l.take_due_checkpoints(t0 + s(100), 1000).is_empty());
    }

    #[test]
    fn promotion_uses_the_checkpointed_remaining_ttl() {
        let s = Duration::from_secs;
        let l = checkpointing(5);
        let t0 = Instant::now();
        l.apply(
            &[
                LeaseChange::Granted { id: 1, ttl: 60 },
                LeaseChange::Granted { id: 2, ttl: 60 },
                LeaseChange::Checkpointed {
                    id: 1,
                    remaining_ttl: 25,
                },
            ],
            t0,
        );
        // A follower reports the checkpointed remaining TTL.
        assert_eq!(l.time_to_live(1, t0), Some((25, 60)));
        assert_eq!(l.time_to_live(2, t0), Some((60, 60)));
        l.promote(s(1), t0);
        assert_eq!(l.time_to_live(1, t0), Some((26, 60)));
        assert_eq!(l.time_to_live(2, t0), Some((61, 60)));
        assert_eq!(l.take_expired(t0 + s(26)), vec![1]);
        // A reset (remaining 0) restores the granted TTL at the next promotion.
        l.apply(
            &[LeaseChange::Checkpointed {
                id: 1,
                remaining_ttl: 0,
            }],
            t0,
        );
        l.demote();
        l.promote(Duration::ZERO, t0);
        assert_eq!(l.time_to_live(1, t0), Some((60, 60)));
    }

    #[test]
    fn keep_alive_resets_a_checkpointed_remaining_ttl() {
        let s = Duration::from_secs;
        let l = checkpointing(5);
        let t0 = Instant::now();
        l.promote(Duration::ZERO, t0);
        l.apply(&[LeaseChange::Granted { id: 1, ttl: 30 }], t0);
        assert!(!l.needs_checkpoint_reset(1));
        l.apply(
            &[LeaseChange::Checkpointed {
                id: 1,
                remaining_ttl: 20,
            }],
            t0 + s(10),
        );
        assert!(l.needs_checkpoint_reset(1));
        // The server proposes the reset, then renews from the full TTL.
        l.apply(
            &[LeaseChange::Checkpointed {
                id: 1,
                remaining_ttl: 0,
            }],
            t0 + s(11),
        );
        assert!(!l.needs_checkpoint_reset(1));
        assert_eq!(l.renew(1, t0 + s(11)).unwrap(), 30);
        assert_eq!(l.time_to_live(1, t0 + s(11)), Some((30, 30)));
        // Without checkpointing there is never a reset to propose.
        let off = Lessor {
            inner: Mutex::new(Lessor::empty(None)),
        };
        off.promote(Duration::ZERO, t0);
        off.apply(
            &[
                LeaseChange::Granted { id: 1, ttl: 30 },
                LeaseChange::Checkpointed {
                    id: 1,
                    remaining_ttl: 20,
                },
            ],
            t0,
        );
        assert!(!off.needs_checkpoint_reset(1));
        assert!(off.take_due_checkpoints(t0 + s(100), 1000).is_empty());
    }
}
