//! Raft snapshots: members that fall behind the leader's compacted raft log catch up by a
//! snapshot of the leader's state, run with a short log (`--snapshot-count=100`,
//! `--experimental-snapshot-catchup-entries=20`) so a few hundred writes compact it:
//!
//! - a follower `kill -9`ed while the others take writes, a lease grant, a prefix delete and a
//!   compaction restarts and receives a snapshot; afterwards it serves every key at the
//!   leader's revision, its HashKV equals the others', a watch on it from the compaction
//!   revision sees the same events as one on the leader, an older revision is compacted, and
//!   once it leads, the lease granted while it was down is alive with its TTL. Run against
//!   concord and, as the reference, etcd 3.5.16, with the same assertions (both log
//!   "applied snapshot");
//! - (concord only, it needs the peer fault layer) a follower cut off from the others while
//!   they take writes installs a snapshot when the network heals, and a watch that stayed open
//!   on it all along delivers every revision once, in order, with no gap.
//!
//! The wiped member removed and re-added (`cluster.rs`) also catches up by snapshot. Test
//! names contain `cluster`, so nextest runs them one at a time.

mod support;

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use concord_tests::cluster::wait_for;
use concord_tests::{Cluster, ServerKind};
use etcd_client::{DeleteOptions, GetOptions, PutOptions, WatchOptions};
use support::{check_gapless, client, events_until, on_both, put_acked, runtime};

/// A short raft log: a snapshot every 100 entries, 20 entries kept after it.
const SHORT_LOG: &[&str] = &[
    "--snapshot-count=100",
    "--experimental-snapshot-catchup-entries=20",
];

/// Whether the member's log (stderr) says it applied a snapshot from the leader; concord and
/// etcd both log "applied snapshot". The line may trail the effects a client sees by a moment,
/// so this looks for a few seconds.
async fn applied_snapshot(member: &concord_tests::Server) -> Result<bool> {
    let path = member.stderr_path().to_owned();
    let found = wait_for("the log to say so", Duration::from_secs(5), || {
        let path = path.clone();
        async move {
            let log = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Ok(log.contains("applied snapshot").then_some(()))
        }
    })
    .await;
    Ok(found.is_ok())
}

/// `(revision, key)` of the watch events on `prefix` from `start` through `end`, read through
/// the member at `endpoint`.
async fn history(endpoint: &str, prefix: &str, start: i64, end: i64) -> Result<Vec<(i64, String)>> {
    let mut c = client(endpoint).await?;
    let mut stream = c
        .watch(
            prefix,
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await?;
    events_until(&mut stream, end).await
}

fn follower_behind_compacted_log(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start_with(kind, 3, SHORT_LOG)?;
    let eps = cluster.endpoints();
    let rt = runtime();
    let leader = rt.block_on(cluster.agreed_leader(&[0, 1, 2]))?;
    let f = (leader + 1) % 3;
    cluster.members[f].kill9()?;
    let (lease, rev, compact) = rt.block_on(async {
        let mut c = client(&eps[leader]).await?;
        let lease = c.lease_grant(600, None).await?.id();
        c.put(
            "/snap/leased",
            "v",
            Some(PutOptions::new().with_lease(lease)),
        )
        .await?;
        // 10 KB values: the state spans several snapshot chunks.
        for i in 0..300 {
            c.put(
                format!("/snap/{i:03}"),
                format!("{i}:{}", "x".repeat(10_000)),
                None,
            )
            .await?;
        }
        // 100 keys deleted in one revision.
        c.delete("/snap/0", Some(DeleteOptions::new().with_prefix()))
            .await?;
        for i in 0..30 {
            c.put(format!("/snap/{i:03}"), "again", None).await?;
        }
        let rev = put_acked(&mut c, "/snap/last", "v").await?;
        let compact = rev - 40;
        c.compact(compact, None).await?;
        Ok::<_, anyhow::Error>((lease, rev, compact))
    })?;

    cluster.members[f].restart()?;
    let fe = eps[f].clone();
    rt.block_on(async {
        // 1 leased + 200 left + 30 put again + last.
        wait_for(
            "the restarted follower to serve every key at the leader's revision",
            Duration::from_secs(60),
            || {
                let fe = fe.clone();
                async move {
                    let mut c = client(&fe).await?;
                    let r = c
                        .get(
                            "/snap/",
                            Some(
                                GetOptions::new()
                                    .with_prefix()
                                    .with_count_only()
                                    .with_serializable(),
                            ),
                        )
                        .await?;
                    let at = r.header().map_or(0, |h| h.revision());
                    Ok((r.count() == 232 && at == rev).then_some(()))
                }
            },
        )
        .await?;
        ensure!(
            applied_snapshot(&cluster.members[f]).await?,
            "the follower caught up without a snapshot; the log was not compacted"
        );

        let mut hashes = Vec::new();
        for ep in &eps {
            let h = client(ep).await?.hash_kv(rev).await?;
            hashes.push((h.hash(), h.compact_version()));
        }
        ensure!(
            hashes.iter().all(|h| *h == hashes[0]) && hashes[0].1 == compact,
            "HashKV at {rev} (hash, compact revision) per member: {hashes:?}"
        );

        let on_f = history(&fe, "/snap/", compact, rev).await?;
        let on_leader = history(&eps[leader], "/snap/", compact, rev).await?;
        ensure!(
            on_f == on_leader && !on_f.is_empty(),
            "events from {compact}: follower {on_f:?}\nleader {on_leader:?}"
        );
        let mut c = client(&fe).await?;
        let mut stream = c
            .watch(
                "/snap/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(compact - 1),
                ),
            )
            .await?;
        let mut r = tokio::time::timeout(Duration::from_secs(30), stream.message())
            .await
            .context("no answer to a watch on a compacted revision")??
            .context("watch stream closed")?;
        if r.created() && r.compact_revision() == 0 {
            // The compaction comes in the response after the one confirming the watch.
            r = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .context("no answer to a watch on a compacted revision")??
                .context("watch stream closed")?;
        }
        ensure!(
            r.compact_revision() == compact,
            "a watch from {} on the follower: compact revision {}, canceled {}",
            compact - 1,
            r.compact_revision(),
            r.canceled()
        );

        // The lease granted while it was down lives on when it leads.
        let f_id = c
            .status()
            .await?
            .header()
            .context("status header")?
            .member_id();
        client(&eps[leader]).await?.move_leader(f_id).await?;
        wait_for("the follower to lead", Duration::from_secs(30), || {
            let fe = fe.clone();
            async move {
                let s = client(&fe).await?.status().await?;
                Ok((s.leader() == f_id).then_some(()))
            }
        })
        .await?;
        let ttl = c.lease_time_to_live(lease, None).await?;
        ensure!(
            ttl.granted_ttl() == 600 && ttl.ttl() > 0,
            "the lease on the new leader: granted {} remaining {}",
            ttl.granted_ttl(),
            ttl.ttl()
        );
        Ok(())
    })
}

#[test]
fn cluster3_follower_behind_compacted_log_catches_up_by_snapshot_concord_and_etcd35() {
    on_both(follower_behind_compacted_log);
}

#[test]
fn cluster3_partitioned_follower_watch_survives_snapshot_install_concord() -> Result<()> {
    let cluster = Cluster::start_partitionable_with(3, SHORT_LOG)?;
    let eps = cluster.endpoints();
    let rt = runtime();
    rt.block_on(async {
        let leader = cluster.agreed_leader(&[0, 1, 2]).await?;
        let f = (leader + 1) % 3;
        let other = 3 - leader - f;
        let mut fc = client(&eps[f]).await?;
        let start = put_acked(&mut fc, "/cut/start", "x").await? + 1;
        let mut watch = fc
            .watch(
                "/cut/w/",
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await?;
        cluster.partition(&[&[f], &[leader, other]])?;
        let mut c = client(&eps[leader]).await?;
        let mut end = 0;
        for i in 0..300 {
            end = put_acked(&mut c, &format!("/cut/w/{i:03}"), "v").await?;
        }
        cluster.heal()?;
        let seen = events_until(&mut watch, end).await?;
        check_gapless("the cut-off follower's watcher", &seen, start, end)?;
        ensure!(
            applied_snapshot(&cluster.members[f]).await?,
            "the follower caught up without a snapshot; the log was not compacted"
        );
        Ok(())
    })
}
