//! MVCC key space: revisions, versions, ranges at a revision, writes and compaction.
//!
//! The store keeps etcd's revision model: every write request that changes something gets the
//! next main revision; each key records its `create_revision`, `mod_revision` and `version`
//! (reset to 0 by a delete, shown as a tombstone in history). Every version is stored once, under
//! its revision, in `KV_REVS` (see `backend`); the in-memory `index` says which revision holds a
//! key's version at any revision, so reads look the key up there and load the versions they
//! return.
//!
//! This module works inside transactions that its caller opens (`apply` for writes, `server`
//! for reads): it never opens, commits or aborts one itself, and it knows nothing of raft.

use std::cell::OnceCell;
use std::ops::Bound;
use std::sync::Arc;

use prost::Message;
use redb::{Key, ReadableDatabase, ReadableTable, Table, TableDefinition, Value, WriteTransaction};

use crate::backend::{
    ALARMS, Backend, COMPACTION_HASHES, KV_REVS, LEASE_KEYS, LEASES, META, META_COMPACT_REV,
    META_CURRENT_REV,
};
use crate::error::{Error, Result};
use crate::index::{KeyIndex, Rev, RevKey};
use crate::overlay::{Chunk, OverlayView};
use crate::proto::mvccpb::{Event, KeyValue, event::EventType};

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

    /// The interval as range bounds over keys.
    pub fn bounds(&self) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
        match *self {
            KeyInterval::Point(k) => (Bound::Included(k), Bound::Included(k)),
            KeyInterval::From(k) => (Bound::Included(k), Bound::Unbounded),
            KeyInterval::Span(k, e) => (Bound::Included(k), Bound::Excluded(e)),
        }
    }

    /// Whether no key can lie in the interval.
    pub fn is_empty(&self) -> bool {
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
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// The bytes a version is stored as in `KV_REVS`: the `mvccpb.KeyValue` with its key, as etcd
/// stores it in its `key` bucket; a tombstone is the key alone (etcd's too).
pub fn stored_bytes(kv: &KeyValue) -> Vec<u8> {
    if kv.version > 0 {
        kv.encode_to_vec()
    } else {
        KeyValue {
            key: kv.key.clone(),
            ..Default::default()
        }
        .encode_to_vec()
    }
}

/// Decodes a version stored at `main` (see [`stored_bytes`]); a tombstone gets its
/// `mod_revision` back from the revision it is stored under.
pub fn decode_stored(main: u64, bytes: &[u8]) -> Result<KeyValue> {
    let mut kv = KeyValue::decode(bytes)?;
    if kv.version == 0 {
        kv.mod_revision = main as i64;
    }
    Ok(kv)
}

/// Loads the version stored at `rev` from the uncommitted `overlay` (readers) or else from a
/// `KV_REVS` table.
pub fn load<T>(table: &T, overlay: Option<&OverlayView>, rev: Rev) -> Result<KeyValue>
where
    T: ReadableTable<RevKey, &'static [u8]>,
{
    load_opt(table, overlay, rev)?.ok_or_else(|| {
        Error::Storage(format!(
            "revision {}_{} is in the key index but not in the database; restart the member to \
             rebuild the index",
            rev.main, rev.sub
        ))
    })
}

/// The version at `rev`, looked up as [`load`] does; `None` when neither holds it.
pub fn load_opt<T>(table: &T, overlay: Option<&OverlayView>, rev: Rev) -> Result<Option<KeyValue>>
where
    T: ReadableTable<RevKey, &'static [u8]>,
{
    if let Some(bytes) = overlay.and_then(|o| o.get(rev.key())) {
        return decode_stored(rev.main, bytes).map(Some);
    }
    match table.get(rev.key())? {
        Some(v) => decode_stored(rev.main, v.value()).map(Some),
        None => Ok(None),
    }
}

/// Reads keys of `interval` as of revision `rev` (already resolved by [`resolve_rev`]).
/// `limit == 0` returns all; `count_only` returns none but still counts. Versions are loaded as
/// [`load`] does.
pub fn range<T>(
    table: &T,
    overlay: Option<&OverlayView>,
    index: &KeyIndex,
    interval: &KeyInterval<'_>,
    rev: i64,
    limit: usize,
    count_only: bool,
) -> Result<RangeResult>
where
    T: ReadableTable<RevKey, &'static [u8]>,
{
    let want = match (count_only, limit) {
        (true, _) => 0,
        (false, 0) => usize::MAX,
        (false, n) => n,
    };
    let found = index.range(interval, rev.max(0) as u64, want)?;
    let kvs = found
        .revs
        .iter()
        .map(|r| load(table, overlay, *r))
        .collect::<Result<Vec<_>>>()?;
    Ok(RangeResult {
        kvs,
        count: found.count,
    })
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

/// A consistent read-only view of the key space: the versions the raft loop applied but has not
/// committed (`overlay`) over one redb read transaction.
pub struct ReadView {
    snapshot: Arc<ReadSnapshot>,
    overlay: Arc<OverlayView>,
    index: Arc<KeyIndex>,
}

/// The part of a [`ReadView`] read from one redb read transaction: its key-space table and the
/// revisions the view is at. Reads that begin while the same overlay view is current share one
/// ([`Backend::shared_read`]): nothing was applied meanwhile, so it is as current as a new one,
/// and they skip beginning a transaction and opening its tables.
pub struct ReadSnapshot {
    revs_table: redb::ReadOnlyTable<RevKey, &'static [u8]>,
    revs: Revs,
}

impl ReadView {
    /// Opens the key space as of the last applied write.
    pub fn open(backend: &Backend) -> Result<Self> {
        // The overlay first: what it lacks was committed before it was replaced, so a read
        // transaction begun after it sees that.
        let overlay = backend.overlay().view();
        let snapshot = match backend.shared_read(&overlay) {
            Some(s) => s,
            None => {
                let s = Arc::new(ReadSnapshot::open(backend, &overlay)?);
                backend.share_read(&overlay, &s);
                s
            }
        };
        Ok(ReadView {
            snapshot,
            overlay,
            index: Arc::clone(backend.index()),
        })
    }
}

impl ReadSnapshot {
    /// Begins a read transaction, after `overlay` was taken.
    fn open(backend: &Backend, overlay: &OverlayView) -> Result<Self> {
        let rtx = backend.db().begin_read()?;
        let meta = rtx.open_table(META)?;
        let current = meta.get(META_CURRENT_REV)?.map(|v| v.value()).unwrap_or(1) as i64;
        let compact = meta.get(META_COMPACT_REV)?.map(|v| v.value()).unwrap_or(0) as i64;
        // A commit may land between the two; then the transaction is the newer.
        let revs = Revs {
            current: current.max(overlay.revs.current),
            compact: compact.max(overlay.revs.compact),
        };
        Ok(ReadSnapshot {
            revs_table: rtx.open_table(KV_REVS)?,
            revs,
        })
    }
}

impl KvRead for ReadView {
    fn revs(&self) -> Revs {
        self.snapshot.revs
    }
    fn range_at(
        &self,
        interval: &KeyInterval<'_>,
        rev: i64,
        limit: usize,
        count_only: bool,
    ) -> Result<RangeResult> {
        range(
            &self.snapshot.revs_table,
            Some(&self.overlay),
            &self.index,
            interval,
            rev,
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

/// A table of a write transaction that is opened on first use. Opening a table and writing its
/// root back at commit cost the raft loop's transaction on every Ready, so tables most writes
/// never touch (leases, lease attachments, compaction hashes, auth users, roles and tokens) are
/// opened only when one does.
pub struct LazyTable<'t, K: Key + 'static, V: Value + 'static> {
    wtx: &'t WriteTransaction,
    def: TableDefinition<'static, K, V>,
    table: OnceCell<Table<'t, K, V>>,
    written: bool,
}

impl<'t, K: Key + 'static, V: Value + 'static> LazyTable<'t, K, V> {
    /// `def` in `wtx`, not opened yet.
    pub fn new(wtx: &'t WriteTransaction, def: TableDefinition<'static, K, V>) -> Self {
        LazyTable {
            wtx,
            def,
            table: OnceCell::new(),
            written: false,
        }
    }

    /// The table for reading, opened now if need be.
    pub fn open(&self) -> Result<&Table<'t, K, V>> {
        if let Some(t) = self.table.get() {
            return Ok(t);
        }
        let t = self.wtx.open_table(self.def)?;
        Ok(self.table.get_or_init(|| t))
    }

    /// The table for writing, opened now if need be.
    pub fn open_mut(&mut self) -> Result<&mut Table<'t, K, V>> {
        self.open()?;
        self.written = true;
        Ok(self.table.get_mut().expect("opened just now"))
    }

    /// Whether the table was opened for writing.
    pub fn written(&self) -> bool {
        self.written
    }
}

/// The MVCC tables opened for writing inside one redb write transaction.
pub struct WriteTables<'t> {
    /// Every stored version (see `backend::KV_REVS`).
    pub revs_table: Table<'t, RevKey, &'static [u8]>,
    /// The key index; every version written through these tables is pushed to it.
    pub index: Arc<KeyIndex>,
    meta: Table<'t, &'static str, u64>,
    /// Granted leases (see `backend::LEASES`); the `lease` module reads and writes them.
    pub leases: LazyTable<'t, i64, &'static [u8]>,
    /// Lease attachments (see `backend::LEASE_KEYS`), kept in step by `put` and `delete_range`.
    pub lease_keys: LazyTable<'t, (i64, &'static [u8]), ()>,
    /// Raised alarms (see `backend::ALARMS`): `apply` refuses writes while NOSPACE stands.
    pub alarms: Table<'t, (u64, i32), ()>,
    /// Hashes computed while compacting (see `backend::COMPACTION_HASHES`).
    pub compaction_hashes: LazyTable<'t, u64, (u32, i64)>,
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
    /// The versions written through these tables, as stored, for the overlay.
    rows: Chunk,
    /// A request changed a table other than `KV_REVS` and `META`; those are read in committed
    /// state only, so the transaction must be committed before anyone learns of it.
    pub needs_commit: bool,
}

impl<'t> WriteTables<'t> {
    /// Opens the MVCC tables in `wtx`; `index` is the backend's key index.
    pub fn open(wtx: &'t WriteTransaction, index: &Arc<KeyIndex>) -> Result<Self> {
        let meta = wtx.open_table(META)?;
        let current = meta.get(META_CURRENT_REV)?.map(|v| v.value()).unwrap_or(1) as i64;
        let compact = meta.get(META_COMPACT_REV)?.map(|v| v.value()).unwrap_or(0) as i64;
        Ok(WriteTables {
            revs_table: wtx.open_table(KV_REVS)?,
            index: Arc::clone(index),
            meta,
            leases: LazyTable::new(wtx, LEASES),
            lease_keys: LazyTable::new(wtx, LEASE_KEYS),
            alarms: wtx.open_table(ALARMS)?,
            compaction_hashes: LazyTable::new(wtx, COMPACTION_HASHES),
            auth: crate::auth::AuthTables::open(wtx)?,
            current,
            compact,
            events: Vec::new(),
            lease_changes: Vec::new(),
            rows: Vec::new(),
            needs_commit: false,
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

    /// Takes the versions written so far, as stored.
    pub fn take_rows(&mut self) -> Chunk {
        std::mem::take(&mut self.rows)
    }

    /// Whether a table read only in committed state (leases, lease attachments, compaction
    /// hashes, auth) was written, or a request flagged [`WriteTables::needs_commit`].
    pub fn must_commit(&self) -> bool {
        self.needs_commit
            || self.leases.written()
            || self.lease_keys.written()
            || self.compaction_hashes.written()
            || self.auth.written()
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
        for k in self.index.compact(rev as u64) {
            self.revs_table.remove(k)?;
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
            &t.revs_table,
            None,
            &t.index,
            interval,
            rev,
            limit,
            count_only,
        )
    }

    /// Whether lease `id` is granted, as of this request.
    pub fn lease_exists(&self, id: i64) -> Result<bool> {
        Ok(self.tables.leases.open()?.get(id)?.is_some())
    }

    /// The live version of `key`, if any.
    pub fn get(&self, key: &[u8]) -> Result<Option<KeyValue>> {
        let t = &*self.tables;
        t.index
            .get(key, u64::MAX)
            .map(|r| load(&t.revs_table, None, r))
            .transpose()
    }

    /// Stores `kv` (with its key) at the next revision and records its event with `prev`, the
    /// previous live version. Moves `kv` and `prev` into the event: this is the hot path of
    /// every write.
    fn record(&mut self, kv: KeyValue, prev: Option<KeyValue>) -> Result<()> {
        let new_rev = (self.tables.current + 1) as u64;
        let key = kv.key.as_slice();
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != 0 && old_lease != kv.lease {
            self.tables
                .lease_keys
                .open_mut()?
                .remove((old_lease, key))?;
        }
        if kv.lease != 0 && kv.lease != old_lease {
            self.tables
                .lease_keys
                .open_mut()?
                .insert((kv.lease, key), ())?;
        }
        let tombstone = kv.version == 0;
        let bytes = stored_bytes(&kv);
        self.tables
            .revs_table
            .insert((new_rev, self.sub), bytes.as_slice())?;
        self.tables.rows.push(((new_rev, self.sub), bytes));
        self.tables.index.push(
            key,
            Rev {
                main: new_rev,
                sub: self.sub,
                tombstone,
            },
        );
        self.sub += 1;
        let kind = if tombstone {
            EventType::Delete
        } else {
            EventType::Put
        };
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
        let kv = self.next_version(key, value, lease, prev.as_ref());
        self.record(kv.clone(), prev.clone())?;
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
        let kv = self.next_version(key, value, lease, prev.as_ref());
        self.record(kv, prev)
    }

    /// The version a put of `value` to `key` over `prev` makes.
    fn next_version(
        &self,
        key: &[u8],
        value: Vec<u8>,
        lease: i64,
        prev: Option<&KeyValue>,
    ) -> KeyValue {
        let new_rev = self.tables.current + 1;
        KeyValue {
            key: key.to_vec(),
            create_revision: prev.map_or(new_rev, |p| p.create_revision),
            mod_revision: new_rev,
            version: prev.map_or(1, |p| p.version + 1),
            value,
            lease,
        }
    }

    /// Deletes every live key in `interval`; returns what was deleted.
    pub fn delete_range(&mut self, interval: &KeyInterval<'_>) -> Result<Vec<KeyValue>> {
        let found = self.range(interval, self.rev(), 0, false)?.kvs;
        let new_rev = self.tables.current + 1;
        for kv in &found {
            let tomb = KeyValue {
                key: kv.key.clone(),
                mod_revision: new_rev,
                ..Default::default()
            };
            self.record(tomb, Some(kv.clone()))?;
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

    /// Applies `f` and commits, then publishes the new view, as the raft loop does.
    fn with_write<T>(b: &Backend, f: impl FnOnce(&mut WriteTables<'_>) -> T) -> T {
        let wtx = b.db().begin_write().unwrap();
        let (out, revs) = {
            let mut t = WriteTables::open(&wtx, b.index()).unwrap();
            (f(&mut t), t.revs())
        };
        wtx.commit().unwrap();
        b.overlay().committed(revs);
        out
    }

    fn values(v: &ReadView) -> Vec<String> {
        v.range_at(&KeyInterval::From(b""), v.revs().current, 0, false)
            .unwrap()
            .kvs
            .iter()
            .map(|kv| String::from_utf8_lossy(&kv.value).into_owned())
            .collect()
    }

    #[test]
    fn reads_share_a_snapshot_until_a_write_is_applied() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        with_write(&b, |t| put(t, "a", "1"));
        let first = ReadView::open(&b).unwrap();
        let second = ReadView::open(&b).unwrap();
        assert!(Arc::ptr_eq(&first.snapshot, &second.snapshot));
        assert_eq!(values(&second), vec!["1"]);

        // Applied, not committed: the overlay view changes, and new reads see the write.
        let wtx = b.db().begin_write().unwrap();
        {
            let mut t = WriteTables::open(&wtx, b.index()).unwrap();
            put(&mut t, "a", "2");
            b.overlay().applied(t.revs(), t.take_rows());
        }
        let third = ReadView::open(&b).unwrap();
        assert!(!Arc::ptr_eq(&first.snapshot, &third.snapshot));
        assert_eq!(values(&third), vec!["2"]);
        assert_eq!(third.revs().current, 3);
        // Committed: again a new snapshot, reading the tables.
        wtx.commit().unwrap();
        b.overlay().committed(Revs {
            current: 3,
            compact: 0,
        });
        let fourth = ReadView::open(&b).unwrap();
        assert!(!Arc::ptr_eq(&third.snapshot, &fourth.snapshot));
        assert_eq!(values(&fourth), vec!["2"]);

        // The snapshot kept for sharing does not hold up defragmentation.
        drop((first, second, third, fourth));
        b.defragment().unwrap();
        assert_eq!(values(&ReadView::open(&b).unwrap()), vec!["2"]);
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
        let r = range(&t.revs_table, None, &t.index, &i, rev, 0, false).unwrap();
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
            assert_eq!(t.revs_table.len().unwrap(), 2);
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
            let r = range(&t.revs_table, None, &t.index, &i, 4, 2, false).unwrap();
            assert_eq!((r.kvs.len(), r.count), (2, 3));
            let r = range(&t.revs_table, None, &t.index, &i, 3, 0, true).unwrap();
            assert_eq!((r.kvs.len(), r.count), (0, 2));
            assert_eq!(
                range(
                    &t.revs_table,
                    None,
                    &t.index,
                    &KeyInterval::Span(b"z", b"a"),
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
