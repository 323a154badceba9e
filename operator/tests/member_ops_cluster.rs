//! The operator's etcd-facing calls (`concord_operator::members`) against real 3-member clusters
//! on loopback: first etcd 3.5.16, then concord. Member list and health, add a learner, the
//! refusal to promote a learner that has not caught up, promotion once it has, moving
//! leadership, removal, and the "already done" errors the controller treats as success when it
//! resumes a step after a crash.
//!
//! The same calls over client TLS (`https` members requiring client certificates), dialled with
//! a CA and client certificate as the controller does for `spec.tls.clientSecretName`.
//!
//! Each test runs both servers one after the other (several processes each; `cluster` in the
//! name).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, ensure};
use concord_operator::members::{self, MemberClient, MemberTls};
use concord_tests::cluster::wait_for;
use concord_tests::tls::TestPki;
use concord_tests::{Cluster, LoopbackIp, PEER_PORT, Server, ServerKind};

/// Adds a learner on a fresh loopback address through `ep`, retrying while etcd refuses changes
/// for a few seconds after start ("unhealthy cluster", nothing changed): the address, the peer
/// URL and the new member's id.
async fn add_learner(mc: &MemberClient, ep: &str) -> Result<(LoopbackIp, String, u64)> {
    let ip = LoopbackIp::claim()?;
    let peer = format!("http://{}:{PEER_PORT}", ip.ip());
    let id = wait_for("member add", Duration::from_secs(30), || async {
        match mc.add_learner(ep, &peer).await {
            Ok(id) => Ok(Some(id)),
            Err(e) if members::is_unhealthy_cluster(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    Ok((ip, peer, id))
}

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
    let (ip, peer, id) = add_learner(&mc, &eps[0]).await?;
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

/// The same calls over client TLS: a 3-member cluster serving `https` with certificates of a test
/// CA and requiring client certificates (`--client-cert-auth`), dialled with the CA and a client
/// certificate the way the controller dials members with a `spec.tls.clientSecretName` Secret.
/// Clients with the wrong CA, without a certificate, or without TLS at all are refused.
async fn tls_scenario(kind: ServerKind) -> Result<()> {
    let pki = TestPki::new()?;
    let probe = pki.client("root")?;
    let cluster = Cluster::start_configured(kind, 3, false, |i, ip, b| {
        let cert = pki.server_cert(&format!("m{i}"), &[ip])?;
        Ok(b.https(probe.clone())
            .arg(format!("--cert-file={}", cert.cert.display()))
            .arg(format!("--key-file={}", cert.key.display()))
            .arg(format!("--trusted-ca-file={}", pki.ca.display()))
            .arg("--client-cert-auth"))
    })?;
    let eps = cluster.endpoints();
    ensure!(eps.iter().all(|e| e.starts_with("https://")), "{eps:?}");
    let client = pki.client_cert("operator")?;
    let tls = MemberTls::new(
        std::fs::read(&pki.ca)?,
        Some((std::fs::read(&client.cert)?, std::fs::read(&client.key)?)),
    )?;
    let mc = MemberClient::with_tls(tls.clone());

    let (_, list) = mc.list(&eps).await?;
    ensure!(
        list.len() == 3
            && list
                .iter()
                .all(|m| !m.learner && m.client_urls.iter().all(|u| u.starts_with("https://"))),
        "{list:?}"
    );
    let mut leaders = BTreeSet::new();
    for ep in &eps {
        leaders.insert(mc.status(ep).await?.leader);
    }
    ensure!(leaders.len() == 1 && !leaders.contains(&0), "{leaders:?}");
    let leader = *leaders.first().unwrap();

    // Refused: the unrelated CA, no client certificate, plain text, and an http endpoint for a
    // TLS client.
    let wrong_ca = MemberClient::with_tls(MemberTls::new(
        std::fs::read(&pki.other_ca)?,
        tls.identity.clone(),
    )?);
    ensure!(wrong_ca.status(&eps[0]).await.is_err());
    let anonymous = MemberClient::with_tls(MemberTls::new(tls.ca_pem.clone(), None)?);
    ensure!(anonymous.status(&eps[0]).await.is_err());
    let plain = MemberClient::plain();
    let err = plain.status(&eps[0]).await.unwrap_err();
    ensure!(matches!(err, members::MemberError::Scheme(_)), "{err}");
    let http = eps[0].replacen("https://", "http://", 1);
    let err = mc.status(&http).await.unwrap_err();
    ensure!(matches!(err, members::MemberError::Scheme(_)), "{err}");

    // Membership calls over TLS: add a learner, promotion refused until it runs, remove it, move
    // leadership.
    let (_ip, _, id) = add_learner(&mc, &eps[0]).await?;
    let early = mc.promote(&eps[1], id).await.unwrap_err();
    ensure!(members::is_not_ready_to_promote(&early), "{early}");
    mc.remove(&eps[2], id).await?;
    let (_, list) = mc.list(&eps).await?;
    ensure!(
        list.len() == 3 && !list.iter().any(|m| m.id == id),
        "{list:?}"
    );

    let (leader_ep, target) = {
        let mut leader_ep = None;
        let mut target = None;
        for ep in &eps {
            let h = mc.status(ep).await?;
            if h.id == leader {
                leader_ep = Some(ep.clone());
            } else {
                target = Some(h.id);
            }
        }
        (leader_ep.expect("leader"), target.expect("a follower"))
    };
    mc.move_leader(&leader_ep, target).await?;
    wait_for("new leader", Duration::from_secs(30), || async {
        Ok((mc.status(&eps[0]).await?.leader == target).then_some(()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_ops_over_client_tls_against_etcd_and_concord_cluster() -> Result<()> {
    tls_scenario(ServerKind::Etcd35).await?;
    tls_scenario(ServerKind::Concord).await
}
