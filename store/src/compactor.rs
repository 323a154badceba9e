//! Auto-compaction (`--auto-compaction-mode`, `--auto-compaction-retention`), as etcd 3.5's
//! `v3compactor` does it, run by the leader only.
//!
//! - Periodic: sample the current revision every tenth of the compaction interval (the
//!   retention, capped at one hour) and, once a full retention has passed, compact to the
//!   revision sampled one retention ago; then again every interval.
//! - Revision: every five minutes, compact to `current - retention` when that moved.
//!
//! Compaction itself is an ordinary `Compact` request through raft; this module only decides
//! when and to which revision, and never touches storage.

use std::future::Future;
use std::time::Duration;

use crate::error::{Error, Result};

/// How often the revision compactor looks (etcd's `revInterval`).
pub const REVISION_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// The retention policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Keep this much history by time.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

/// What the compactor needs from the server.
pub trait Target: Send + Sync {
    /// Current store revision.
    fn current_rev(&self) -> i64;
    /// Whether this member leads (only the leader compacts).
    fn is_leader(&self) -> bool;
    /// Proposes a compaction to `rev`.
    fn compact(&self, rev: i64) -> impl Future<Output = Result<()>> + Send;
}

/// Runs the compactor until the returned future is dropped.
pub async fn run(target: impl Target, policy: Policy) {
    match policy {
        Policy::Periodic(period) => periodic(target, period).await,
        Policy::Revision(keep) => revision(target, keep).await,
    }
}

async fn attempt(target: &impl Target, rev: i64, kind: &str) -> bool {
    tracing::info!(revision = rev, "starting auto {kind} compaction");
    match target.compact(rev).await {
        Ok(()) | Err(Error::Compacted) => {
            tracing::info!(revision = rev, "completed auto {kind} compaction");
            true
        }
        Err(e) => {
            tracing::warn!(revision = rev, error = %e, "failed auto {kind} compaction; will retry");
            false
        }
    }
}

async fn periodic(target: impl Target, period: Duration) {
    let interval = period.min(Duration::from_secs(3600));
    let retry = (interval / 10).max(Duration::from_millis(1));
    let keep = (period.as_nanos() / retry.as_nanos()) as usize + 1;
    let mut revs: std::collections::VecDeque<i64> = Default::default();
    let mut base = period;
    let mut last_success = tokio::time::Instant::now();
    loop {
        revs.push_back(target.current_rev());
        if revs.len() > keep {
            revs.pop_front();
        }
        tokio::time::sleep(retry).await;
        if !target.is_leader() || last_success.elapsed() < base {
            continue;
        }
        base = interval;
        let rev = revs[0];
        if attempt(&target, rev, "periodic").await {
            last_success = tokio::time::Instant::now();
        }
    }
}

async fn revision(target: impl Target, keep: i64) {
    let mut prev = 0;
    loop {
        tokio::time::sleep(REVISION_INTERVAL).await;
        let rev = target.current_rev() - keep;
        if rev <= 0 || rev == prev || !target.is_leader() {
            continue;
        }
        if attempt(&target, rev, "revision").await {
            prev = rev;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Fake {
        rev: Arc<Mutex<i64>>,
        compacted: Arc<Mutex<Vec<i64>>>,
    }

    impl Target for Fake {
        fn current_rev(&self) -> i64 {
            *self.rev.lock().unwrap()
        }
        fn is_leader(&self) -> bool {
            true
        }
        async fn compact(&self, rev: i64) -> Result<()> {
            self.compacted.lock().unwrap().push(rev);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn revision_mode_keeps_the_last_n_revisions() {
        let fake = Fake::default();
        *fake.rev.lock().unwrap() = 1000;
        let task = tokio::spawn(run(fake.clone(), Policy::Revision(100)));
        tokio::time::sleep(REVISION_INTERVAL + Duration::from_secs(1)).await;
        assert_eq!(*fake.compacted.lock().unwrap(), vec![900]);
        // No new writes: nothing new to compact.
        tokio::time::sleep(REVISION_INTERVAL).await;
        assert_eq!(*fake.compacted.lock().unwrap(), vec![900]);
        *fake.rev.lock().unwrap() = 1500;
        tokio::time::sleep(REVISION_INTERVAL).await;
        assert_eq!(*fake.compacted.lock().unwrap(), vec![900, 1400]);
        task.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn periodic_mode_compacts_to_the_revision_one_period_ago() {
        let fake = Fake::default();
        let period = Duration::from_secs(600);
        *fake.rev.lock().unwrap() = 10;
        let task = tokio::spawn(run(fake.clone(), Policy::Periodic(period)));
        // Revisions grow by 10 every minute (one sample interval).
        for i in 1..=10 {
            tokio::time::sleep(Duration::from_secs(60)).await;
            *fake.rev.lock().unwrap() = 10 + 10 * i;
        }
        tokio::time::sleep(Duration::from_secs(61)).await;
        let got = fake.compacted.lock().unwrap().clone();
        assert_eq!(
            got.first(),
            Some(&10),
            "first compaction targets the revision of one period ago: {got:?}"
        );
        task.abort();
    }
}
