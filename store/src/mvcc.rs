//! MVCC key space: revisions, versions, ranges at a revision, writes and compaction.
//!
//! The store keeps etcd's revision model: every write request that changes something gets the
//! next main revision; each key records its `create_revision`, `mod_revision` and `version`
//! (reset to 0 by a delete, shown as a tombstone in history). Reads at the current revision use
//! `KV_LATEST`; reads at an older revision walk `KV_HISTORY` (see `backend` for layouts).
//!
//! This module works inside transactions that its caller opens (`apply` for writes, `server`
//! for reads): it never opens, commits or aborts one itself, and it knows nothing of raft.

use std::ops::Bound;

use prost::Message;
use redb::{ReadableTable, Table, WriteTransaction};

use crate::backend::{
    ALARMS, COMPACTION_HASHES, KV_CHANGES, KV_HISTORY, KV_LATEST, LEASE_KEYS, LEASES, META,
    META_COMPACT_REV, META_CURRENT_REV,
};
use crate::error::{Error, Result};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

/// Key type of `KV_LATEST` as redb sees it.
pub type LatestKey = &'static [u8];
/// Key type of `KV_HISTORY` as redb sees it.
pub type HistoryKey = (&'static [u8], u64);

/// The key interval a request names, decoded from etcd's `(key, range_end)` convention.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyInterval<'a> {
    /// `range_end` empty: exactly `key`.
    Point(&'a [u8]),
    /// `range_end == "\0"`: every key `>= key`.
    From(&'a [u8]),
    /// `[key, end)`; empty when `end <= key`.
    Span(&'a [u8], &'a [u8]),
}

impl<'a> KeyInterval<'a> {
    /// Decodes etcd's `(key, range_end)` pair.
    pub fn new(key: &'a [u8], range_end: &'a [u8]) -> Self {
        match range_end {
            [] => KeyInterval::Point(key),
            [0] => KeyInterval::From(key),
            end => KeyInterval::Span(key, end),
        }
    }

    fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeyInterval::Point(k) => (Bound::Included(k), Bound::Included(k)),
            KeyInterval::From(k) => (Bound::Included(k), Bound::Unbounded),
            KeyInterval::Span(k, e) => (Bound::Included(k), Bound::Excluded(e)),
        }
    }

    fn is_empty(&self) -> bool {
        matches!(*self, KeyInterval::Span(k, e) if e <= k)
    }

    /// Whether `k` lies in the interval.
    pub fn contains(&self, k: &[u8]) -> bool {
        match *self {
            KeyInterval::Point(p) => p == k,
            KeyInterval::From(s) => k >= s,
            KeyInterval::Span(s, e) => k >= s && k < e,
        }
    }
}

/// What a range read found.
#[derive(Debug, Default)]
pub struct RangeResult {
    /// Up to `limit` key-values in key order.
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the interval at that revision, regardless of `limit`.
    pub count: usize,
}

/// The revision bounds a read is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Revs {
    /// Current main revision of the view.
    pub current: i64,
    /// Last compaction revision.
    pub compact: i64,
}

/// Resolves a requested revision (`<= 0` means current) against `revs`, with etcd's errors.
pub fn resolve_rev(requested: i64, revs: Revs) -> Result<i64> {
    if requested > revs.current {
        return Err(Error::FutureRev);
    }
    let rev = if requested <= 0 {
        revs.current
    } else {
        requested
    };
    if rev < revs.compact {
        return Err(Error::Compacted);
    }
    Ok(rev)
}

fn decode(key: &[u8], bytes: &[u8]) -> Result<KeyValue> {
    let mut kv = KeyValue::decode(bytes)?;
    kv.key = key.to_vec();
    Ok(kv)
}

/// Reads keys of `interval` as of revision `rev` (already resolved by [`resolve_rev`]).
/// `limit == 0` returns all; `count_only` returns none but still counts.
pub fn range<L, H>(
    latest: &L,
    history: &H,
    interval: &KeyInterval<'_>,
    rev: i64,
    current: i64,
    limit: usize,
    count_only: bool,
) -> Result<RangeResult>
where
    L: ReadableTable<LatestKey, &'static [u8]>,
    H: ReadableTable<HistoryKey, &'static [u8]>,
{
    let mut out = RangeResult::default();
    if interval.is_empty() {
        return Ok(out);
    }
    let want = |out: &RangeResult| !count_only && (limit == 0 || out.kvs.len() < limit);
    if rev >= current {
        if let KeyInterval::Point(k) = *interval {
            if let Some(v) = latest.get(k)? {
                out.count = 1;
                if !count_only {
                    out.kvs.push(decode(k, v.value())?);
                }
            }
            return Ok(out);
        }
        for item in latest.range::<&[u8]>(interval.bounds())? {
            let (k, v) = item?;
            if want(&out) {
                out.kvs.push(decode(k.value(), v.value())?);
            }
            out.count += 1;
        }
        return Ok(out);
    }
    // Historical read: per key, the newest version at or below `rev`, unless it is a tombstone.
    let (lo, hi) = interval.bounds();
    let lo = match lo {
        Bound::Included(k) => Bound::Included((k, 0u64)),
        _ => Bound::Unbounded,
    };
    let hi = match hi {
        Bound::Included(k) => Bound::Included((k, u64::MAX)),
        Bound::Excluded(k) => Bound::Excluded((k, 0u64)),
        Bound::Unbounded => Bound::Unbounded,
    };
    let mut pending: Option<(Vec<u8>, Vec<u8>)> = None;
    let flush = |pending: &mut Option<(Vec<u8>, Vec<u8>)>, out: &mut RangeResult| -> Result<()> {
        if let Some((k, v)) = pending.take() {
            let kv = decode(&k, &v)?;
            if kv.version > 0 {
                if want(out) {
                    out.kvs.push(kv);
                }
                out.count += 1;
            }
        }
        Ok(())
    };
    for item in history.range::<(&[u8], u64)>((lo, hi))? {
        let (k, v) = item?;
        let (key, krev) = k.value();
        if pending.as_ref().is_some_and(|(pk, _)| pk.as_slice() != key) {
            flush(&mut pending, &mut out)?;
        }
        if krev as i64 <= rev {
            pending = Some((key.to_vec(), v.value().to_vec()));
        }
    }
    flush(&mut pending, &mut out)?;
    Ok(out)
}

/// Anything that can serve reads: a read-only snapshot or a write request in progress.
pub trait KvRead {
    /// Revision bounds of this view.
    fn revs(&self) -> Revs;
    /// Keys of `interval` at `rev` (resolved); see [`range`].
    fn range_at(
        &self,
        interval: &KeyInterval<'_>,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult>;
}

/// A consistent read-only view of the key space (one redb read transaction).
pub struct ReadView {
    latest: redb::ReadOnlyTable<LatestKey, &'static [u8]>,
    history: redb::ReadOnlyTable<HistoryKey, &'static [u8]>,
    revs: Revs,
}

impl ReadView {
    /// Opens the key space as of the last committed write.
    pub fn open(rtx: &redb::ReadTransaction) -> Result<Self> {
        let meta = rtx.open_table(META)?;
        let current = meta.get(META_CURRENT_REV)?.map(|v| v.value()).unwrap_or(1) as i64;
        let compact = meta.get(META_COMPACT_REV)?.map(|v| v.value()).unwrap_or(0) as i64;
        Ok(ReadView {
            latest: rtx.open_table(KV_LATEST)?,
            history: rtx.open_table(KV_HISTORY)?,
            revs: Revs { current, compact },
        })
    }
}

impl KvRead for ReadView {
    fn revs(&self) -> Revs {
        self.revs
    }
    fn range_at(
        &self,
        interval: &KeyInterval<'_>,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult> {
        range(
            &self.latest,
            &self.history,
            interval,
            rev,
            self.revs.current,
            limit,
            count_only,
        )
    }
}

impl KvRead for TxnWrite<'_, '_> {
    fn revs(&self) -> Revs {
        TxnWrite::revs(self)
    }
    fn range_at(
        &self,
        interval: &KeyInterval<'_>,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult> {
        self.range(interval, rev, limit, count_only)
    }
}

/// The MVCC tables opened for writing inside one redb write transaction.
pub struct WriteTables<'t> {
    pub latest: Table<'t, LatestKey, &'static [u8]>,
    pub history: Table<'t, HistoryKey, &'static [u8]>,
    /// The change log (see `backend::KV_CHANGES`).
    pub changes: Table<'t, (u64, u32), &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    /// Granted leases (see `backend::LEASES`); the `lease` module reads and writes them.
    pub leases: Table<'t, i64, &'static [u8]>,
    /// Lease attachments (see `backend::LEASE_KEYS`), kept in step by `put` and `delete_range`.
    pub lease_keys: Table<'t, (i64, &'static [u8]), ()>,
    /// Raised alarms (see `backend::ALARMS`): `apply` refuses writes while NOSPACE stands.
    pub alarms: Table<'t, (u64, i32), ()>,
    /// Hashes computed while compacting (see `backend::COMPACTION_HASHES`).
    pub compaction_hashes: Table<'t, u64, (u32, i64)>,
    /// The auth store's tables (see `backend::AUTH*`); only `auth` reads and writes them.
    pub auth: crate::auth::AuthTables<'t>,
    /// Current main revision as of the last finished write request.
    current: i64,
    /// Revision of the last compaction.
    compact: i64,
    /// Changes made through these tables, in revision order, each with its previous version:
    /// the raft loop hands them to the watch hub once the transaction is committed.
    events: Vec<Event>,
    /// Lease grants and revokes made through these tables, for the lessor after commit.
    pub lease_changes: Vec<crate::lease::LeaseChange>,
}

impl<'t> WriteTables<'t> {
    /// Opens the MVCC tables in `wtx`.
    pub fn open(wtx: &'t WriteTransaction) -> Result<Self> {
        let meta = wtx.open_table(META)?;
        let current = meta.get(META_CURRENT_REV)?.map(|v| v.value()).unwrap_or(1) as i64;
        let compact = meta.get(META_COMPACT_REV)?.map(|v| v.value()).unwrap_or(0) as i64;
        Ok(WriteTables {
            latest: wtx.open_table(KV_LATEST)?,
            history: wtx.open_table(KV_HISTORY)?,
            changes: wtx.open_table(KV_CHANGES)?,
            meta,
            leases: wtx.open_table(LEASES)?,
            lease_keys: wtx.open_table(LEASE_KEYS)?,
            alarms: wtx.open_table(ALARMS)?,
            compaction_hashes: wtx.open_table(COMPACTION_HASHES)?,
            auth: crate::auth::AuthTables::open(wtx)?,
            current,
            compact,
            events: Vec::new(),
            lease_changes: Vec::new(),
        })
    }

    /// Current and compaction revisions as of the last finished write request.
    pub fn revs(&self) -> Revs {
        Revs {
            current: self.current,
            compact: self.compact,
        }
    }

    /// Takes the events recorded so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Starts one write request (one main revision at most).
    pub fn begin(&mut self) -> TxnWrite<'_, 't> {
        TxnWrite {
            tables: self,
            sub: 0,
        }
    }

    /// Compacts history to `rev`: every version older than `rev` goes, except the newest
    /// version at or below `rev` of each live key, so reads at `rev` still work.
    pub fn compact(&mut self, rev: i64) -> Result<()> {
        if rev <= self.compact {
            return Err(Error::Compacted);
        }
        if rev > self.current {
            return Err(Error::FutureRev);
        }
        let mut doomed: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut newest: Option<(Vec<u8>, u64, bool)> = None; // (key, rev, is_tombstone)
        for item in self.history.iter()? {
            let (k, v) = item?;
            let (key, krev) = k.value();
            if krev as i64 > rev {
                continue;
            }
            let same_key = newest
                .as_ref()
                .is_some_and(|(pk, _, _)| pk.as_slice() == key);
            if let Some((pk, prev, tomb)) = newest.take() {
                // An older version of the same key is superseded; a finished key whose newest
                // version at `rev` is a tombstone goes entirely.
                if same_key || tomb {
                    doomed.push((pk, prev));
                }
            }
            let tomb = KeyValue::decode(v.value())?.version == 0;
            newest = Some((key.to_vec(), krev, tomb));
        }
        if let Some((pk, prev, true)) = newest {
            doomed.push((pk, prev));
        }
        for (k, r) in &doomed {
            self.history.remove((k.as_slice(), *r))?;
        }
        // Change-log rows go with their history rows; those of surviving versions stay, so the
        // `(revision, sub revision)` of every stored version is known (HashKV hashes it).
        let mut old: Vec<(u64, u32)> = Vec::new();
        for item in self.changes.range(..(rev as u64, 0))? {
            let (k, key) = item?;
            let (r, sub) = k.value();
            if self.history.get((key.value(), r))?.is_none() {
                old.push((r, sub));
            }
        }
        for k in old {
            self.changes.remove(k)?;
        }
        self.compact = rev;
        self.meta.insert(META_COMPACT_REV, rev as u64)?;
        Ok(())
    }
}

/// One write request in progress: all its changes share one main revision.
pub struct TxnWrite<'a, 't> {
    tables: &'a mut WriteTables<'t>,
    /// Number of changes made so far (the next sub revision).
    sub: u32,
}

impl TxnWrite<'_, '_> {
    /// The revision a read inside this request sees (etcd: begin rev, +1 once it changed).
    pub fn rev(&self) -> i64 {
        self.tables.current + i64::from(self.sub > 0)
    }

    /// Revision bounds for reads inside this request.
    pub fn revs(&self) -> Revs {
        Revs {
            current: self.rev(),
            compact: self.tables.compact,
        }
    }

    /// Reads inside the request; sees its own earlier writes.
    pub fn range(
        &self,
        interval: &KeyInterval<'_>,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult> {
        let t = &*self.tables;
        range(
            &t.latest,
            &t.history,
            interval,
            rev,
            self.rev(),
            limit,
            count_only,
        )
    }

    /// Whether lease `id` is granted, as of this request.
    pub fn lease_exists(&self, id: i64) -> Result<bool> {
        Ok(self.tables.leases.get(id)?.is_some())
    }

    /// The live version of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        self.tables
            .latest
            .get(key)?
            .map(|v| decode(key, v.value()))
            .transpose()
    }

    /// Stores `kv` (its `key` field empty; `key` is the key) at the next revision and records
    /// its event with `prev`, the previous live version. Encodes the value once and moves
    /// `kv` and `prev` into the event: this is the hot path of every write.
    fn record(&mut self, key: &[u8], mut kv: KeyValue, prev: Option<KeyValue>) -> Result<()> {
        debug_assert!(kv.key.is_empty());
        let new_rev = (self.tables.current + 1) as u64;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != 0 && old_lease != kv.lease {
            self.tables.lease_keys.remove((old_lease, key))?;
        }
        if kv.lease != 0 && kv.lease != old_lease {
            self.tables.lease_keys.insert((kv.lease, key), ())?;
        }
        let bytes = kv.encode_to_vec();
        let kind = if kv.version > 0 {
            self.tables.latest.insert(key, bytes.as_slice())?;
            EventType::Put
        } else {
            self.tables.latest.remove(key)?;
            EventType::Delete
        };
        self.tables
            .history
            .insert((key, new_rev), bytes.as_slice())?;
        self.tables.changes.insert((new_rev, self.sub), key)?;
        self.sub += 1;
        kv.key = key.to_vec();
        self.tables.events.push(Event {
            r#type: kind as i32,
            kv: Some(kv),
            prev_kv: prev,
        });
        Ok(())
    }

    /// Writes `key`; returns the new key-value and the previous live one.
    pub fn put(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
    ) -> Result<(KeyValue, Option<KeyValue>)> {
        let prev = self.get(key)?;
        let new_rev = self.tables.current + 1;
        let kv = KeyValue {
            key: key.to_vec(),
            create_revision: prev.as_ref().map_or(new_rev, |p| p.create_revision),
            mod_revision: new_rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        let stored = KeyValue {
            key: Vec::new(),
            ..kv.clone()
        };
        self.record(key, stored, prev.clone())?;
        Ok((kv, prev))
    }

    /// Writes `key` over `prev`, its live version as [`TxnWrite::get`] returned it in this
    /// request (the caller already looked it up, so the key is read once per put).
    pub fn put_over(
        &mut self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        prev: Option<KeyValue>,
    ) -> Result<()> {
        let new_rev = self.tables.current + 1;
        let kv = KeyValue {
            key: Vec::new(),
            create_revision: prev.as_ref().map_or(new_rev, |p| p.create_revision),
            mod_revision: new_rev,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            value,
            lease,
        };
        self.record(key, kv, prev)
    }

    /// Deletes every live key in `interval`; returns what was deleted.
    pub fn delete_range(&mut self, interval: &KeyInterval<'_>) -> Result<Vec<KeyValue>> {
        let current = self.rev();
        let found = {
            let t = &*self.tables;
            range(&t.latest, &t.history, interval, current, current, 0, false)?.kvs
        };
        let new_rev = self.tables.current + 1;
        for kv in &found {
            let tomb = KeyValue {
                mod_revision: new_rev,
                ..Default::default()
            };
            self.record(&kv.key, tomb, Some(kv.clone()))?;
        }
        Ok(found)
    }

    /// Finishes the request: bumps the store revision if anything changed.
    pub fn finish(self) -> Result<i64> {
        if self.sub > 0 {
            self.tables.current += 1;
            self.tables
                .meta
                .insert(META_CURRENT_REV, self.tables.current as u64)?;
        }
        Ok(self.tables.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use redb::ReadableTableMetadata;

    fn with_write<T>(b: &Backend, f: impl FnOnce(&mut WriteTables<'_>) -> T) -> T {
        let wtx = b.db().begin_write().unwrap();
        let out = {
            let mut t = WriteTables::open(&wtx).unwrap();
            f(&mut t)
        };
        wtx.commit().unwrap();
        out
    }

    fn put(t: &mut WriteTables<'_>, k: &str, v: &str) -> i64 {
        let mut w = t.begin();
        w.put(k.as_bytes(), v.as_bytes().to_vec(), 0).unwrap();
        w.finish().unwrap()
    }

    fn del(t: &mut WriteTables<'_>, k: &str) -> i64 {
        let mut w = t.begin();
        w.delete_range(&KeyInterval::Point(k.as_bytes())).unwrap();
        w.finish().unwrap()
    }

    fn keys_at(t: &WriteTables<'_>, i: KeyInterval<'_>, rev: i64) -> Vec<(String, String, i64)> {
        let r = range(&t.latest, &t.history, &i, rev, t.current, 0, false).unwrap();
        r.kvs
            .into_iter()
            .map(|kv| {
                (
                    String::from_utf8(kv.key).unwrap(),
                    String::from_utf8(kv.value).unwrap(),
                    kv.version,
                )
            })
            .collect()
    }

    #[test]
    fn revisions_versions_and_history() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        with_write(&b, |t| {
            assert_eq!(put(t, "a", "1"), 2);
            assert_eq!(put(t, "a", "2"), 3);
            assert_eq!(put(t, "ab", "x"), 4);
            assert_eq!(del(t, "a"), 5);
            // Deleting a missing key does not bump the revision.
            assert_eq!(del(t, "zz"), 5);
            assert_eq!(put(t, "a", "3"), 6);
            let a = KeyInterval::Point(b"a");
            assert_eq!(keys_at(t, a.clone(), 6), vec![("a".into(), "3".into(), 1)]);
            assert_eq!(keys_at(t, a.clone(), 5), vec![]);
            assert_eq!(keys_at(t, a.clone(), 3), vec![("a".into(), "2".into(), 2)]);
            assert_eq!(keys_at(t, a.clone(), 1), vec![]);
            let all = KeyInterval::From(b"a");
            assert_eq!(keys_at(t, all.clone(), 4).len(), 2);
            assert_eq!(
                keys_at(t, all.clone(), 5),
                vec![("ab".into(), "x".into(), 1)]
            );
            let span = KeyInterval::Span(b"a", b"ab");
            assert_eq!(keys_at(t, span, 6), vec![("a".into(), "3".into(), 1)]);
        });
    }

    #[test]
    fn compaction_keeps_reads_at_the_compacted_revision() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        with_write(&b, |t| {
            put(t, "a", "1"); // 2
            put(t, "a", "2"); // 3
            put(t, "b", "1"); // 4
            del(t, "b"); // 5
            put(t, "c", "1"); // 6
            t.compact(5).unwrap();
            let all = KeyInterval::From(b"a");
            assert_eq!(
                keys_at(t, all.clone(), 5),
                vec![("a".into(), "2".into(), 2)]
            );
            assert_eq!(keys_at(t, all, 6).len(), 2);
            // Only a@3 (newest <= 5) and c@6 remain in history.
            assert_eq!(t.history.len().unwrap(), 2);
            assert!(matches!(t.compact(5), Err(Error::Compacted)));
            assert!(matches!(t.compact(7), Err(Error::FutureRev)));
            assert!(matches!(resolve_rev(4, t.revs()), Err(Error::Compacted)));
            assert!(matches!(resolve_rev(7, t.revs()), Err(Error::FutureRev)));
            assert_eq!(resolve_rev(0, t.revs()).unwrap(), 6);
        });
    }

    #[test]
    fn limit_counts_everything_and_count_only_returns_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        with_write(&b, |t| {
            for k in ["k1", "k2", "k3"] {
                put(t, k, "v");
            }
            let i = KeyInterval::Span(b"k", b"l");
            let r = range(&t.latest, &t.history, &i, 4, 4, 2, false).unwrap();
            assert_eq!((r.kvs.len(), r.count), (2, 3));
            let r = range(&t.latest, &t.history, &i, 3, 4, 0, true).unwrap();
            assert_eq!((r.kvs.len(), r.count), (0, 2));
            assert_eq!(
                range(
                    &t.latest,
                    &t.history,
                    &KeyInterval::Span(b"z", b"a"),
                    4,
                    4,
                    0,
                    false
                )
                .unwrap()
                .count,
                0
            );
        });
    }
}
