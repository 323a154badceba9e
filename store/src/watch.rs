//! The watch hub: where committed changes become watch events.
//!
//! The raft loop publishes each committed batch of events (with their previous versions) after
//! the transaction that made them is committed. The hub keeps the most recent events in a
//! bounded in-memory ring and announces the new revision on a `watch` channel. A watcher reads
//! forward from its next revision: from the ring when it covers that revision, otherwise from
//! the versions on disk (`KV_REVS`, in revision order). So events arrive in revision order,
//! each once, without gaps; a slow watcher falls back to disk instead of holding memory; and
//! publishing never blocks on watchers.
//!
//! This module never decides what a client sees (filters, fragments, headers): `api::watch` does.

use std::collections::VecDeque;
use std::ops::Bound;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use redb::ReadableDatabase;
use tokio::sync::watch;

use crate::backend::{Backend, KV_REVS, META, META_COMPACT_REV, META_CURRENT_REV};
use crate::error::{Error, Result};
use crate::index::RevKey;
use crate::mvcc::{KeyInterval, Revs, decode_stored};
use crate::proto::mvccpb::{Event, event::EventType};

/// Events kept in memory for watchers that are close to the head.
const RING_EVENTS: usize = 32 * 1024;
/// Revisions read in one step (etcd's `watchBatchMaxRevs`).
const BATCH_REVS: i64 = 1000;

struct Ring {
    /// `(revision, event)` in revision order.
    events: VecDeque<(i64, Arc<Event>)>,
    /// Every event with revision `>= first_rev` is in `events`.
    first_rev: i64,
}

/// Fan-out point between the apply path and the watchers.
pub struct WatchHub {
    backend: Arc<Backend>,
    ring: Mutex<Ring>,
    rev: watch::Sender<i64>,
    /// Revision of the last compaction, as of the last publish.
    compact: AtomicI64,
}

/// A watcher's key filter.
#[derive(Debug, Clone)]
pub struct KeyFilter {
    key: Vec<u8>,
    end: Vec<u8>,
}

impl KeyFilter {
    /// etcd's watch range: `end` empty = one key, `"\0"` = every key from `key`.
    pub fn new(key: Vec<u8>, end: Vec<u8>) -> Self {
        KeyFilter { key, end }
    }

    pub fn matches(&self, k: &[u8]) -> bool {
        KeyInterval::new(&self.key, &self.end).contains(k)
    }
}

impl WatchHub {
    /// A hub whose head is the backend's current revision.
    pub fn new(backend: Arc<Backend>) -> Result<Arc<WatchHub>> {
        let current = backend.read_meta(META_CURRENT_REV)? as i64;
        let compact = backend.read_meta(META_COMPACT_REV)? as i64;
        Ok(Arc::new(WatchHub {
            backend,
            ring: Mutex::new(Ring {
                events: VecDeque::new(),
                first_rev: current + 1,
            }),
            rev: watch::channel(current).0,
            compact: AtomicI64::new(compact),
        }))
    }

    /// Publishes committed events; `revs` are the store's revisions after them.
    pub fn publish(&self, events: Vec<Event>, revs: Revs) {
        let current = revs.current;
        self.compact.store(revs.compact, Ordering::Release);
        if !events.is_empty() {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            for e in events {
                let rev = e.kv.as_ref().map_or(current, |kv| kv.mod_revision);
                ring.events.push_back((rev, Arc::new(e)));
            }
            while ring.events.len() > RING_EVENTS {
                // Evict whole revisions so `first_rev` stays exact.
                let Some((rev, _)) = ring.events.pop_front() else {
                    break;
                };
                while ring.events.front().is_some_and(|(r, _)| *r == rev) {
                    ring.events.pop_front();
                }
                ring.first_rev = rev + 1;
            }
        }
        self.rev.send_if_modified(|r| {
            let changed = *r != current;
            *r = current;
            changed
        });
    }

    /// The store was replaced by a raft snapshot at revisions `revs`: the events between the
    /// old head and the new one exist only on disk, so the ring starts over after the new head
    /// and watchers behind it catch up from disk (or learn their revision was compacted), as
    /// etcd's watchable store moves its synced watchers to unsynced on restore.
    pub fn reset(&self, revs: Revs) {
        {
            let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            ring.events.clear();
            ring.first_rev = revs.current + 1;
        }
        self.publish(Vec::new(), revs);
    }

    /// The last compaction revision as of the last publish.
    pub fn compact_rev(&self) -> i64 {
        self.compact.load(Ordering::Acquire)
    }

    /// The store revision as of the last publish.
    pub fn current_rev(&self) -> i64 {
        *self.rev.borrow()
    }

    /// A receiver that changes whenever the revision moves.
    pub fn subscribe(&self) -> watch::Receiver<i64> {
        self.rev.subscribe()
    }

    /// Events with revision in `[from, current]` that pass `keep`, read from memory or disk;
    /// returns them and the next revision to read from. Reads at most about
    /// [`BATCH_REVS`] revisions from disk per call. Fails with [`Error::Compacted`] when
    /// `from` is older than the last compaction.
    pub fn read(&self, from: i64, keep: &dyn Fn(&Event) -> bool) -> Result<(Vec<Arc<Event>>, i64)> {
        let current = self.current_rev();
        if from < self.compact.load(Ordering::Acquire) {
            return Err(Error::Compacted);
        }
        if from > current {
            return Ok((Vec::new(), from));
        }
        {
            let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
            if ring.first_rev <= from {
                // At most BATCH_REVS revisions per read, as etcd's watchBatchMaxRevs, so a
                // watcher that fell behind catches up in bounded responses.
                let to = current.min(from + BATCH_REVS - 1);
                let start = ring.events.partition_point(|(r, _)| *r < from);
                let out = ring
                    .events
                    .range(start..)
                    .take_while(|(r, _)| *r <= to)
                    .filter(|(_, e)| keep(e))
                    .map(|(_, e)| e.clone())
                    .collect();
                return Ok((out, to + 1));
            }
        }
        self.read_disk(from, current, keep)
    }

    fn read_disk(
        &self,
        from: i64,
        current: i64,
        keep: &dyn Fn(&Event) -> bool,
    ) -> Result<(Vec<Arc<Event>>, i64)> {
        // The overlay before the transaction (see `overlay`): versions below its first one
        // are committed, so the transaction has them.
        let overlay = self.backend.overlay().view();
        let rtx = self.backend.db().begin_read()?;
        let compact = rtx
            .open_table(META)?
            .get(META_COMPACT_REV)?
            .map(|v| v.value())
            .unwrap_or(0) as i64;
        if from < compact.max(overlay.revs.compact) {
            return Err(Error::Compacted);
        }
        let to = current.min(from + BATCH_REVS - 1);
        let table = rtx.open_table(KV_REVS)?;
        let index = self.backend.index();
        let mut out = Vec::new();
        let mut add = |rev: u64, bytes: &[u8]| -> Result<()> {
            let kv = decode_stored(rev, bytes)?;
            let kind = if kv.version > 0 {
                EventType::Put
            } else {
                EventType::Delete
            };
            // The previous version: the newest one of this key before `rev`, unless deleted.
            // The index holds it as long as it is not compacted, and then so does the view.
            let prev = match index.newest_at(&kv.key, rev - 1) {
                Some(p) if !p.tombstone => crate::mvcc::load_opt(&table, Some(&overlay), p)?,
                _ => None,
            };
            let e = Event {
                r#type: kind as i32,
                kv: Some(kv),
                prev_kv: prev,
            };
            if keep(&e) {
                out.push(Arc::new(e));
            }
            Ok(())
        };
        let (from, to) = (from as u64, to as u64);
        let split = overlay.first_main().unwrap_or(u64::MAX);
        if from < split {
            let lo = Bound::Included((from, 0u32));
            let hi = Bound::Included((to.min(split - 1), u32::MAX));
            for item in table.range::<RevKey>((lo, hi))? {
                let (k, v) = item?;
                add(k.value().0, v.value())?;
            }
        }
        for (k, v) in overlay.rows(from.max(split)..=to) {
            add(k.0, v)?;
        }
        Ok((out, to as i64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mvcc::WriteTables;

    fn write(b: &Backend, hub: &WatchHub, f: impl FnOnce(&mut WriteTables<'_>)) {
        let wtx = b.db().begin_write().unwrap();
        let (events, revs) = {
            let mut t = WriteTables::open(&wtx, b.index()).unwrap();
            f(&mut t);
            (t.take_events(), t.revs())
        };
        wtx.commit().unwrap();
        hub.publish(events, revs);
    }

    fn put(t: &mut WriteTables<'_>, k: &str, v: &str) {
        let mut w = t.begin();
        w.put(k.as_bytes(), v.as_bytes().to_vec(), 0).unwrap();
        w.finish().unwrap();
    }

    fn summary(events: &[Arc<Event>]) -> Vec<(i32, String, i64, Option<String>)> {
        events
            .iter()
            .map(|e| {
                let kv = e.kv.as_ref().unwrap();
                (
                    e.r#type,
                    String::from_utf8(kv.key.clone()).unwrap(),
                    kv.mod_revision,
                    e.prev_kv
                        .as_ref()
                        .map(|p| String::from_utf8(p.value.clone()).unwrap()),
                )
            })
            .collect()
    }

    #[test]
    fn memory_and_disk_reads_agree() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(Backend::open(dir.path()).unwrap());
        // History written before the hub existed is only on disk.
        {
            let wtx = b.db().begin_write().unwrap();
            {
                let mut t = WriteTables::open(&wtx, b.index()).unwrap();
                put(&mut t, "a", "1");
                put(&mut t, "b", "1");
            }
            wtx.commit().unwrap();
        }
        let hub = WatchHub::new(b.clone()).unwrap();
        write(&b, &hub, |t| {
            put(t, "a", "2");
            let mut w = t.begin();
            w.delete_range(&KeyInterval::Point(b"b")).unwrap();
            w.finish().unwrap();
        });
        let all = |_: &Event| true;
        let want = vec![
            (0, "a".to_string(), 2, None),
            (0, "b".to_string(), 3, None),
            (0, "a".to_string(), 4, Some("1".to_string())),
            (1, "b".to_string(), 5, Some("1".to_string())),
        ];
        // Revision 2 is older than the ring (which starts at 4): read from disk.
        let (events, next) = hub.read(2, &all).unwrap();
        assert_eq!((summary(&events), next), (want.clone(), 6));
        // From the ring.
        let (events, next) = hub.read(4, &all).unwrap();
        assert_eq!((summary(&events), next), (want[2..].to_vec(), 6));
        // The same revisions from disk alone, with their previous versions.
        let (events, _) = hub.read_disk(4, 5, &all).unwrap();
        assert_eq!(summary(&events), want[2..]);
        let only_a = |e: &Event| e.kv.as_ref().is_some_and(|kv| kv.key == b"a");
        assert_eq!(hub.read(4, &only_a).unwrap().0.len(), 1);
    }

    #[test]
    fn disk_reads_include_versions_not_committed_yet() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(Backend::open(dir.path()).unwrap());
        let hub = WatchHub::new(b.clone()).unwrap();
        write(&b, &hub, |t| put(t, "a", "1"));
        // As the raft loop does: apply into a transaction it keeps open, and publish what it
        // wrote in the overlay.
        let wtx = b.db().begin_write().unwrap();
        {
            let mut t = WriteTables::open(&wtx, b.index()).unwrap();
            put(&mut t, "a", "2");
            put(&mut t, "b", "1");
            b.overlay().applied(t.revs(), t.take_rows());
        }
        let all = |_: &Event| true;
        let want = vec![
            (0, "a".to_string(), 2, None),
            (0, "a".to_string(), 3, Some("1".to_string())),
            (0, "b".to_string(), 4, None),
        ];
        let (events, next) = hub.read_disk(2, 4, &all).unwrap();
        assert_eq!((summary(&events), next), (want.clone(), 5));
        let view = crate::mvcc::ReadView::open(&b).unwrap();
        assert_eq!(crate::mvcc::KvRead::revs(&view).current, 4);
        let r = crate::mvcc::KvRead::range_at(&view, &KeyInterval::From(b""), 4, 0, false).unwrap();
        let values: Vec<&[u8]> = r.kvs.iter().map(|kv| kv.value.as_slice()).collect();
        assert_eq!(values, vec![&b"2"[..], &b"1"[..]]);
        drop(view);
        // Once committed, the overlay is emptied and the tables answer the same.
        wtx.commit().unwrap();
        b.overlay().committed(crate::mvcc::Revs {
            current: 4,
            compact: 0,
        });
        let (events, _) = hub.read_disk(3, 4, &all).unwrap();
        assert_eq!(summary(&events), want[1..]);
    }

    #[test]
    fn compacted_history_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let b = Arc::new(Backend::open(dir.path()).unwrap());
        let hub = WatchHub::new(b.clone()).unwrap();
        write(&b, &hub, |t| {
            put(t, "a", "1");
            put(t, "a", "2");
            put(t, "a", "3");
            t.compact(3).unwrap();
        });
        assert!(matches!(hub.read(2, &|_| true), Err(Error::Compacted)));
        assert!(matches!(
            hub.read_disk(2, 4, &|_| true),
            Err(Error::Compacted)
        ));
        assert_eq!(hub.read_disk(3, 4, &|_| true).unwrap().0.len(), 2);
    }
}
