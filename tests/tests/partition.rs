//! A network partition of a 5-member concord cluster, cut with the peer fault layer
//! (`concord_store::fault`): the leader and one follower are cut off from the other three.
//!
//! - The minority serves neither linearizable reads nor writes; serializable reads still answer
//!   from its (now stale) local state.
//! - The majority elects a new leader among itself and keeps taking writes and linearizable
//!   reads.
//! - After healing, the cut-off members follow the new leader and catch up: every write made
//!   during the partition is there, on every member.
//!
//! Waits are on conditions with generous deadlines; nothing asserts on timing. The test name
//! contains `cluster`, so nextest runs it alone.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use concord_store::proto::etcdserverpb::kv_client::KvClient;
use concord_store::proto::etcdserverpb::{PutRequest, RangeRequest};
use concord_tests::Cluster;
use concord_tests::cluster::{status, wait_for};
use tonic::transport::Endpoint;

fn kv(endpoint: &str, timeout: Duration) -> Result<KvClient<tonic::transport::Channel>> {
    Ok(KvClient::new(
        Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(timeout)
            .connect_lazy(),
    ))
}

async fn put(endpoint: &str, key: &str, timeout: Duration) -> Result<()> {
    kv(endpoint, timeout)?
        .put(PutRequest {
            key: key.into(),
            value: b"v".to_vec(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("put {key} via {endpoint}"))?;
    Ok(())
}

/// Keys under `prefix` as `endpoint` sees them.
async fn keys(endpoint: &str, prefix: &str, serializable: bool) -> Result<Vec<String>> {
    let resp = kv(endpoint, Duration::from_secs(3))?
        .range(RangeRequest {
            key: prefix.into(),
            range_end: concord_tests::ledger::prefix_end(prefix.as_bytes()),
            serializable,
            ..Default::default()
        })
        .await
        .with_context(|| format!("range {prefix} via {endpoint}"))?
        .into_inner();
    Ok(resp
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
        .collect())
}

#[test]
fn cluster5_minority_partition_stalls_majority_serves_and_heals() -> Result<()> {
    let cluster = Cluster::start_partitionable(5)?;
    let eps = cluster.endpoints();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let all: Vec<usize> = (0..5).collect();
        let leader = cluster.agreed_leader(&all).await?;
        let old_term = status(&eps[leader]).await?.raft_term;
        put(&eps[leader], "/p/before", Duration::from_secs(10)).await?;
        let minority = [leader, (leader + 1) % 5];
        let majority: Vec<usize> = all
            .iter()
            .copied()
            .filter(|m| !minority.contains(m))
            .collect();
        cluster.partition(&[&minority, &majority])?;

        // The majority elects a leader of its own and keeps going.
        let new_leader = cluster.agreed_leader(&majority).await?;
        ensure!(
            majority.contains(&new_leader),
            "the majority follows {new_leader}, a cut-off member"
        );
        let mut written = vec!["/p/before".to_owned()];
        for i in 0..20 {
            let key = format!("/p/during/{i:02}");
            let via = &eps[majority[i % majority.len()]];
            wait_for(
                &format!("put {key} in the majority"),
                Duration::from_secs(30),
                || {
                    let key = key.clone();
                    async move { Ok(put(via, &key, Duration::from_secs(5)).await.ok()) }
                },
            )
            .await?;
            written.push(key);
        }
        written.sort();
        for &m in &majority {
            let seen = keys(&eps[m], "/p/", false).await?;
            ensure!(
                seen == written,
                "linearizable read on majority member {m}: {seen:?}"
            );
        }

        // The minority: no linearizable reads, no writes; serializable reads are stale.
        for &m in &minority {
            let read = keys(&eps[m], "/p/", false).await;
            ensure!(
                read.is_err(),
                "cut-off member {m} served a linearizable read: {read:?}"
            );
            let write = put(&eps[m], "/p/minority", Duration::from_secs(3)).await;
            ensure!(write.is_err(), "cut-off member {m} took a write");
            let stale = keys(&eps[m], "/p/", true).await?;
            ensure!(
                stale == ["/p/before"],
                "serializable read on cut-off member {m}: {stale:?}"
            );
        }

        // Healed: everyone follows one leader of a newer term and has every write.
        cluster.heal()?;
        let healed_leader = cluster.agreed_leader(&all).await?;
        let term = status(&eps[healed_leader]).await?.raft_term;
        ensure!(
            term > old_term,
            "term {term} after the partition, {old_term} before"
        );
        for &m in &all {
            let seen = wait_for(
                &format!("member {m} caught up"),
                Duration::from_secs(60),
                || {
                    let ep = eps[m].clone();
                    let written = written.clone();
                    async move {
                        let seen = keys(&ep, "/p/", false).await?;
                        Ok((seen == written).then_some(seen))
                    }
                },
            )
            .await?;
            ensure!(
                !seen.contains(&"/p/minority".to_owned()),
                "a write refused during the partition appeared"
            );
        }
        Ok(())
    })
}
