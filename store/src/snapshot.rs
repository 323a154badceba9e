//! Backups and raft snapshots: the file `Maintenance.Snapshot` streams, `concord snapshot
//! restore`, which turns such a file into the data dir of a member of a new cluster (etcd's
//! `etcdutl snapshot restore`), and the state a leader ships to a member that is behind its
//! compacted raft log ([`create_from`] on the leader, [`install`] on the member).
//!
//! Format: a snapshot is a redb file with concord's schema (see `backend`) holding the replicated
//! state as of one read transaction: the key-value history (`kv_revs`; the key index is rebuilt
//! from it wherever the file is installed or restored), leases, members, alarms, compaction
//! hashes, the auth tables, and the `meta` counters (with the applied raft index). The raft log
//! and raft state are left out. As etcd's stream, a backup is followed by the SHA-256 of the
//! file: etcdctl 3.5's `snapshot save` only
//! checks that the stream's length is 32 more than a multiple of 512 (redb files are whole pages,
//! so the file part always is), and restore checks the digest.
//!
//! A redb file that is being written cannot be copied byte for byte, so [`create`] copies the
//! tables from one read transaction into a fresh file (which also leaves the free pages behind);
//! the read transaction ends as soon as the copy is done, and the file is streamed from disk.
//!
//! Restore checks the digest (unless `--skip-hash-check`), copies the snapshot's key-value
//! history and leases into a new data dir, keeps its revisions, and writes the new cluster's
//! membership from the restore flags exactly as a first start would (`embed::identity`); the
//! snapshot's members and alarms are dropped, since they describe the old cluster. The new
//! members start from an empty raft log, like etcd's restored members.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use redb::{
    Database, Key, ReadTransaction, ReadableDatabase, ReadableTable, TableDefinition, TableHandle,
    Value, WriteTransaction,
};
use sha2::{Digest, Sha256};

use crate::backend::{
    ALARMS, AUTH, AUTH_ROLES, AUTH_TOKENS, AUTH_USERS, Backend, COMPACTION_HASHES, KV_REVS,
    LEASE_KEYS, LEASES, MEMBERS, MEMBERS_REMOVED, META, META_APPLIED_INDEX, META_COMPACT_REV,
    META_CURRENT_REV, META_FORMAT_VERSION,
};
use crate::config::Config;
use crate::error::{Error, Result};
use crate::index::KeyIndex;

/// Length of the digest that follows the database in a snapshot stream.
pub const SHA256_LEN: usize = 32;

/// A snapshot file that is deleted when dropped.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for SnapshotFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn copy_table<K: Key + 'static, V: Value + 'static>(
    rtx: &ReadTransaction,
    wtx: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    let src = rtx.open_table(def)?;
    let mut dst = wtx.open_table(def)?;
    for item in src.iter()? {
        let (k, v) = item?;
        dst.insert(k.value(), v.value())?;
    }
    Ok(())
}

/// Calls `$f(<args>, TABLE)?` for every table of the replicated state except `META`: the tables
/// that applied raft entries write, identical on every member at the same applied index.
macro_rules! replicated_tables {
    ($f:ident($($arg:expr),*)) => {{
        $f($($arg,)* KV_REVS)?;
        $f($($arg,)* LEASES)?;
        $f($($arg,)* LEASE_KEYS)?;
        $f($($arg,)* MEMBERS)?;
        $f($($arg,)* MEMBERS_REMOVED)?;
        $f($($arg,)* ALARMS)?;
        $f($($arg,)* COMPACTION_HASHES)?;
        $f($($arg,)* AUTH)?;
        $f($($arg,)* AUTH_USERS)?;
        $f($($arg,)* AUTH_ROLES)?;
        $f($($arg,)* AUTH_TOKENS)?;
    }};
}

/// Writes a snapshot of `backend`'s applied state into a new file next to its database (same
/// disk, not a tmpfs); blocking. The file is removed when the returned handle is dropped.
pub fn create(backend: &Backend) -> Result<SnapshotFile> {
    let rtx = backend.db().begin_read()?;
    create_from(rtx, backend)
}

/// [`create`] from the state `rtx` sees (a read transaction of `backend`'s database, begun
/// earlier, e.g. by the raft loop at the index of a raft snapshot); ends `rtx` once copied.
pub fn create_from(rtx: ReadTransaction, backend: &Backend) -> Result<SnapshotFile> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let dir = backend
        .path()
        .parent()
        .ok_or_else(|| Error::Storage("database path has no parent directory".into()))?;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let own = format!("snapshot-{}-", std::process::id());
    if n == 0 {
        // Files left behind by an earlier process (killed while streaming).
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with("snapshot-")
                    && name.ends_with(".tmp")
                    && !name.starts_with(&own)
                {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
    }
    let path = dir.join(format!("{own}{n}.tmp"));
    let file = SnapshotFile { path };
    let _ = std::fs::remove_file(file.path());
    let out = Database::create(file.path())?;
    {
        let wtx = out.begin_write()?;
        copy_table(&rtx, &wtx, META)?;
        replicated_tables!(copy_table(&rtx, &wtx));
        drop(rtx);
        wtx.commit()?;
    }
    drop(out);
    let len = std::fs::metadata(file.path())
        .map_err(|e| Error::Storage(format!("cannot stat snapshot file: {e}")))?
        .len();
    if len % 512 != 0 {
        return Err(Error::Storage(format!(
            "snapshot file has {len} bytes, not a multiple of 512; etcdctl would reject it"
        )));
    }
    Ok(file)
}

fn clear_table<K: Key + 'static, V: Value + 'static>(
    wtx: &WriteTransaction,
    def: TableDefinition<K, V>,
) -> Result<()> {
    wtx.delete_table(def)
        .map_err(|e| Error::Storage(format!("cannot clear table {}: {e}", def.name())))?;
    wtx.open_table(def)?;
    Ok(())
}

/// What [`install`] put in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Installed {
    /// The raft index the snapshot's state was taken at (its `META_APPLIED_INDEX`).
    pub applied: u64,
    pub current_rev: u64,
    pub compact_rev: u64,
}

/// Replaces the replicated state in `wtx` with that of the snapshot file at `path` (written by
/// [`create_from`] on another member of the cluster): every replicated table and the revision
/// counters and applied index of `META`. This member's identity in `META` and the raft tables
/// are left to the caller. `index` (the backend's key index) is rebuilt from the new state.
/// Blocking.
pub fn install(path: &Path, wtx: &WriteTransaction, index: &KeyIndex) -> Result<Installed> {
    let snap = Database::open(path).map_err(|e| {
        Error::Storage(format!(
            "cannot open the received raft snapshot {}: {e}",
            path.display()
        ))
    })?;
    let rtx = snap.begin_read()?;
    let installed = {
        let meta = rtx.open_table(META)?;
        let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
        let format = get(META_FORMAT_VERSION)?;
        if format != crate::backend::FORMAT_VERSION {
            return Err(Error::Storage(format!(
                "the received raft snapshot has data format version {format}, this concord \
                 reads version {}; run the same concord release on every member",
                crate::backend::FORMAT_VERSION
            )));
        }
        Installed {
            applied: get(META_APPLIED_INDEX)?,
            current_rev: get(META_CURRENT_REV)?.max(1),
            compact_rev: get(META_COMPACT_REV)?,
        }
    };
    replicated_tables!(clear_table(wtx));
    replicated_tables!(copy_table(&rtx, wtx));
    let mut m = wtx.open_table(META)?;
    m.insert(META_CURRENT_REV, installed.current_rev)?;
    m.insert(META_COMPACT_REV, installed.compact_rev)?;
    m.insert(META_APPLIED_INDEX, installed.applied)?;
    index.load(&wtx.open_table(KV_REVS)?, installed.compact_rev)?;
    Ok(installed)
}

/// What `concord snapshot restore` was asked to do.
#[derive(Debug, Clone)]
pub struct RestoreOptions {
    /// The snapshot file (`etcdctl snapshot save` output).
    pub snapshot: PathBuf,
    /// Identity of the new member and its cluster: name, data dir, initial cluster, token and
    /// advertised peer URLs.
    pub config: Config,
    /// `--skip-hash-check`: accept a file without (or with a wrong) digest.
    pub skip_hash_check: bool,
    /// `--bump-revision`: raise the current revision by this much (with `mark_compacted`).
    pub bump_revision: u64,
    /// `--mark-compacted`: mark the (bumped) current revision as compacted.
    pub mark_compacted: bool,
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::DataDir(format!("{what} {}: {e}", path.display()))
}

/// Restores a snapshot into a new data dir (see the module docs); returns the new member's id
/// and the cluster id.
pub fn restore(opts: &RestoreOptions) -> Result<(u64, u64)> {
    if opts.bump_revision > 0 && !opts.mark_compacted
        || opts.bump_revision == 0 && opts.mark_compacted
    {
        return Err(Error::DataDir(
            "--mark-compacted required if --revision-bump > 0".into(),
        ));
    }
    let data_dir = &opts.config.data_dir;
    if data_dir.exists()
        && std::fs::read_dir(data_dir)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true)
    {
        return Err(Error::DataDir(format!(
            "data-dir \"{}\" not empty or could not be read",
            data_dir.display()
        )));
    }
    let src = File::open(&opts.snapshot).map_err(|e| io_err("cannot open", &opts.snapshot, e))?;
    let len = src
        .metadata()
        .map_err(|e| io_err("cannot stat", &opts.snapshot, e))?
        .len();
    let has_hash = len % 512 == SHA256_LEN as u64;
    if !has_hash && !opts.skip_hash_check {
        return Err(Error::DataDir(
            "snapshot missing hash but --skip-hash-check=false".into(),
        ));
    }
    let db_len = if has_hash {
        len - SHA256_LEN as u64
    } else {
        len
    };
    let existed = data_dir.exists();
    let out = restore_into(opts, src, db_len, has_hash);
    if out.is_err() {
        // Leave no half-restored data dir behind.
        if existed {
            if let Ok(entries) = std::fs::read_dir(data_dir) {
                for e in entries.flatten() {
                    let _ = std::fs::remove_dir_all(e.path());
                    let _ = std::fs::remove_file(e.path());
                }
            }
        } else {
            let _ = std::fs::remove_dir_all(data_dir);
        }
    }
    out
}

fn restore_into(
    opts: &RestoreOptions,
    mut src: File,
    db_len: u64,
    has_hash: bool,
) -> Result<(u64, u64)> {
    let data_dir = &opts.config.data_dir;
    std::fs::create_dir_all(data_dir.join("concord"))
        .map_err(|e| io_err("cannot create", data_dir, e))?;
    // The database part, copied out so that redb can open it.
    let staged = SnapshotFile {
        path: data_dir.join("concord").join("restore.tmp"),
    };
    {
        let mut out =
            File::create(staged.path()).map_err(|e| io_err("cannot create", staged.path(), e))?;
        let mut h = Sha256::new();
        let mut left = db_len;
        let mut buf = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = (buf.len() as u64).min(left) as usize;
            src.read_exact(&mut buf[..n])
                .map_err(|e| io_err("cannot read", &opts.snapshot, e))?;
            h.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(|e| io_err("cannot write", staged.path(), e))?;
            left -= n as u64;
        }
        if has_hash && !opts.skip_hash_check {
            let mut want = [0u8; SHA256_LEN];
            src.read_exact(&mut want)
                .map_err(|e| io_err("cannot read", &opts.snapshot, e))?;
            let got: [u8; SHA256_LEN] = h.finalize().into();
            if got != want {
                return Err(Error::DataDir(format!(
                    "expected sha256 {want:?}, got {got:?}"
                )));
            }
        }
        out.sync_all()
            .map_err(|e| io_err("cannot sync", staged.path(), e))?;
    }
    let snap = Database::open(staged.path()).map_err(|e| {
        Error::DataDir(format!(
            "{} is not a concord snapshot ({e}); a snapshot taken from etcd restores with \
             etcdutl, not concord",
            opts.snapshot.display()
        ))
    })?;
    let backend = Backend::open(data_dir)?;
    {
        let rtx = snap.begin_read()?;
        let meta = rtx.open_table(META).map_err(|e| {
            Error::DataDir(format!(
                "{} is not a concord snapshot: {e}",
                opts.snapshot.display()
            ))
        })?;
        let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
        let format = get(META_FORMAT_VERSION)?;
        if format != crate::backend::FORMAT_VERSION {
            return Err(Error::DataDir(format!(
                "{} has data format version {format}, this concord reads version {}",
                opts.snapshot.display(),
                crate::backend::FORMAT_VERSION
            )));
        }
        let mut current = get(META_CURRENT_REV)?.max(1);
        let mut compact = get(META_COMPACT_REV)?;
        if opts.bump_revision > 0 {
            current += opts.bump_revision;
            compact = current;
        }
        let wtx = backend.db().begin_write()?;
        copy_table(&rtx, &wtx, KV_REVS)?;
        copy_table(&rtx, &wtx, LEASES)?;
        copy_table(&rtx, &wtx, LEASE_KEYS)?;
        {
            let mut m = wtx.open_table(META)?;
            m.insert(META_CURRENT_REV, current)?;
            m.insert(META_COMPACT_REV, compact)?;
        }
        wtx.commit()?;
    }
    backend.load_index()?;
    drop(snap);
    drop(staged);
    let (member, cluster, _) = crate::embed::identity(&opts.config, &backend)?;
    Ok((member, cluster))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::{KeyInterval, ReadView, WriteTables};

    fn snapshot_bytes(b: &Backend) -> Vec<u8> {
        let f = create(b).unwrap();
        let mut bytes = std::fs::read(f.path()).unwrap();
        let sha: [u8; 32] = Sha256::digest(&bytes).into();
        bytes.extend_from_slice(&sha);
        bytes
    }

    #[test]
    fn snapshot_restores_keys_revisions_and_leases_into_a_new_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(&dir.path().join("old")).unwrap();
        let wtx = b.db().begin_write().unwrap();
        {
            let mut t = WriteTables::open(&wtx, b.index()).unwrap();
            crate::lease::grant(&mut t, 7, 100).unwrap();
            let mut w = t.begin();
            w.put(b"a", b"1".to_vec(), 7).unwrap();
            w.finish().unwrap();
            let mut w = t.begin();
            w.put(b"b", b"2".to_vec(), 0).unwrap();
            w.finish().unwrap();
        }
        wtx.commit().unwrap();
        let bytes = snapshot_bytes(&b);
        assert_eq!(bytes.len() % 512, 32);
        let file = dir.path().join("snap.db");
        std::fs::write(&file, &bytes).unwrap();

        let mut config = Config {
            data_dir: dir.path().join("new"),
            ..Config::default()
        };
        config.initial_cluster_token = "restored".into();
        let opts = RestoreOptions {
            snapshot: file.clone(),
            config,
            skip_hash_check: false,
            bump_revision: 0,
            mark_compacted: false,
        };
        let (member, cluster) = restore(&opts).unwrap();
        assert_ne!(member, 0);
        assert_ne!(cluster, 0);
        let nb = Backend::open(&opts.config.data_dir).unwrap();
        {
            let v = ReadView::open(&nb).unwrap();
            let r =
                crate::mvcc::KvRead::range_at(&v, &KeyInterval::From(b""), 3, 0, false).unwrap();
            assert_eq!(r.kvs.len(), 2);
            assert_eq!((r.kvs[0].value.as_slice(), r.kvs[0].lease), (&b"1"[..], 7));
            assert_eq!(crate::mvcc::KvRead::revs(&v).current, 3);
        }
        assert_eq!(
            crate::lease::committed_keys(&nb, 7).unwrap(),
            vec![b"a".to_vec()]
        );
        assert_eq!(crate::membership::list(&nb).unwrap().len(), 1);
        drop(nb);

        // A non-empty data dir is refused; so is a damaged file.
        assert!(
            restore(&opts)
                .unwrap_err()
                .to_string()
                .contains("not empty")
        );
        let mut bad = bytes.clone();
        bad[100] ^= 1;
        std::fs::write(&file, &bad).unwrap();
        let mut opts2 = opts.clone();
        opts2.config.data_dir = dir.path().join("new2");
        assert!(
            restore(&opts2)
                .unwrap_err()
                .to_string()
                .contains("expected sha256")
        );
        std::fs::write(&file, &bytes[..bytes.len() - 32]).unwrap();
        let err = restore(&opts2).unwrap_err().to_string();
        assert!(err.contains("snapshot missing hash"), "{err}");
    }
}
