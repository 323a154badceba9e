//! Watches and leases across a leader `kill -9`, through an independent client (the
//! `etcd-client` crate) and etcdctl, each run against a 3-member concord cluster and, as the
//! reference, a 3-member etcd 3.5.16 cluster with the same assertions:
//!
//! - a watch served by a follower keeps flowing when the leader dies, and a watch that was on
//!   the leader resumes on another member from its last revision + 1; both see every revision
//!   exactly once, in order, with no gap, including every acknowledged put;
//! - a lease granted and kept alive through followers (forwarded to the leader) outlives its
//!   TTL while kept alive; once keep-alives stop and the leader is killed, its keys are deleted
//!   no earlier than TTL after the last keep-alive, all in one revision, exactly once (the old
//!   leader restarted adds no second delete);
//! - a watch opened with `hasleader` (require leader) on a member left alone ends with
//!   Unavailable "etcdserver: no leader" once it has had no leader for three election timeouts.
//!
//! Every wait is on a condition with a generous deadline; the only time assertion is the
//! "never early" bound. Test names contain `cluster`, so nextest runs them one at a time.

mod support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use concord_tests::{Cluster, Etcdctl, ServerKind};
use etcd_client::{
    Client, ConnectOptions, EventType, LeaseTimeToLiveOptions, PutOptions, WatchOptions,
};
use support::{
    check_gapless, client, events_until, events_until_broken, on_both, put_acked, runtime,
};

const WATCH_PREFIX: &str = "/failover/w/";

fn watch_survives_leader_kill9(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start(kind, 3)?;
    let eps = cluster.endpoints();
    runtime().block_on(async {
        let leader = cluster.agreed_leader(&[0, 1, 2]).await?;
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut fc = client(&eps[followers[0]]).await?;
        let start = put_acked(&mut fc, "/failover/start", "x").await? + 1;
        let opts = || WatchOptions::new().with_prefix().with_start_revision(start);
        let mut on_follower = fc.watch(WATCH_PREFIX, Some(opts())).await?;
        let mut lc = client(&eps[leader]).await?;
        let mut on_leader = lc.watch(WATCH_PREFIX, Some(opts())).await?;

        let mut acked = Vec::new();
        for i in 0..30 {
            let key = format!("{WATCH_PREFIX}{i:03}");
            acked.push((put_acked(&mut fc, &key, "v").await?, key));
        }
        cluster.members[leader].kill9()?;
        for i in 30..60 {
            let key = format!("{WATCH_PREFIX}{i:03}");
            acked.push((put_acked(&mut fc, &key, "v").await?, key));
        }
        let end = put_acked(&mut fc, &format!("{WATCH_PREFIX}~end"), "v").await?;

        let seen_f = events_until(&mut on_follower, end).await?;
        check_gapless("the follower's watcher", &seen_f, start, end)?;

        // The leader's watcher broke with its member; resume on the other follower.
        let mut seen_l = events_until_broken(&mut on_leader).await;
        let resume = seen_l.last().map_or(start, |(r, _)| r + 1);
        let mut oc = client(&eps[followers[1]]).await?;
        let mut resumed = oc
            .watch(
                WATCH_PREFIX,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(resume),
                ),
            )
            .await?;
        seen_l.extend(events_until(&mut resumed, end).await?);
        check_gapless("the resumed leader watcher", &seen_l, start, end)?;

        for (rev, key) in &acked {
            ensure!(
                seen_f.contains(&(*rev, key.clone())),
                "acknowledged put {key}@{rev} missing from the watch"
            );
        }
        ensure!(seen_f == seen_l, "the two watchers saw different events");
        Ok(())
    })
}

#[test]
fn cluster3_watch_survives_leader_kill9_concord_and_etcd35() {
    on_both(watch_survives_leader_kill9);
}

const LEASE_PREFIX: &str = "/failover/l/";
const TTL: i64 = 6;

fn lease_expiry_after_leader_kill9(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start(kind, 3)?;
    let eps = cluster.endpoints();
    runtime().block_on(async {
        let leader = cluster.agreed_leader(&[0, 1, 2]).await?;
        let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
        let mut fc = client(&eps[followers[0]]).await?;
        let lease = fc.lease_grant(TTL, None).await?.id();
        let keys = ["a", "b", "c"].map(|k| format!("{LEASE_PREFIX}{k}"));
        let mut last = 0;
        for k in &keys {
            last = fc
                .put(k.as_str(), "v", Some(PutOptions::new().with_lease(lease)))
                .await?
                .header()
                .context("put without header")?
                .revision();
        }
        let start = last + 1;
        let mut watch = fc
            .watch(
                LEASE_PREFIX,
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await?;

        // Kept alive through a follower for longer than its TTL: the keep-alives reach the
        // leader's lessor, so the lease and its keys stay.
        let (mut keeper, mut acks) = fc.lease_keep_alive(lease).await?;
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_secs(2)).await;
            keeper.keep_alive().await?;
            let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
                .await
                .context("no keep-alive response")??
                .context("keep-alive stream closed")?;
            ensure!(ack.ttl() == TTL, "keep-alive through a follower: {ack:?}");
        }
        let ttl = fc
            .lease_time_to_live(lease, Some(LeaseTimeToLiveOptions::new().with_keys()))
            .await?;
        ensure!(
            ttl.granted_ttl() == TTL && ttl.ttl() > 0 && ttl.ttl() <= TTL && ttl.keys().len() == 3,
            "time-to-live through a follower after 8 s of keep-alives: {ttl:?}"
        );
        drop(keeper);
        drop(acks);

        // The last keep-alive: etcdctl on the other follower.
        let sent = Instant::now();
        let out = Etcdctl::V35.run(
            &eps[followers[1]],
            ["lease", "keep-alive", "--once", &format!("{lease:x}")],
            None,
        )?;
        ensure!(
            out.success()
                && out.stdout_text() == format!("lease {lease:016x} keepalived with TTL({TTL})\n"),
            "etcdctl lease keep-alive --once on a follower: {} {}",
            out.stdout_text(),
            out.stderr_text()
        );
        cluster.members[leader].kill9()?;

        let r = loop {
            let r = tokio::time::timeout(Duration::from_secs(60), watch.message())
                .await
                .context("keys not deleted within 60 s of the leader's death")??
                .context("watch stream closed")?;
            if !r.events().is_empty() {
                break r;
            }
        };
        let deleted_after = sent.elapsed();
        ensure!(
            deleted_after >= Duration::from_secs(TTL as u64),
            "keys deleted {deleted_after:?} after the last keep-alive, before the {TTL}s TTL"
        );
        let deletes: Vec<(i64, String)> = r
            .events()
            .iter()
            .filter(|e| e.event_type() == EventType::Delete)
            .filter_map(|e| e.kv())
            .map(|kv| (kv.mod_revision(), kv.key_str().unwrap_or("?").to_owned()))
            .collect();
        ensure!(
            deletes.len() == 3 && r.events().len() == 3,
            "expected the 3 deletes in one response, got {:?}",
            r.events()
        );
        ensure!(
            deletes.iter().all(|(rev, _)| *rev == start),
            "deletes not all in revision {start}: {deletes:?}"
        );

        // Exactly once: with the old leader back, the next event is our sentinel, and its
        // history holds the three deletes once.
        cluster.members[leader].restart()?;
        let mut oc = client(&eps[leader]).await?;
        let sentinel = put_acked(&mut oc, &format!("{LEASE_PREFIX}~sentinel"), "v").await?;
        let next = events_until(&mut watch, sentinel)
            .await
            .context("events after the deletes")?;
        ensure!(
            next == vec![(sentinel, format!("{LEASE_PREFIX}~sentinel"))],
            "after the deletes the watch saw {next:?}"
        );
        let mut history = oc
            .watch(
                LEASE_PREFIX,
                Some(WatchOptions::new().with_prefix().with_start_revision(start)),
            )
            .await?;
        let all = events_until(&mut history, sentinel)
            .await
            .context("history on the restarted member")?;
        ensure!(
            all.len() == 4 && all[..3].iter().all(|(rev, _)| *rev == start),
            "history on the restarted member: {all:?}"
        );
        let gone = oc.lease_time_to_live(lease, None).await.with_context(|| {
            format!(
                "time-to-live of the expired lease; restarted member's log:\n{}",
                cluster.members[leader].stderr_tail(30)
            )
        })?;
        ensure!(gone.ttl() == -1, "the lease outlived its keys: {gone:?}");
        Ok(())
    })
}

#[test]
fn cluster3_lease_expiry_after_leader_kill9_concord_and_etcd35() {
    on_both(lease_expiry_after_leader_kill9);
}

fn require_leader_watch_ends_without_leader(kind: ServerKind) -> Result<()> {
    let mut cluster = Cluster::start(kind, 3)?;
    let eps = cluster.endpoints();
    runtime().block_on(async {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_require_leader(true);
        let mut c = Client::connect([eps[0].as_str()], Some(opts)).await?;
        let mut watch = c
            .watch("/failover/rl/", Some(WatchOptions::new().with_prefix()))
            .await?;
        let rev = put_acked(&mut c, "/failover/rl/a", "v").await?;
        let seen = events_until(&mut watch, rev).await?;
        ensure!(seen.len() == 1, "{seen:?}");
        // Member 0 alone: no leader. Its require-leader watch ends with etcd's error.
        cluster.members[1].kill9()?;
        cluster.members[2].kill9()?;
        let end = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                match watch.message().await {
                    Ok(Some(_)) => continue,
                    other => return other,
                }
            }
        })
        .await
        .context("the require-leader watch outlived the leader by 30 s")?;
        match end {
            Err(etcd_client::Error::GRpcStatus(s)) => ensure!(
                s.code() == tonic::Code::Unavailable && s.message() == "etcdserver: no leader",
                "watch ended with {s:?}"
            ),
            other => anyhow::bail!("watch ended with {other:?}, not 'etcdserver: no leader'"),
        }
        Ok(())
    })
}

#[test]
fn cluster3_require_leader_watch_ends_when_leader_lost_concord_and_etcd35() {
    on_both(require_leader_watch_ends_without_leader);
}
