//! Leases: the persisted lease table operations that `apply` runs, and the [`Lessor`], this
//! member's in-memory view of leases with the leader's expiry clocks.
//!
//! As in etcd 3.5 (`server/lease/lessor.go`): grants and revokes are raft entries, applied on
//! every member; only the leader keeps expiry deadlines (set to `now + election timeout + TTL`
//! when it is promoted, so a new leader refreshes every lease), renews them on keep-alive, and
//! proposes a revoke through raft when one passes. Followers keep leases forever until told.
//! Expiry therefore never depends on a follower's clock. Revoking deletes the lease's keys in
//! one revision. Lease checkpointing (`--experimental-enable-lease-checkpoint`) is not
//! implemented yet: remaining TTLs restart from the granted TTL on every leader change.

use std::collections::{HashMap, HashSet};
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

/// A lease change made by an applied entry, for the lessor once it is committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseChange {
    Granted { id: i64, ttl: i64 },
    Revoked { id: i64 },
}

/// Whether lease `id` is granted, as of this transaction.
pub fn exists(tables: &WriteTables<'_>, id: i64) -> Result<bool> {
    Ok(tables.leases.get(id)?.is_some())
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
    let rec = LeaseRecord { id, ttl }.encode_to_vec();
    tables.leases.insert(id, rec.as_slice())?;
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
    tables.leases.remove(id)?;
    tables.lease_changes.push(LeaseChange::Revoked { id });
    Ok(rev)
}

/// Keys attached to lease `id`, in key order.
pub fn attached_keys(tables: &WriteTables<'_>, id: i64) -> Result<Vec<Vec<u8>>> {
    let lo: (i64, &[u8]) = (id, &[]);
    let mut keys = Vec::new();
    for item in tables.lease_keys.range(lo..)? {
        let (k, _) = item?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

/// Keys attached to lease `id` in the committed state.
pub fn committed_keys(backend: &Backend, id: i64) -> Result<Vec<Vec<u8>>> {
    let rtx = backend.db().begin_read()?;
    let t = rtx.open_table(crate::backend::LEASE_KEYS)?;
    let lo: (i64, &[u8]) = (id, &[]);
    let mut keys = Vec::new();
    for item in t.range(lo..)? {
        let (k, _) = item?;
        let (lease, key) = k.value();
        if lease != id {
            break;
        }
        keys.push(key.to_vec());
    }
    Ok(keys)
}

#[derive(Debug, Clone)]
struct LeaseState {
    /// Granted TTL in seconds.
    ttl: i64,
    /// Leader only: when the lease expires. `None` on followers (forever).
    expiry: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    leases: HashMap<i64, LeaseState>,
    primary: bool,
    /// Expired leases whose revoke is in flight, so each is proposed once.
    revoking: HashSet<i64>,
}

/// This member's leases.
pub struct Lessor {
    inner: Mutex<Inner>,
}

impl Lessor {
    /// Loads the granted leases from the backend (all "forever" until promoted).
    pub fn load(backend: &Backend) -> Result<Lessor> {
        let rtx = backend.db().begin_read()?;
        let t = rtx.open_table(LEASES)?;
        let mut inner = Inner::default();
        for item in t.iter()? {
            let (_, v) = item?;
            let rec = LeaseRecord::decode(v.value())?;
            inner.leases.insert(
                rec.id,
                LeaseState {
                    ttl: rec.ttl,
                    expiry: None,
                },
            );
        }
        Ok(Lessor {
            inner: Mutex::new(inner),
        })
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
                    inner.leases.insert(id, LeaseState { ttl, expiry });
                }
                LeaseChange::Revoked { id } => {
                    inner.leases.remove(&id);
                    inner.revoking.remove(&id);
                }
            }
        }
    }

    /// This member became leader: every lease gets a fresh deadline of `extend + TTL`.
    pub fn promote(&self, extend: Duration, now: Instant) {
        let mut inner = self.lock();
        inner.primary = true;
        inner.revoking.clear();
        for l in inner.leases.values_mut() {
            l.expiry = Some(now + extend + Duration::from_secs(l.ttl as u64));
        }
    }

    /// This member stopped leading: leases no longer expire here.
    pub fn demote(&self) {
        let mut inner = self.lock();
        inner.primary = false;
        inner.revoking.clear();
        for l in inner.leases.values_mut() {
            l.expiry = None;
        }
    }

    pub fn is_primary(&self) -> bool {
        self.lock().primary
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
        l.expiry = Some(now + Duration::from_secs(l.ttl as u64));
        Ok(l.ttl)
    }

    /// Remaining and granted TTL in seconds; remaining is the granted TTL on a follower.
    pub fn time_to_live(&self, id: i64, now: Instant) -> Option<(i64, i64)> {
        let inner = self.lock();
        let l = inner.leases.get(&id)?;
        let remaining = match l.expiry {
            Some(e) => e.saturating_duration_since(now).as_secs() as i64,
            None => l.ttl,
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
}
