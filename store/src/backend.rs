//! The backend: owns the redb database files and declares every table concord stores.
//!
//! Layout of a data dir (format version [`FORMAT_VERSION`]):
//!
//! ```text
//! <data-dir>/concord/store.redb   the state machine: MVCC key space, leases, members, auth, meta,
//!                                 the applied conf state (the key index over the key space is
//!                                 in memory only, see `index`)
//! <data-dir>/concord/wal/         the raft log and the hard state (`wal`: append-only segments)
//! ```
//!
//! Apart because they are made durable at different rates: the raft log is synced with every
//! batch of new entries (one append), the state machine only now and then (see `raft`), since
//! replaying the log from the state's applied index redoes whatever a crash took from it. One
//! redb file for both would flush every B-tree the state touched at every log sync.
//!
//! All tables are declared here as `const TableDefinition`s with their byte layout documented,
//! so there is one place to read the on-disk schema. Other modules open these tables inside
//! transactions; they never create tables of their own. This module must never interpret
//! key-value semantics (that is `mvcc`) or raft semantics (that is `raft`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use crate::error::{Error, Result};
use crate::index::KeyIndex;
use crate::mvcc::{ReadSnapshot, Revs};
use crate::overlay::{Overlay, OverlayView};

/// Version of the on-disk layout. Bumped on any incompatible schema change (2: the raft log
/// moved to the write-ahead log; 3: key-value versions keyed by revision only, with an
/// in-memory key index).
pub const FORMAT_VERSION: u64 = 3;

/// Small counters, each a `u64` under a fixed name (see the `META_*` key constants).
pub const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// `META` key: the layout version that wrote this file.
pub const META_FORMAT_VERSION: &str = "format_version";
/// `META` key: index of the last raft entry whose effects are in this file. Written in the same
/// transaction as those effects, so replay after a crash skips exactly what is applied.
pub const META_APPLIED_INDEX: &str = "applied_index";
/// `META` key: the raft term of that entry (of the snapshot, after a snapshot install), so a
/// restart can check that the raft log agrees with the state.
pub const META_APPLIED_TERM: &str = "applied_term";
/// `META` key: the MVCC store's current main revision (starts at 1, as etcd's).
pub const META_CURRENT_REV: &str = "current_rev";
/// `META` key: the revision of the last completed compaction (0 = never).
pub const META_COMPACT_REV: &str = "compact_rev";
/// `META` key: this member's raft id.
pub const META_MEMBER_ID: &str = "member_id";
/// `META` key: the cluster id.
pub const META_CLUSTER_ID: &str = "cluster_id";

/// Raft's applied state, protobuf-encoded with raft's own codec: `conf_state`
/// (`eraftpb.ConfState`), written with the applied entries that change it. (The log and the
/// hard state are in the write-ahead log, `wal`.)
pub const RAFT_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_state");
/// `RAFT_STATE` key for the conf state.
pub const RAFT_CONF_STATE: &str = "conf_state";

/// Every version of every key since the last compaction, under its revision: (main revision,
/// sub revision) -> `mvccpb.KeyValue` (prost) with its key, as etcd's `key` bucket holds it; a
/// tombstone (delete) is the key alone (`version == 0`). Keyed by revision, so writes append at
/// the end of the tree. Which revision holds a key's version is in the in-memory `index`, which
/// is rebuilt from this table on open. Within one revision a key changes at most once (etcd
/// rejects duplicate keys in a txn).
pub const KV_REVS: TableDefinition<(u64, u32), &[u8]> = TableDefinition::new("kv_revs");

/// Granted leases: lease id -> `concordpb.LeaseRecord` (prost).
pub const LEASES: TableDefinition<i64, &[u8]> = TableDefinition::new("leases");

/// Keys attached to leases: (lease id, user key) -> (). Kept in step with the `lease` field of
/// each key's live version, so revoking a lease finds its keys without scanning the key space.
pub const LEASE_KEYS: TableDefinition<(i64, &[u8]), ()> = TableDefinition::new("lease_keys");

/// Cluster membership: member id -> `etcdserverpb.Member` (prost: id, name, peer URLs, client
/// URLs, is_learner). Written at bootstrap from `--initial-cluster` (names and peer URLs; client
/// URLs empty), then only by applied raft entries (`MemberAttrSet` publishes a member's name and
/// client URLs), so every member holds the same rows and a restart needs no flags. Owned by
/// `membership`.
pub const MEMBERS: TableDefinition<u64, &[u8]> = TableDefinition::new("members");

/// Ids of removed members (etcd's `members_removed` bucket): member id -> (). Written only by
/// applied MemberRemove conf changes; the peer service refuses messages from these ids, so a
/// removed member restarted on its old data dir learns it was removed and stops. Owned by
/// `membership`.
pub const MEMBERS_REMOVED: TableDefinition<u64, ()> = TableDefinition::new("members_removed");

/// Raised alarms (etcd's `alarm` bucket): (member id, `etcdserverpb.AlarmType` number) -> ().
/// Written only by applied `AlarmRequest` entries, so every member holds the same rows.
pub const ALARMS: TableDefinition<(u64, i32), ()> = TableDefinition::new("alarms");

/// Hashes computed while compacting (etcd's in-memory `hashStorage`, here persisted and
/// replicated): compaction revision -> (HashKV hash of the history up to it as it was before
/// the compaction, previous compaction revision as etcd reports it, -1 for none). The newest
/// [`COMPACTION_HASHES_KEPT`] are kept. Written only by applied compactions.
pub const COMPACTION_HASHES: TableDefinition<u64, (u32, i64)> =
    TableDefinition::new("compaction_hashes");
/// How many compaction hashes are kept (etcd's `hashStorageMaxSize`).
pub const COMPACTION_HASHES_KEPT: usize = 10;

/// Auth store counters (etcd's `auth` bucket): `enabled` (0 or 1), `revision` (etcd's auth
/// revision; absent means 1, as etcd's store starts at 1) and `token_index` (the number after
/// the dot of the last simple token issued). Written only by applied auth requests. Owned by
/// `auth`.
pub const AUTH: TableDefinition<&str, u64> = TableDefinition::new("auth");
/// Users (etcd's `authUsers` bucket): user name -> `authpb.User` (prost; `password` is the
/// bcrypt hash). Owned by `auth`.
pub const AUTH_USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_users");
/// Roles (etcd's `authRoles` bucket): role name -> `authpb.Role` (prost; permissions sorted by
/// key). Owned by `auth`.
pub const AUTH_ROLES: TableDefinition<&str, &[u8]> = TableDefinition::new("auth_roles");
/// Simple tokens issued and not yet dropped: token index (the number after the dot) ->
/// `concordpb.SimpleTokenRecord` (prost). etcd keeps these in memory on every member; here the
/// applied `Authenticate` writes them, so every member knows every token, and old ones are
/// dropped in index order when new ones are issued. Cleared when auth is disabled. Owned by
/// `auth`.
pub const AUTH_TOKENS: TableDefinition<u64, &[u8]> = TableDefinition::new("auth_tokens");

/// How long [`Backend::defragment`] waits for the transactions in flight to end.
const DEFRAG_WAIT: Duration = Duration::from_secs(30);

/// How old the size [`Backend::recent_size`] answers may be. etcd's quota check reads a size
/// as old as its last batch commit (up to 100 ms).
const RECENT_SIZE_TTL: Duration = Duration::from_millis(10);

/// The open database of one member.
///
/// The database sits behind a read-write lock so that [`Backend::defragment`] can get the
/// `&mut Database` that redb's compaction needs: everyone else takes the read side only for the
/// instant of `begin_read`/`begin_write` (transactions do not borrow the database), and
/// defragmentation takes the write side, so no new transaction begins while it runs.
pub struct Backend {
    db: RwLock<Database>,
    path: PathBuf,
    index: Arc<KeyIndex>,
    overlay: Overlay,
    /// The read snapshot of the newest read and the overlay view it was opened with.
    shared_read: Mutex<Option<SharedRead>>,
    /// When the last [`Backend::size`] read the file, and the size it read.
    size_seen: Mutex<Option<(Instant, u64)>>,
}

type SharedRead = (Arc<OverlayView>, Arc<ReadSnapshot>);

impl Backend {
    /// Opens (or creates) the backend under `data_dir`, refusing dirs it cannot own.
    pub fn open(data_dir: &Path) -> Result<Backend> {
        check_data_dir(data_dir)?;
        let dir = data_dir.join("concord");
        std::fs::create_dir_all(&dir).map_err(|e| {
            Error::DataDir(format!(
                "cannot create data dir {}: {e}; check that the path is writable by this user",
                dir.display()
            ))
        })?;
        let path = dir.join("store.redb");
        let db = Database::builder()
            // Hot pages only: the OS page cache holds the rest, and RSS stays small.
            .set_cache_size(64 << 20)
            .create(&path)
            .map_err(|e| {
                Error::DataDir(format!(
                    "cannot open {}: {e}; the data dir is damaged or not concord's. \
                     Move it aside and restore from a snapshot, or point --data-dir elsewhere",
                    path.display()
                ))
            })?;
        let backend = Backend {
            db: RwLock::new(db),
            path,
            index: Arc::default(),
            overlay: Overlay::default(),
            shared_read: Mutex::new(None),
            size_seen: Mutex::new(None),
        };
        backend.init_schema()?;
        backend.load_index()?;
        Ok(backend)
    }

    /// Rebuilds the key index from the committed `KV_REVS` (on open, and after a restore wrote
    /// the tables), and starts the overlay over the committed revisions. Logs how long it took,
    /// since it reads every stored version.
    pub fn load_index(&self) -> Result<()> {
        let started = Instant::now();
        let rtx = self.db().begin_read()?;
        let meta = rtx.open_table(META)?;
        let compact = meta.get(META_COMPACT_REV)?.map_or(0, |v| v.value());
        let current = meta.get(META_CURRENT_REV)?.map_or(1, |v| v.value());
        self.index.load(&rtx.open_table(KV_REVS)?, compact)?;
        self.overlay.committed(Revs {
            current: current as i64,
            compact: compact as i64,
        });
        tracing::info!(
            keys = self.index.len(),
            took_ms = started.elapsed().as_millis() as u64,
            "loaded the key index"
        );
        Ok(())
    }

    /// The in-memory key index of this database's `KV_REVS` (see `index`).
    pub fn index(&self) -> &Arc<KeyIndex> {
        &self.index
    }

    /// The versions the raft loop applied but has not committed yet (see `overlay`).
    pub fn overlay(&self) -> &Overlay {
        &self.overlay
    }

    fn init_schema(&self) -> Result<()> {
        let wtx = self.db().begin_write()?;
        {
            let mut meta = wtx.open_table(META)?;
            let found = meta.get(META_FORMAT_VERSION)?.map(|v| v.value());
            match found {
                None => {
                    meta.insert(META_FORMAT_VERSION, FORMAT_VERSION)?;
                    meta.insert(META_CURRENT_REV, 1)?;
                    meta.insert(META_COMPACT_REV, 0)?;
                    meta.insert(META_APPLIED_INDEX, 0)?;
                }
                Some(FORMAT_VERSION) => {}
                Some(v) => {
                    return Err(Error::DataDir(format!(
                        "{} has data format version {v}, this concord reads version \
                         {FORMAT_VERSION}; run a concord release that matches the data dir",
                        self.path.display()
                    )));
                }
            }
            wtx.open_table(RAFT_STATE)?;
            wtx.open_table(KV_REVS)?;
            wtx.open_table(MEMBERS)?;
            wtx.open_table(MEMBERS_REMOVED)?;
            wtx.open_table(LEASES)?;
            wtx.open_table(LEASE_KEYS)?;
            wtx.open_table(ALARMS)?;
            wtx.open_table(COMPACTION_HASHES)?;
            wtx.open_table(AUTH)?;
            wtx.open_table(AUTH_USERS)?;
            wtx.open_table(AUTH_ROLES)?;
            wtx.open_table(AUTH_TOKENS)?;
        }
        wtx.commit()?;
        Ok(())
    }

    /// The directory of the raft log's segments (`wal`), for the raft loop only.
    pub fn wal_dir(&self) -> PathBuf {
        self.path.with_file_name("wal")
    }

    /// The redb database, for modules that open transactions on the tables above. Use it only
    /// to begin a transaction (`backend.db().begin_read()`): never hold the guard while a
    /// transaction of this thread is open, or defragmentation waits for it in vain.
    pub fn db(&self) -> RwLockReadGuard<'_, Database> {
        self.db.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The read snapshot a read that took `overlay` may share: one opened with that same view
    /// (every apply and every commit of the raft loop replaces the view).
    pub fn shared_read(&self, overlay: &Arc<OverlayView>) -> Option<Arc<ReadSnapshot>> {
        let shared = self.shared_read.lock().ok()?;
        match &*shared {
            Some((view, snapshot)) if Arc::ptr_eq(view, overlay) => Some(snapshot.clone()),
            _ => None,
        }
    }

    /// Offers `snapshot`, opened with `overlay`, to later reads.
    pub fn share_read(&self, overlay: &Arc<OverlayView>, snapshot: &Arc<ReadSnapshot>) {
        if let Ok(mut shared) = self.shared_read.lock() {
            *shared = Some((overlay.clone(), snapshot.clone()));
        }
    }

    /// Defragments the file (etcd's `Defragment`): redb's compaction moves live pages to the
    /// front of the file and truncates it. Takes the write side of the lock, so transactions
    /// stop beginning (the raft loop included: a long defragmentation delays this member's
    /// raft traffic, as etcd's does its applies), then waits up to 30 s for those in flight.
    /// Returns the file size before and after.
    pub fn defragment(&self) -> Result<(u64, u64)> {
        let before = self.size();
        let deadline = Instant::now() + DEFRAG_WAIT;
        loop {
            {
                let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
                // The shared read snapshot's transaction would stay open; none begins now.
                if let Ok(mut shared) = self.shared_read.lock() {
                    *shared = None;
                }
                // Transactions begun before we took the lock end by themselves; poll briefly
                // while holding it. A thread that opens a second transaction while holding a
                // first would wait for us, so let go now and then.
                let hold_until = Instant::now() + Duration::from_millis(500);
                loop {
                    match db.compact() {
                        // redb repeats its passes until no page moves.
                        Ok(_) => return Ok((before, self.size())),
                        Err(redb::CompactionError::TransactionInProgress) => {}
                        Err(e) => return Err(e.into()),
                    }
                    if Instant::now() >= hold_until {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Storage(
                    "cannot defragment: transactions stayed open for 30s; try again when the \
                     member is less busy"
                        .into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size of the database file in bytes (etcd's `dbSize`).
    pub fn size(&self) -> u64 {
        let size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        *self.size_seen.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), size));
        size
    }

    /// [`Backend::size`] as of at most `RECENT_SIZE_TTL` ago, for the quota check in front of
    /// every write: a `stat` per put took 6% of the CPU with 256 clients putting.
    pub fn recent_size(&self) -> u64 {
        let seen = *self.size_seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen {
            Some((at, size)) if at.elapsed() < RECENT_SIZE_TTL => size,
            _ => self.size(),
        }
    }

    /// Reads one `META` counter in a fresh read transaction.
    pub fn read_meta(&self, key: &str) -> Result<u64> {
        let rtx = self.db().begin_read()?;
        let meta = rtx.open_table(META)?;
        Ok(meta.get(key)?.map(|v| v.value()).unwrap_or(0))
    }
}

/// Refuses data dirs that hold another program's data: etcd's own layout (`member/wal`,
/// `member/snap`) is the common mistake when swapping binaries.
fn check_data_dir(data_dir: &Path) -> Result<()> {
    if data_dir.exists() && !data_dir.is_dir() {
        return Err(Error::DataDir(format!(
            "--data-dir {} exists and is not a directory; point --data-dir at a directory",
            data_dir.display()
        )));
    }
    let member = data_dir.join("member");
    if member.join("wal").exists() || member.join("snap").exists() {
        return Err(Error::DataDir(format!(
            "--data-dir {} holds etcd's own data format (member/wal, member/snap), which concord \
             cannot read. Take a snapshot with `etcdctl snapshot save`, or start concord with an \
             empty --data-dir and copy the keys over",
            data_dir.display()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_dir_gets_schema_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Backend::open(dir.path()).unwrap();
            assert_eq!(b.read_meta(META_CURRENT_REV).unwrap(), 1);
            assert!(b.size() > 0);
        }
        let b = Backend::open(dir.path()).unwrap();
        assert_eq!(b.read_meta(META_FORMAT_VERSION).unwrap(), FORMAT_VERSION);
    }

    #[test]
    fn recent_size_follows_the_file_within_its_ttl() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let before = b.recent_size();
        let wtx = b.db().begin_write().unwrap();
        {
            let mut t = wtx
                .open_table(TableDefinition::<u64, &[u8]>::new("test_filler"))
                .unwrap();
            for i in 0..64 {
                t.insert(i, vec![7u8; 64 << 10].as_slice()).unwrap();
            }
        }
        wtx.commit().unwrap();
        let on_disk = || std::fs::metadata(&b.path).unwrap().len();
        assert!(on_disk() > before + (1 << 20), "the file did not grow");
        std::thread::sleep(RECENT_SIZE_TTL + Duration::from_millis(5));
        assert_eq!(b.recent_size(), on_disk());
    }

    #[test]
    fn etcd_data_dir_is_refused_with_advice() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("member/wal")).unwrap();
        let err = Backend::open(dir.path()).err().expect("must refuse");
        assert!(err.to_string().contains("etcd's own data format"), "{err}");
    }

    #[test]
    fn garbage_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("concord")).unwrap();
        std::fs::write(
            dir.path().join("concord/store.redb"),
            b"not a redb file at all",
        )
        .unwrap();
        let err = Backend::open(dir.path()).err().expect("must refuse");
        assert!(
            err.to_string().contains("damaged or not concord's"),
            "{err}"
        );
    }
}
