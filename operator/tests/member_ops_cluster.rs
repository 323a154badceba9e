//! The operator's etcd-facing calls (`concord_operator::members`) against real 3-member clusters
//! on loopback: first etcd 3.5.16, then concord. Member list and health, add a learner, the
//! refusal to promote a learner that has not caught up, promotion once it has, moving
//! leadership, removal, and the "already done" errors the controller treats as success when it
//! resumes a step after a crash.
//!
//! One test runs both servers one after the other (several processes each; `cluster` in the
//! name).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use concord_operator::members::{self, MemberClient};
use concord_tests::cluster::wait_for;
use concord_tests::{Cluster, LoopbackIp, PEER_PORT, Server, ServerKind};

async fn scenario(kind: ServerKind) -> Result<()> {
    let cluster = Cluster::start(kind, 3)?;
    let eps = cluster.endpoints();
    let mc = MemberClient::plain();

    // List and health: three voters, one leader every member agrees on, one cluster ID.
    let (_, list) = mc.list(&eps).await?;
    ensure!(
        list.len() == 3 && list.iter().all(|m| !m.learner),
        "{list:?}"
    );
    let mut leaders = BTreeSet::new();
    let mut clusters = BTreeSet::new();
    for ep in &eps {
        let h = mc.status(ep).await?;
        ensure!(
            list.iter().any(|m| m.id == h.id),
            "{ep} answered as {:x}",
            h.id
        );
        leaders.insert(h.leader);
        clusters.insert(h.cluster_id);
    }
    ensure!(leaders.len() == 1 && !leaders.contains(&0), "{leaders:?}");
    ensure!(clusters.len() == 1, "{clusters:?}");
    let leader = *leaders.first().unwrap();

    // An unreachable endpoint first in the list: the next one answers.
    let (answered, _) = mc
        .list(&["http://127.0.0.1:1".to_owned(), eps[1].clone()])
        .await?;
    ensure!(answered == eps[1]);
    ensure!(mc.status("http://127.0.0.1:1").await.is_err());

    // Add a learner; promoting it before it runs is refused as "not in sync".
    let ip = LoopbackIp::claim()?;
    let peer = format!("http://{}:{PEER_PORT}", ip.ip());
    // etcd refuses changes for a few seconds after start ("unhealthy cluster"): nothing changed.
    let id = wait_for("member add", Duration::from_secs(30), || async {
        match mc.add_learner(&eps[0], &peer).await {
            Ok(id) => Ok(Some(id)),
            Err(e) if members::is_unhealthy_cluster(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    ensure!(id != 0);
    let (_, list) = mc.list(&eps).await?;
    let added = list.iter().find(|m| m.id == id).expect("learner listed");
    ensure!(added.learner && added.name.is_empty() && added.peer_urls == [peer.clone()]);
    let early = mc.promote(&eps[0], id).await.unwrap_err();
    ensure!(members::is_not_ready_to_promote(&early), "{early}");

    // Start it; once caught up, promotion succeeds, and a second promotion is "not a learner".
    let initial: Vec<String> = list
        .iter()
        .map(|m| {
            let name = if m.id == id {
                "m3".to_owned()
            } else {
                m.name.clone()
            };
            format!("{name}={}", m.peer_urls[0])
        })
        .collect();
    let mut m3 = Server::builder(kind)
        .name("m3")
        .ip(ip)
        .initial_cluster(initial.join(","))
        .arg("--initial-cluster-state=existing")
        .arg(format!("--initial-cluster-token={}", cluster.token))
        .no_wait()
        .start()?;
    m3.wait_ready()?;
    wait_for("learner promotion", Duration::from_secs(60), || async {
        match mc.promote(&eps[0], id).await {
            Ok(()) => Ok(Some(())),
            Err(e) if members::is_not_ready_to_promote(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let again = mc.promote(&eps[0], id).await.unwrap_err();
    ensure!(members::is_not_learner(&again), "{again}");
    let (_, list) = mc.list(&eps).await?;
    ensure!(
        list.len() == 4 && list.iter().all(|m| !m.learner),
        "{list:?}"
    );

    // Move leadership to the new member, sent to the leader.
    let leader_ep = {
        let mut found = None;
        for ep in &eps {
            if mc.status(ep).await?.id == leader {
                found = Some(ep.clone());
            }
        }
        found.expect("leader endpoint")
    };
    mc.move_leader(&leader_ep, id).await?;
    wait_for("new leader", Duration::from_secs(30), || async {
        Ok((mc.status(&eps[0]).await?.leader == id).then_some(()))
    })
    .await?;

    // Remove a follower; removing it again is "member not found".
    let follower = leader;
    wait_for("member remove", Duration::from_secs(30), || async {
        match mc.remove(&m3.endpoint(), follower).await {
            Ok(()) => Ok(Some(())),
            Err(e) if members::is_unhealthy_cluster(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    let (_, list) = mc.list(&[m3.endpoint()]).await?;
    ensure!(list.len() == 3 && !list.iter().any(|m| m.id == follower));
    let gone = mc.remove(&m3.endpoint(), follower).await.unwrap_err();
    ensure!(members::is_member_not_found(&gone), "{gone}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_ops_against_etcd_and_concord_cluster() -> Result<()> {
    scenario(ServerKind::Etcd35).await?;
    scenario(ServerKind::Concord).await
}
