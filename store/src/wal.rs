//! The raft log on disk: an append-only write-ahead log in segment files
//! (`<data-dir>/concord/wal/<seq>.wal`, 16 hex digits), written only by the raft loop.
//!
//! Each write appends records to the newest segment with one `write` and, when raft needs it,
//! one `fdatasync`: far cheaper than a B-tree commit, which rewrites scattered pages. A record is
//! `[length u32][checksum u32][kind u8][payload]` (little-endian; the checksum is the first four
//! bytes of the SHA-256 of kind and payload). Kinds:
//!
//! - entries: a batch of `eraftpb.Entry` (raft-rs's protobuf codec), each `[length u32][bytes]`;
//!   a batch starting at index `i` replaces every entry from `i` on (a new leader's entries
//!   overwrite a conflicting tail);
//! - hard state: the latest `eraftpb.HardState`;
//! - compact: an `eraftpb.SnapshotMetadata`; entries up to its index are gone;
//! - reset: the same, after a snapshot install; every entry is gone.
//!
//! Replay reads the segments in order; a record cut short or damaged ends the newest segment
//! (a write torn by a crash, never acknowledged) and is zeroed out. A segment grows to
//! [`SEGMENT_BYTES`], then the next one starts with the current hard state and compaction point,
//! so older segments hold nothing but entries and can be deleted once compaction passes them.
//!
//! Each segment's blocks are allocated up front (`fallocate`, as etcd preallocates its WAL
//! files), so an append does not grow the file: `fdatasync` then writes the data alone, not the
//! inode's new size as well, which on this kind of disk nearly halves its time. The unwritten
//! rest of a segment reads as zeros, and a zero record length ends its records.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use protobuf::Message as PbMessage;
use raft::prelude::{Entry, HardState, SnapshotMetadata};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A segment stops taking records once it is this large.
pub const SEGMENT_BYTES: u64 = 64 << 20;

const KIND_ENTRIES: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_COMPACT: u8 = 3;
const KIND_RESET: u8 = 4;
const HEADER: usize = 8;

/// What replaying the log found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// The log starts after this point (index 0: from the beginning).
    pub point: SnapshotMetadata,
    /// The entries after `point`, in index order.
    pub entries: Vec<Entry>,
    pub hard_state: HardState,
}

/// The open log.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    file: File,
    seq: u64,
    len: u64,
    /// The highest entry index the current segment holds (0: none).
    last_in_segment: u64,
    /// Older segments: (sequence number, highest entry index in it).
    older: Vec<(u64, u64)>,
    hard_state: HardState,
    point: SnapshotMetadata,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> Error {
    Error::Storage(format!("cannot {what} {}: {e}", path.display()))
}

fn encode<M: PbMessage>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| Error::Storage(format!("cannot encode a raft log record: {e}")))
}

fn decode<M: PbMessage>(b: &[u8]) -> Result<M> {
    M::parse_from_bytes(b).map_err(|e| Error::Storage(format!("corrupt raft log record: {e}")))
}

fn checksum(body: &[u8]) -> u32 {
    let d = Sha256::digest(body);
    u32::from_le_bytes([d[0], d[1], d[2], d[3]])
}

fn push_record(buf: &mut Vec<u8>, kind: u8, payload: &[u8]) {
    let mut body = Vec::with_capacity(1 + payload.len());
    body.push(kind);
    body.extend_from_slice(payload);
    buf.extend_from_slice(&(body.len() as u32).to_le_bytes());
    buf.extend_from_slice(&checksum(&body).to_le_bytes());
    buf.extend_from_slice(&body);
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.wal"))
}

/// Allocates `file`'s blocks up to `bytes` (growing its size to that) so that appends within
/// it change no metadata. A file system that cannot (`EOPNOTSUPP`) just goes without.
fn preallocate(file: &File, bytes: u64, path: &Path) {
    let Ok(len) = i64::try_from(bytes) else {
        return;
    };
    if let Err(e) = nix::fcntl::fallocate(file, nix::fcntl::FallocateFlags::empty(), 0, len) {
        tracing::debug!(segment = %path.display(), error = %e, "cannot preallocate a raft log segment");
    }
}

/// The records of one segment: (kind, payload) of each whole one, and the length they cover.
fn records(data: &[u8]) -> (Vec<(u8, &[u8])>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while data.len() >= at + HEADER {
        let len = u32::from_le_bytes(data[at..at + 4].try_into().expect("4 bytes")) as usize;
        let sum = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes"));
        let Some(body) = data.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if len == 0 || checksum(body) != sum {
            break;
        }
        out.push((body[0], &body[1..]));
        at += HEADER + len;
    }
    (out, at)
}

impl Wal {
    /// Opens (or creates) the log in `dir` and replays it.
    pub fn open(dir: &Path) -> Result<(Wal, Recovered)> {
        Wal::open_with(dir, SEGMENT_BYTES)
    }

    fn open_with(dir: &Path, segment_bytes: u64) -> Result<(Wal, Recovered)> {
        std::fs::create_dir_all(dir).map_err(|e| io("create", dir, e))?;
        let mut seqs = Vec::new();
        for e in std::fs::read_dir(dir).map_err(|e| io("list", dir, e))? {
            let e = e.map_err(|e| io("list", dir, e))?;
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(seq) = name
                .strip_suffix(".wal")
                .and_then(|s| u64::from_str_radix(s, 16).ok())
            {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();
        let mut rec = Recovered::default();
        let mut older = Vec::new();
        let mut last = (1, 0, 0);
        for (i, &seq) in seqs.iter().enumerate() {
            let path = segment_path(dir, seq);
            let newest = i + 1 == seqs.len();
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                // Listed, then gone: an older segment a compaction or reset of this process was
                // still deleting (`remove_in_background`); it held nothing still needed.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !newest => continue,
                Err(e) => return Err(io("read", &path, e)),
            };
            let (found, valid) = records(&data);
            // After the records: the preallocated rest (zeros), or a torn write.
            let torn_end = data[valid..]
                .iter()
                .rposition(|&b| b != 0)
                .map(|at| valid + at + 1);
            if torn_end.is_some() && !newest {
                return Err(Error::Storage(format!(
                    "{} is damaged at byte {valid}; the member's raft log cannot be read. \
                     Remove the member, wipe its data dir and add it again",
                    path.display()
                )));
            }
            let mut highest = 0;
            for (kind, payload) in found {
                match kind {
                    KIND_ENTRIES => {
                        let mut at = 0;
                        while at + 4 <= payload.len() {
                            let n = u32::from_le_bytes(payload[at..at + 4].try_into().expect("4"))
                                as usize;
                            let e: Entry = decode(&payload[at + 4..at + 4 + n])?;
                            at += 4 + n;
                            let keep = rec.entries.partition_point(|x| x.index < e.index);
                            rec.entries.truncate(keep);
                            highest = highest.max(e.index);
                            rec.entries.push(e);
                        }
                    }
                    KIND_HARD_STATE => rec.hard_state = decode(payload)?,
                    KIND_COMPACT => {
                        rec.point = decode(payload)?;
                        let p = rec.point.index;
                        rec.entries.retain(|x| x.index > p);
                    }
                    KIND_RESET => {
                        rec.point = decode(payload)?;
                        rec.entries.clear();
                    }
                    other => {
                        return Err(Error::Storage(format!(
                            "{} holds a record of unknown kind {other}",
                            path.display()
                        )));
                    }
                }
            }
            if newest {
                last = (seq, valid as u64, highest);
                if let Some(end) = torn_end {
                    tracing::warn!(
                        segment = %path.display(),
                        cut_bytes = end - valid,
                        "cutting a torn record off the end of the raft log (a write interrupted \
                         by a crash, never acknowledged)"
                    );
                    zero(&path, valid as u64, end - valid)?;
                }
            } else {
                older.push((seq, highest));
            }
        }
        let (seq, len, last_in_segment) = last;
        let path = segment_path(dir, seq);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| io("open", &path, e))?;
        let size = file.metadata().map_err(|e| io("stat", &path, e))?.len();
        if size < segment_bytes {
            preallocate(&file, segment_bytes, &path);
        }
        if seqs.is_empty() {
            sync_dir(dir)?;
        }
        let mut wal = Wal {
            dir: dir.to_owned(),
            segment_bytes,
            file,
            seq,
            len,
            last_in_segment,
            older,
            hard_state: rec.hard_state.clone(),
            point: rec.point.clone(),
        };
        wal.seek_end()?;
        Ok((wal, rec))
    }

    fn seek_end(&mut self) -> Result<()> {
        use std::io::Seek;
        let path = segment_path(&self.dir, self.seq);
        self.file
            .seek(std::io::SeekFrom::Start(self.len))
            .map_err(|e| io("seek", &path, e))?;
        Ok(())
    }

    /// Appends `entries` and the hard state `hs`; with `sync`, durable on return.
    pub fn append(&mut self, entries: &[Entry], hs: Option<&HardState>, sync: bool) -> Result<()> {
        let mut buf = Vec::new();
        if !entries.is_empty() {
            let mut payload = Vec::new();
            for e in entries {
                let b = encode(e)?;
                payload.extend_from_slice(&(b.len() as u32).to_le_bytes());
                payload.extend_from_slice(&b);
            }
            push_record(&mut buf, KIND_ENTRIES, &payload);
        }
        if let Some(hs) = hs {
            push_record(&mut buf, KIND_HARD_STATE, &encode(hs)?);
            self.hard_state = hs.clone();
        }
        if buf.is_empty() {
            return Ok(());
        }
        if self.len > 0 && self.len + buf.len() as u64 > self.segment_bytes {
            self.rotate()?;
        }
        self.write(&buf, sync)?;
        if let Some(e) = entries.last() {
            self.last_in_segment = e.index;
        }
        Ok(())
    }

    /// Entries up to `point.index` are gone (raft log compaction); deletes the oldest segments
    /// as long as they held only those (a prefix, so replay never loses a later segment's
    /// overwrite of an earlier one's tail). Durable on return.
    pub fn compact(&mut self, point: &SnapshotMetadata) -> Result<()> {
        self.mark(KIND_COMPACT, point)?;
        let gone = self
            .older
            .iter()
            .take_while(|&&(_, highest)| highest <= point.index)
            .count();
        let paths: Vec<PathBuf> = self
            .older
            .drain(..gone)
            .map(|(seq, _)| segment_path(&self.dir, seq))
            .collect();
        remove_in_background(paths);
        Ok(())
    }

    /// Every entry is gone and the log continues after `point` (a snapshot was installed);
    /// deletes the older segments. Durable on return.
    pub fn reset(&mut self, point: &SnapshotMetadata) -> Result<()> {
        self.mark(KIND_RESET, point)?;
        let paths = std::mem::take(&mut self.older)
            .into_iter()
            .map(|(seq, _)| segment_path(&self.dir, seq))
            .collect();
        remove_in_background(paths);
        self.last_in_segment = 0;
        Ok(())
    }

    fn mark(&mut self, kind: u8, point: &SnapshotMetadata) -> Result<()> {
        let mut point = point.clone();
        point.clear_conf_state();
        let mut buf = Vec::new();
        push_record(&mut buf, kind, &encode(&point)?);
        self.point = point;
        self.write(&buf, true)
    }

    fn write(&mut self, buf: &[u8], sync: bool) -> Result<()> {
        let path = segment_path(&self.dir, self.seq);
        self.file
            .write_all(buf)
            .map_err(|e| io("write", &path, e))?;
        self.len += buf.len() as u64;
        if sync {
            self.file.sync_data().map_err(|e| io("sync", &path, e))?;
        }
        Ok(())
    }

    /// Starts the next segment with the hard state and compaction point, so that older
    /// segments hold nothing else that is needed.
    fn rotate(&mut self) -> Result<()> {
        let path = segment_path(&self.dir, self.seq);
        self.file.sync_data().map_err(|e| io("sync", &path, e))?;
        self.older.push((self.seq, self.last_in_segment));
        self.seq += 1;
        let path = segment_path(&self.dir, self.seq);
        self.file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&path)
            .map_err(|e| io("create", &path, e))?;
        preallocate(&self.file, self.segment_bytes, &path);
        self.len = 0;
        self.last_in_segment = 0;
        let mut buf = Vec::new();
        push_record(&mut buf, KIND_HARD_STATE, &encode(&self.hard_state)?);
        push_record(&mut buf, KIND_COMPACT, &encode(&self.point)?);
        self.write(&buf, true)?;
        sync_dir(&self.dir)
    }
}

/// Overwrites `len` bytes at `at` of the file at `path` with zeros, durably.
fn zero(path: &Path, at: u64, len: usize) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| io("open", path, e))?;
    file.write_all_at(&vec![0; len], at)
        .map_err(|e| io("write", path, e))?;
    file.sync_data().map_err(|e| io("sync", path, e))
}

/// Deletes segments that compaction passed, off the raft loop: unlinking a written 64 MiB file
/// takes ~15 ms (its cached pages are dropped), which would stall every request behind it. A
/// segment left behind by a crash is harmless: replay skips what the compaction point covers.
fn remove_in_background(paths: Vec<PathBuf>) {
    if paths.is_empty() {
        return;
    }
    let remove = move || {
        for p in paths {
            if let Err(e) = std::fs::remove_file(&p) {
                tracing::warn!(segment = %p.display(), error = %e, "cannot delete a compacted raft log segment");
            }
        }
    };
    if let Err(e) = std::thread::Builder::new()
        .name("wal-remove".into())
        .spawn(remove)
    {
        tracing::warn!(error = %e, "cannot start a thread to delete compacted raft log segments");
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("sync", dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            data: vec![index as u8; 100].into(),
            ..Default::default()
        }
    }

    fn indexes(r: &Recovered) -> Vec<(u64, u64)> {
        r.entries.iter().map(|e| (e.index, e.term)).collect()
    }

    #[test]
    fn replays_entries_hard_state_and_conflicting_tails() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, r) = Wal::open(dir.path()).unwrap();
            assert!(r.entries.is_empty());
            let hs = HardState {
                term: 2,
                vote: 1,
                commit: 2,
                ..Default::default()
            };
            w.append(&[entry(1, 1), entry(2, 1), entry(3, 1)], Some(&hs), true)
                .unwrap();
            // A new leader overwrites index 3 onwards.
            w.append(&[entry(3, 2), entry(4, 2)], None, true).unwrap();
        }
        let (_, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&r), vec![(1, 1), (2, 1), (3, 2), (4, 2)]);
        assert_eq!((r.hard_state.term, r.hard_state.commit), (2, 2));
    }

    #[test]
    fn a_torn_tail_is_cut_and_writing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open(dir.path()).unwrap();
            w.append(&[entry(1, 1), entry(2, 1)], None, true).unwrap();
        }
        let seg = segment_path(dir.path(), 1);
        let data = std::fs::read(&seg).unwrap();
        // Preallocated: the records, then zeros to the segment's size.
        assert_eq!(data.len() as u64, SEGMENT_BYTES);
        let (_, whole) = records(&data);
        assert!(data[whole..].iter().all(|&b| b == 0));
        let mut extra = Vec::new();
        push_record(&mut extra, KIND_ENTRIES, &[9; 40]);
        {
            use std::os::unix::fs::FileExt;
            let f = OpenOptions::new().write(true).open(&seg).unwrap();
            f.write_all_at(&extra[..20], whole as u64).unwrap();
        }
        {
            let (mut w, r) = Wal::open(dir.path()).unwrap();
            assert_eq!(indexes(&r), vec![(1, 1), (2, 1)]);
            let data = std::fs::read(&seg).unwrap();
            assert!(
                data[whole..].iter().all(|&b| b == 0),
                "the torn bytes are zeroed"
            );
            w.append(&[entry(3, 1)], None, true).unwrap();
        }
        let (_, r) = Wal::open(dir.path()).unwrap();
        assert_eq!(indexes(&r), vec![(1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn segments_rotate_and_compaction_deletes_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let hs = HardState {
            term: 1,
            commit: 30,
            ..Default::default()
        };
        {
            let (mut w, _) = Wal::open_with(dir.path(), 1000).unwrap();
            for i in 1..=30 {
                w.append(&[entry(i, 1)], Some(&hs), false).unwrap();
            }
            assert!(w.older.len() > 2, "{} older segments", w.older.len());
            let point = SnapshotMetadata {
                index: 20,
                term: 1,
                ..Default::default()
            };
            w.compact(&point).unwrap();
            assert!(w.older.iter().all(|&(_, h)| h > 20));
        }
        let (_, r) = Wal::open_with(dir.path(), 1000).unwrap();
        assert_eq!(r.point.index, 20);
        assert_eq!(indexes(&r), (21..=30).map(|i| (i, 1)).collect::<Vec<_>>());
        assert_eq!(r.hard_state.commit, 30);
    }

    #[test]
    fn reset_drops_every_entry() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut w, _) = Wal::open_with(dir.path(), 500).unwrap();
            for i in 1..=10 {
                w.append(&[entry(i, 1)], None, true).unwrap();
            }
            let point = SnapshotMetadata {
                index: 50,
                term: 3,
                ..Default::default()
            };
            w.reset(&point).unwrap();
            w.append(&[entry(51, 3)], None, true).unwrap();
        }
        let (_, r) = Wal::open_with(dir.path(), 500).unwrap();
        assert_eq!((r.point.index, r.point.term), (50, 3));
        assert_eq!(indexes(&r), vec![(51, 3)]);
    }
}
