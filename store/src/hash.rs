//! Hashes of a member's state, for corruption checks (`Maintenance.Hash` and `HashKV`).
//!
//! `HashKV` is etcd 3.5.16's, bit for bit (`server/mvcc/hash.go`): a CRC-32C (Castagnoli) over
//! the name of etcd's key bucket (`key`), then over every stored version with main revision
//! `<= rev`, in revision order, each as etcd stores it in that bucket: the key is the 17-byte
//! revision (`main` big-endian, `_`, `sub` big-endian, plus `t` for a tombstone) and the value is
//! the `mvccpb.KeyValue` with its key (only the key for a tombstone). Versions at or below the
//! compaction revision count only if they are still the newest version of their key at `rev`
//! (etcd's `keep` set), unless no key is alive at `rev` at all; a tombstone at exactly the
//! compaction revision never counts. The result depends on the history alone, so every member
//! that applied the same entries gives the same hash, and so does etcd after the same writes.
//! Concord stores versions under the same revisions and with the same bytes (`KV_REVS`), so the
//! hash reads them as they are.
//! At exactly one of the last ten compaction revisions, etcd answers `HashKV` with the hash it
//! computed while compacting (over the history before that compaction, reporting the previous
//! compaction revision), even if a later compaction made that revision unreadable. Concord does
//! the same from the `compaction_hashes` table, which the applier fills deterministically; the
//! one difference is that etcd keeps those hashes in memory and forgets them on restart.
//!
//! `Hash` (etcd hashes its whole bolt file, which concord has no equivalent of) is a CRC-32C over
//! every replicated table (key-value history, leases, alarms), each introduced by its name, with
//! keys and values in redb's byte encoding. Member-local tables (raft log, raft state, `meta`)
//! are left out, so members at the same applied index agree.

use redb::{
    Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle, Value,
};

use crate::backend::{
    ALARMS, Backend, COMPACTION_HASHES, KV_REVS, LEASE_KEYS, LEASES, META, META_COMPACT_REV,
    META_CURRENT_REV,
};
use crate::error::{Error, Result};
use crate::index::{KeyIndex, RevKey, key_and_tombstone};

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), as Go's `crc32.MakeTable(Castagnoli)`.
#[derive(Debug, Clone, Copy)]
pub struct Crc32c(u32);

const CASTAGNOLI: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0x82F6_3B78
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

impl Default for Crc32c {
    fn default() -> Self {
        Crc32c(!0)
    }
}

impl Crc32c {
    pub fn write(&mut self, bytes: &[u8]) {
        let mut c = self.0;
        for &b in bytes {
            c = CASTAGNOLI[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
        self.0 = c;
    }

    pub fn sum(&self) -> u32 {
        !self.0
    }
}

/// The result of [`hash_kv`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvHash {
    pub hash: u32,
    /// The compaction revision as etcd reports it: -1 when the store was never compacted.
    pub compact_revision: i64,
    /// The revision hashed up to.
    pub revision: i64,
    /// The store's current revision when hashing.
    pub current: i64,
}

/// etcd's `HashByRev`: the hash of the key-value history up to `rev` (0 = current).
pub fn hash_kv(backend: &Backend, rev: i64) -> Result<KvHash> {
    let rtx = backend.db().begin_read()?;
    let meta = rtx.open_table(META)?;
    let current = meta.get(META_CURRENT_REV)?.map_or(1, |v| v.value()) as i64;
    let compact = meta.get(META_COMPACT_REV)?.map_or(0, |v| v.value()) as i64;
    drop(meta);
    // etcd's store starts with compactMainRev = -1.
    let compact = if compact == 0 { -1 } else { compact };
    if rev > 0
        && let Some(v) = rtx.open_table(COMPACTION_HASHES)?.get(rev as u64)?
    {
        let (hash, prev) = v.value();
        return Ok(KvHash {
            hash,
            compact_revision: prev,
            revision: rev,
            current,
        });
    }
    if rev > 0 && rev < compact {
        return Err(Error::Compacted);
    }
    if rev > current {
        return Err(Error::FutureRev);
    }
    let rev = if rev == 0 { current } else { rev };
    let hash = history_hash(&rtx.open_table(KV_REVS)?, backend.index(), compact, rev)?;
    Ok(KvHash {
        hash,
        compact_revision: compact,
        revision: rev,
        current,
    })
}

/// etcd's `kvHasher` over the history up to `rev`, with `compact` (-1 for none) as the
/// compaction revision; see the module docs. `table` is `KV_REVS` in a read or write
/// transaction, `index` the key index (which must still hold `rev`). The stored bytes are etcd's
/// bucket values, so they are hashed as they are.
pub fn history_hash<T>(table: &T, index: &KeyIndex, compact: i64, rev: i64) -> Result<u32>
where
    T: ReadableTable<RevKey, &'static [u8]>,
{
    if (rev as u64) < index.compacted() {
        return Err(Error::Compacted);
    }
    let mut h = Crc32c::default();
    h.write(b"key");
    // etcd skips versions of the compacted past that its `keep` set lacks, but only when that
    // set is not empty, i.e. when some key is alive at `rev`.
    let any_alive = compact > 0 && index.any_live(rev as u64);
    let mut rev_key = [0u8; 18];
    for item in table.range::<RevKey>(..=(rev as u64, u32::MAX))? {
        let (k, v) = item?;
        let (main, sub) = k.value();
        let stored = v.value();
        let (key, tombstone) = key_and_tombstone(stored)?;
        if main as i64 <= compact {
            if tombstone && main as i64 == compact {
                continue;
            }
            if any_alive {
                // In `keep` only if it is still the newest version of its key at `rev`.
                let newer = index
                    .newest_at(key, rev as u64)
                    .is_some_and(|r| r.main > main);
                if newer || tombstone {
                    continue;
                }
            }
        }
        rev_key[..8].copy_from_slice(&main.to_be_bytes());
        rev_key[8] = b'_';
        rev_key[9..17].copy_from_slice(&u64::from(sub).to_be_bytes());
        if tombstone {
            rev_key[17] = b't';
            h.write(&rev_key);
        } else {
            h.write(&rev_key[..17]);
        }
        h.write(stored);
    }
    Ok(h.sum())
}

/// `Maintenance.Hash`: a CRC-32C over every replicated table; returns it with the current
/// revision.
pub fn hash(backend: &Backend) -> Result<(u32, i64)> {
    let rtx = backend.db().begin_read()?;
    let current = rtx
        .open_table(META)?
        .get(META_CURRENT_REV)?
        .map_or(1, |v| v.value()) as i64;
    let mut h = Crc32c::default();
    hash_table(&rtx, KV_REVS, &mut h)?;
    hash_table(&rtx, LEASES, &mut h)?;
    hash_table(&rtx, LEASE_KEYS, &mut h)?;
    hash_table(&rtx, ALARMS, &mut h)?;
    Ok((h.sum(), current))
}

fn hash_table<K: Key + 'static, V: Value + 'static>(
    rtx: &ReadTransaction,
    def: TableDefinition<K, V>,
    h: &mut Crc32c,
) -> Result<()> {
    h.write(def.name().as_bytes());
    let t = rtx.open_table(def)?;
    for item in t.iter()? {
        let (k, v) = item?;
        let (kv, vv) = (k.value(), v.value());
        let kb = K::as_bytes(&kv);
        let vb = V::as_bytes(&vv);
        h.write(&(kb.as_ref().len() as u64).to_be_bytes());
        h.write(kb.as_ref());
        h.write(&(vb.as_ref().len() as u64).to_be_bytes());
        h.write(vb.as_ref());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{KeyInterval, WriteTables};

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        let mut h = Crc32c::default();
        h.write(b"123456789");
        assert_eq!(h.sum(), 0xE306_9283);
    }

    fn write(b: &Backend, f: impl FnOnce(&mut WriteTables<'_>)) {
        let wtx = b.db().begin_write().unwrap();
        {
            let mut t = WriteTables::open(&wtx, b.index()).unwrap();
            f(&mut t);
        }
        wtx.commit().unwrap();
    }

    fn put(t: &mut WriteTables<'_>, k: &str, v: &str) {
        let mut w = t.begin();
        w.put(k.as_bytes(), v.as_bytes().to_vec(), 0).unwrap();
        w.finish().unwrap();
    }

    #[test]
    fn hash_kv_depends_on_history_only_and_checks_revisions() {
        let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
        let backends: Vec<Backend> = dirs
            .iter()
            .map(|d| Backend::open(d.path()).unwrap())
            .collect();
        for b in &backends {
            write(b, |t| {
                put(t, "a", "1"); // 2
                put(t, "b", "1"); // 3
                put(t, "a", "2"); // 4
                let mut w = t.begin();
                w.delete_range(&KeyInterval::Point(b"b")).unwrap();
                w.finish().unwrap(); // 5
            });
        }
        let h0 = hash_kv(&backends[0], 0).unwrap();
        assert_eq!(h0, hash_kv(&backends[1], 0).unwrap());
        assert_eq!((h0.revision, h0.compact_revision, h0.current), (5, -1, 5));
        let h3 = hash_kv(&backends[0], 3).unwrap();
        assert_ne!(h3.hash, h0.hash);
        // Writes after revision 3 do not change its hash.
        write(&backends[0], |t| put(t, "c", "1"));
        assert_eq!(hash_kv(&backends[0], 3).unwrap().hash, h3.hash);
        assert!(matches!(hash_kv(&backends[0], 7), Err(Error::FutureRev)));
        // Members that compacted at the same revision agree; compaction changes the hash, as
        // etcd's (only the versions it keeps count).
        write(&backends[1], |t| put(t, "c", "1"));
        assert_eq!(hash(&backends[0]).unwrap(), hash(&backends[1]).unwrap());
        let before = hash_kv(&backends[0], 6).unwrap().hash;
        for b in &backends {
            write(b, |t| t.compact(4).unwrap());
        }
        let after = hash_kv(&backends[0], 6).unwrap();
        assert_eq!(after, hash_kv(&backends[1], 6).unwrap());
        assert_eq!(after.compact_revision, 4);
        assert_ne!(after.hash, before);
        assert!(matches!(hash_kv(&backends[0], 3), Err(Error::Compacted)));
        // Whole-state hash: different states differ.
        write(&backends[1], |t| put(t, "d", "1"));
        assert_ne!(hash(&backends[0]).unwrap(), hash(&backends[1]).unwrap());
    }
}
