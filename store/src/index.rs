//! The in-memory key index (etcd's `treeIndex`): for every key, where each of its versions since
//! the last compaction is stored.
//!
//! The key-value history on disk is keyed by revision alone (`backend::KV_REVS`), so a write only
//! ever appends to the end of one B-tree, and a state commit rewrites few pages whatever keys it
//! touched. Finding a key's version at a revision is this index's job: per key, the `(main, sub)`
//! revisions of its versions in revision order, each marked if it is a tombstone (a delete).
//!
//! Nothing here is durable: [`KeyIndex::load`] rebuilds the index from `KV_REVS` when the backend
//! opens and after a snapshot is installed. The applier (`mvcc::TxnWrite`) pushes each version as
//! it writes it, before its transaction commits, so the index is never behind any committed
//! state. Readers ask for versions at or below the revision of their own snapshot, so versions
//! newer than that snapshot are invisible to them; revisions are the same on every member and
//! after any restart, because the state machine is deterministic.

use std::collections::BTreeMap;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use redb::ReadableTable;

use crate::error::{Error, Result};
use crate::mvcc::KeyInterval;

/// Key type of `backend::KV_REVS` as redb sees it: `(main revision, sub revision)`.
pub type RevKey = (u64, u32);

/// Where one version of a key is stored, and whether it is a tombstone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rev {
    /// Main revision: the write request that made this version.
    pub main: u64,
    /// Sub revision: its place among that request's changes.
    pub sub: u32,
    /// A delete, not a put.
    pub tombstone: bool,
}

impl Rev {
    /// The `KV_REVS` key of this version.
    pub fn key(&self) -> RevKey {
        (self.main, self.sub)
    }
}

/// The versions of one key, oldest first. Most keys have one version between compactions, which
/// is stored inline: this is 16 bytes (the `Many` pointer fits beside `Rev::tombstone`'s unused
/// values), so a million keys cost little more than their key bytes and the tree's nodes.
#[derive(Debug)]
#[expect(
    clippy::box_collection,
    reason = "a thin pointer keeps the enum at 16 bytes; a Vec would make it 24"
)]
enum Versions {
    One(Rev),
    Many(Box<Vec<Rev>>),
}

impl Versions {
    fn as_slice(&self) -> &[Rev] {
        match self {
            Versions::One(r) => std::slice::from_ref(r),
            Versions::Many(v) => v,
        }
    }

    fn push(&mut self, rev: Rev) {
        match self {
            Versions::One(r) => *self = Versions::Many(Box::new(vec![*r, rev])),
            Versions::Many(v) => v.push(rev),
        }
    }

    /// Removes the oldest `n` versions, handing their `KV_REVS` keys to `out`; false when none
    /// is left.
    fn forget_oldest(&mut self, n: usize, out: &mut Vec<RevKey>) -> bool {
        if n == 0 {
            return true;
        }
        match self {
            Versions::One(r) => {
                out.push(r.key());
                false
            }
            Versions::Many(v) => {
                out.extend(v.drain(..n).map(|r| r.key()));
                match v.len() {
                    0 => false,
                    1 => {
                        *self = Versions::One(v[0]);
                        true
                    }
                    _ => true,
                }
            }
        }
    }

    /// The newest version with a main revision `<= rev`, tombstones included.
    fn newest(&self, rev: u64) -> Option<Rev> {
        let vs = self.as_slice();
        let n = vs.partition_point(|r| r.main <= rev);
        n.checked_sub(1).map(|i| vs[i])
    }
}

#[derive(Debug, Default)]
struct Inner {
    keys: BTreeMap<Box<[u8]>, Versions>,
    /// Revision of the last compaction applied to the index (0 = never).
    compact: u64,
}

/// The index of one member's key space; shared by the applier and every reader.
#[derive(Debug, Default)]
pub struct KeyIndex {
    inner: RwLock<Inner>,
}

/// What [`KeyIndex::range`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// Versions of the first keys in key order, as many as were wanted.
    pub revs: Vec<Rev>,
    /// Number of live keys in the interval, regardless of how many were wanted.
    pub count: usize,
}

impl KeyIndex {
    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole index with the versions stored in `table` (a `KV_REVS` table of a read
    /// or write transaction), compacted at `compact`. Reads every stored version once.
    pub fn load<T>(&self, table: &T, compact: u64) -> Result<()>
    where
        T: ReadableTable<RevKey, &'static [u8]>,
    {
        let mut keys: BTreeMap<Box<[u8]>, Versions> = BTreeMap::new();
        for item in table.iter()? {
            let (k, v) = item?;
            let (main, sub) = k.value();
            let (key, tombstone) = key_and_tombstone(v.value())?;
            let rev = Rev {
                main,
                sub,
                tombstone,
            };
            match keys.get_mut(key) {
                Some(vs) => vs.push(rev),
                None => {
                    keys.insert(key.into(), Versions::One(rev));
                }
            }
        }
        *self.write() = Inner { keys, compact };
        Ok(())
    }

    /// Records a new version of `key`; it must be newer than every version the key has.
    pub fn push(&self, key: &[u8], rev: Rev) {
        let mut inner = self.write();
        match inner.keys.get_mut(key) {
            Some(vs) => {
                debug_assert!(vs.as_slice().last().is_none_or(|l| l.key() < rev.key()));
                vs.push(rev);
            }
            None => {
                inner.keys.insert(key.into(), Versions::One(rev));
            }
        }
    }

    /// The live version of `key` at `rev` (None if absent or deleted then).
    pub fn get(&self, key: &[u8], rev: u64) -> Option<Rev> {
        let inner = self.read();
        inner
            .keys
            .get(key)
            .and_then(|vs| vs.newest(rev))
            .filter(|r| !r.tombstone)
    }

    /// The newest version of `key` at or below `rev`, a tombstone included.
    pub fn newest_at(&self, key: &[u8], rev: u64) -> Option<Rev> {
        self.read().keys.get(key).and_then(|vs| vs.newest(rev))
    }

    /// The live versions at `rev` of the keys in `interval`, in key order: the first `want` of
    /// them, and how many there are. Fails with `Compacted` when the index no longer holds
    /// `rev` (a compaction applied after the caller's snapshot was taken).
    pub fn range(&self, interval: &KeyInterval<'_>, rev: u64, want: usize) -> Result<Found> {
        let inner = self.read();
        if rev < inner.compact {
            return Err(Error::Compacted);
        }
        let mut out = Found::default();
        if interval.is_empty() {
            return Ok(out);
        }
        let mut take = |vs: &Versions| {
            if let Some(r) = vs.newest(rev).filter(|r| !r.tombstone) {
                if out.revs.len() < want {
                    out.revs.push(r);
                }
                out.count += 1;
            }
        };
        if let KeyInterval::Point(k) = *interval {
            if let Some(vs) = inner.keys.get(k) {
                take(vs);
            }
        } else {
            for (_, vs) in inner.keys.range::<[u8], _>(interval.bounds()) {
                take(vs);
            }
        }
        Ok(out)
    }

    /// Whether any key is live at `rev`.
    pub fn any_live(&self, rev: u64) -> bool {
        self.read()
            .keys
            .values()
            .any(|vs| vs.newest(rev).is_some_and(|r| !r.tombstone))
    }

    /// Revision of the last compaction the index applied (0 = never).
    pub fn compacted(&self) -> u64 {
        self.read().compact
    }

    /// Compacts at `rev`: forgets every version older than the newest one at or below `rev` of
    /// each key, and that one too if it is a tombstone (keys left with no version go). Returns
    /// the forgotten versions' `KV_REVS` keys in revision order, for the caller to delete.
    pub fn compact(&self, rev: u64) -> Vec<RevKey> {
        let mut inner = self.write();
        let mut doomed = Vec::new();
        inner.keys.retain(|_, vs| {
            let slice = vs.as_slice();
            let n = slice.partition_point(|r| r.main <= rev);
            if n == 0 {
                return true;
            }
            let gone = if slice[n - 1].tombstone { n } else { n - 1 };
            vs.forget_oldest(gone, &mut doomed)
        });
        inner.compact = rev;
        doomed.sort_unstable();
        doomed
    }

    /// Number of keys with at least one version (live or tombstone) in the index.
    pub fn len(&self) -> usize {
        self.read().keys.len()
    }

    /// Whether the index has no keys at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The key of a stored `mvccpb.KeyValue` and whether it is a tombstone (`version` 0), read
/// straight from the protobuf bytes: loading the index must not copy every value.
pub fn key_and_tombstone(bytes: &[u8]) -> Result<(&[u8], bool)> {
    let bad = || Error::Storage("a stored key-value record is not valid protobuf".into());
    let mut buf = bytes;
    let mut key: &[u8] = &[];
    let mut version = 0u64;
    while !buf.is_empty() {
        let tag = prost::encoding::decode_varint(&mut buf).map_err(|_| bad())?;
        let (field, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                let v = prost::encoding::decode_varint(&mut buf).map_err(|_| bad())?;
                if field == 4 {
                    version = v;
                }
            }
            2 => {
                let len = prost::encoding::decode_varint(&mut buf).map_err(|_| bad())? as usize;
                if len > buf.len() {
                    return Err(bad());
                }
                let (data, rest) = buf.split_at(len);
                if field == 1 {
                    key = data;
                }
                buf = rest;
            }
            _ => return Err(bad()),
        }
    }
    Ok((key, version == 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::mvccpb::KeyValue;
    use prost::Message;

    fn rev(main: u64, tombstone: bool) -> Rev {
        Rev {
            main,
            sub: 0,
            tombstone,
        }
    }

    #[test]
    fn one_version_is_stored_inline_in_16_bytes() {
        // The index's memory per key rests on this (see `Versions`).
        assert_eq!(std::mem::size_of::<Versions>(), 16);
    }

    #[test]
    fn versions_at_a_revision_and_compaction() {
        let ix = KeyIndex::default();
        ix.push(b"a", rev(2, false));
        ix.push(b"b", rev(3, false));
        ix.push(b"a", rev(4, false));
        ix.push(b"b", rev(5, true));
        ix.push(b"c", rev(6, false));
        assert_eq!(ix.get(b"a", 3), Some(rev(2, false)));
        assert_eq!(ix.get(b"a", 9), Some(rev(4, false)));
        assert_eq!(ix.get(b"b", 5), None);
        assert_eq!(ix.newest_at(b"b", 5), Some(rev(5, true)));
        assert_eq!(ix.get(b"a", 1), None);
        let all = KeyInterval::From(b"");
        let f = ix.range(&all, 4, 1).unwrap();
        assert_eq!((f.revs, f.count), (vec![rev(4, false)], 2));
        assert_eq!(ix.range(&all, 6, usize::MAX).unwrap().count, 2);
        // Compacting at 5 forgets a@2 (superseded) and b entirely (deleted at 5).
        assert_eq!(ix.compact(5), vec![(2, 0), (3, 0), (5, 0)]);
        assert_eq!(ix.len(), 2);
        assert!(matches!(ix.range(&all, 4, 1), Err(Error::Compacted)));
        assert_eq!(
            ix.range(&all, 5, usize::MAX).unwrap().revs,
            vec![rev(4, false)]
        );
        assert!(ix.any_live(5));
    }

    #[test]
    fn key_and_tombstone_reads_prost_bytes() {
        let put = KeyValue {
            key: b"k1".to_vec(),
            value: vec![7; 300],
            version: 3,
            create_revision: 2,
            mod_revision: 9,
            lease: 5,
        };
        let bytes = put.encode_to_vec();
        assert_eq!(key_and_tombstone(&bytes).unwrap(), (&b"k1"[..], false));
        let tomb = KeyValue {
            key: b"k1".to_vec(),
            ..Default::default()
        }
        .encode_to_vec();
        assert_eq!(key_and_tombstone(&tomb).unwrap(), (&b"k1"[..], true));
        assert!(key_and_tombstone(&[0x0a, 0x05, 1]).is_err());
    }
}
