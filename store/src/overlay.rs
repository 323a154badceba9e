//! The applied-but-uncommitted key-value versions, for readers (etcd's read buffer of the
//! backend's batch transaction).
//!
//! The raft loop applies entries into one redb write transaction that it keeps open across
//! Readies and commits only every `--backend-batch-interval` (100 ms by default, as etcd's) or
//! `--backend-batch-limit` entries, or sooner when an entry changed something other than the
//! key space. Readers cannot see an open transaction, so the loop publishes here, after each Ready, the versions it wrote and the store revisions they reached.
//! A reader takes the [`OverlayView`] first and begins its read transaction second: any version
//! missing from the view was committed before the view was replaced, so the transaction sees
//! it. The loop replaces the view with an empty one only after its commit returns.
//!
//! This module owns that hand-over and nothing else: what the versions mean is `mvcc`'s.

use std::ops::RangeInclusive;
use std::sync::{Arc, Mutex};

use crate::index::RevKey;
use crate::mvcc::Revs;

/// The versions one Ready wrote, in revision order, each as `KV_REVS` stores it.
pub type Chunk = Vec<(RevKey, Vec<u8>)>;

/// What readers see on top of the last commit: the store revisions as applied and the
/// versions written since that commit.
#[derive(Debug, Default)]
pub struct OverlayView {
    /// Current and compaction revisions as of the last applied entry.
    pub revs: Revs,
    /// Non-empty chunks in revision order (no two overlap).
    chunks: Vec<Arc<Chunk>>,
}

impl OverlayView {
    /// The stored bytes of version `rev`, when it is not committed yet.
    pub fn get(&self, rev: RevKey) -> Option<&[u8]> {
        // The first chunk whose last version is at or after `rev`.
        let i = self
            .chunks
            .partition_point(|c| c.last().is_some_and(|(k, _)| *k < rev));
        let chunk = self.chunks.get(i)?;
        chunk
            .binary_search_by(|(k, _)| k.cmp(&rev))
            .ok()
            .map(|j| chunk[j].1.as_slice())
    }

    /// The first uncommitted main revision, if any version is uncommitted: every version
    /// before it is in the committed tables.
    pub fn first_main(&self) -> Option<u64> {
        self.chunks
            .first()
            .and_then(|c| c.first())
            .map(|(k, _)| k.0)
    }

    /// The uncommitted versions whose main revision lies in `mains`, in revision order.
    pub fn rows(&self, mains: RangeInclusive<u64>) -> impl Iterator<Item = (RevKey, &[u8])> {
        let (start, end) = (*mains.start(), *mains.end());
        self.chunks
            .iter()
            .flat_map(|c| c.iter())
            .skip_while(move |(k, _)| k.0 < start)
            .take_while(move |(k, _)| k.0 <= end)
            .map(|(k, v)| (*k, v.as_slice()))
    }

    /// Number of Readies whose versions are not committed yet.
    #[cfg(test)]
    pub fn chunks(&self) -> usize {
        self.chunks.len()
    }
}

/// The current [`OverlayView`], replaced by the raft loop after every Ready.
#[derive(Debug, Default)]
pub struct Overlay {
    view: Mutex<Arc<OverlayView>>,
}

impl Overlay {
    /// The view readers should use, taken before their read transaction begins.
    pub fn view(&self) -> Arc<OverlayView> {
        self.lock().clone()
    }

    /// After a Ready applied into the open transaction: its versions (`rows`) join the view,
    /// and the revisions move on to `revs`. Returns how many chunks (Readies) the view holds.
    pub fn applied(&self, revs: Revs, rows: Chunk) -> usize {
        let mut view = self.lock();
        let mut chunks = view.chunks.clone();
        if !rows.is_empty() {
            chunks.push(Arc::new(rows));
        }
        let n = chunks.len();
        *view = Arc::new(OverlayView { revs, chunks });
        n
    }

    /// After the transaction holding every version of the view was committed (or when the
    /// tables were loaded): nothing is pending, and the store is at `revs`.
    pub fn committed(&self, revs: Revs) {
        *self.lock() = Arc::new(OverlayView {
            revs,
            chunks: Vec::new(),
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Arc<OverlayView>> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(main: u64, sub: u32) -> (RevKey, Vec<u8>) {
        ((main, sub), format!("{main}_{sub}").into_bytes())
    }

    #[test]
    fn lookups_span_chunks_and_commit_empties_the_view() {
        let o = Overlay::default();
        let revs = |current| Revs {
            current,
            compact: 0,
        };
        o.applied(revs(3), vec![row(2, 0), row(3, 0), row(3, 1)]);
        o.applied(revs(3), vec![]);
        o.applied(revs(5), vec![row(5, 0)]);
        let v = o.view();
        assert_eq!(v.revs.current, 5);
        assert_eq!(v.chunks(), 2);
        assert_eq!(v.first_main(), Some(2));
        assert_eq!(v.get((3, 1)), Some(&b"3_1"[..]));
        assert_eq!(v.get((5, 0)), Some(&b"5_0"[..]));
        assert_eq!(v.get((4, 0)), None);
        assert_eq!(v.get((1, 0)), None);
        assert_eq!(v.get((6, 0)), None);
        let mains: Vec<RevKey> = v.rows(3..=5).map(|(k, _)| k).collect();
        assert_eq!(mains, vec![(3, 0), (3, 1), (5, 0)]);
        assert_eq!(v.rows(6..=9).count(), 0);
        o.committed(revs(5));
        // A reader holding the old view still sees its versions.
        assert_eq!(v.get((2, 0)), Some(&b"2_0"[..]));
        let now = o.view();
        assert_eq!(
            (now.revs.current, now.first_main(), now.get((2, 0))),
            (5, None, None)
        );
    }
}
