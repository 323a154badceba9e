//! Locks and elections against etcd 3.5.16 (the reference) and concord, with the same steps and
//! compared outcomes:
//!
//! - `etcdctl lock`: one etcdctl holds a lock, a second waits, and gets it once the first is
//!   killed (`kill -9`: its session lease expires);
//! - `etcdctl elect`: an observer (`elect -l`) sees the first candidate win and, when it
//!   resigns (SIGTERM), the second one that was waiting;
//! - the gRPC `v3lockpb.Lock` and `v3electionpb.Election` services (which etcdctl does not use;
//!   its lock and elect run the recipes client-side): a scripted session whose transcript of
//!   keys, revisions, values, error codes and messages must be identical on both servers.
//!
//! Run against etcd itself (validates the test): `CONCORD_BIN=$ETCD35_BIN_DIR/etcd`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use concord_store::proto::etcdserverpb::{LeaseGrantRequest, lease_client::LeaseClient};
use concord_store::proto::v3electionpb::{
    CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest, ResignRequest,
    election_client::ElectionClient,
};
use concord_store::proto::v3lockpb::{LockRequest, UnlockRequest, lock_client::LockClient};
use concord_tests::{Etcdctl, Normalizer, Server, ServerKind, line_diff};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tonic::transport::Channel;

const KINDS: [ServerKind; 2] = [ServerKind::Etcd35, ServerKind::Concord];

/// Keys under `prefix`, in key order.
fn keys(endpoint: &str, prefix: &str) -> Result<Vec<String>> {
    let out = Etcdctl::V35.run(endpoint, ["get", prefix, "--prefix", "--keys-only"], None)?;
    if !out.success() {
        bail!("get failed: {}", out.stderr_text());
    }
    Ok(out
        .stdout_text()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Waits until `prefix` holds exactly `n` keys; returns them.
fn wait_keys(endpoint: &str, prefix: &str, n: usize) -> Result<Vec<String>> {
    let start = Instant::now();
    loop {
        let k = keys(endpoint, prefix)?;
        if k.len() == n {
            return Ok(k);
        }
        if start.elapsed() > Duration::from_secs(20) {
            bail!("{prefix}: wanted {n} keys, have {k:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What one server did in the lock scenario, with lease ids replaced by names.
fn lock_scenario(kind: ServerKind) -> Result<String> {
    let server = Server::start(kind)?;
    let ep = server.endpoint();
    let holder = Etcdctl::V35.spawn(&ep, ["lock", "--ttl=2", "mylock"], None)?;
    let first = wait_keys(&ep, "mylock/", 1)?;
    let mut waiter = Etcdctl::V35.spawn(
        &ep,
        ["lock", "--ttl=2", "mylock", "--", "echo", "second-acquired"],
        None,
    )?;
    let both = wait_keys(&ep, "mylock/", 2)?;
    std::thread::sleep(Duration::from_millis(1000));
    let waited = !waiter.has_exited()?;
    let killed_at = Instant::now();
    let holder_out = holder.stop()?; // SIGKILL: its 2 s session lease must expire
    let mut acquired = false;
    while killed_at.elapsed() < Duration::from_secs(20) {
        if waiter.has_exited()? {
            acquired = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let waiter_out = waiter.stop()?;
    let second = both
        .iter()
        .find(|k| !first.contains(k))
        .context("no second key")?;
    let norm = Normalizer::new()
        .replace(first[0].as_str(), "mylock/<first lease>")
        .replace(second.as_str(), "mylock/<second lease>");
    Ok(norm.apply(&format!(
        "holder stdout: {}\nsecond waited while held: {waited}\nsecond acquired after the holder \
         died: {acquired} (exit {:?})\nsecond stdout: {}\nkeys left: {:?}\n",
        holder_out.stdout_text(),
        waiter_out.code,
        waiter_out.stdout_text(),
        keys(&ep, "mylock/")?,
    )))
}

#[test]
fn etcdctl_lock_waits_and_takes_over_like_etcd() {
    let want = lock_scenario(KINDS[0]).expect("etcd scenario");
    let got = lock_scenario(KINDS[1]).expect("concord scenario");
    assert!(
        want.contains("second acquired after the holder died: true"),
        "{want}"
    );
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}

/// What one server did in the election scenario.
fn elect_scenario(kind: ServerKind) -> Result<String> {
    let server = Server::start(kind)?;
    let ep = server.endpoint();
    let observer = Etcdctl::V35.spawn(&ep, ["elect", "-l", "myelection"], None)?;
    // Let the observer start watching the empty election.
    std::thread::sleep(Duration::from_millis(500));
    let mut alpha = Etcdctl::V35.spawn(&ep, ["elect", "myelection", "alpha"], None)?;
    let first = wait_keys(&ep, "myelection/", 1)?;
    let beta = Etcdctl::V35.spawn(&ep, ["elect", "myelection", "beta"], None)?;
    let both = wait_keys(&ep, "myelection/", 2)?;
    std::thread::sleep(Duration::from_millis(500));
    // SIGTERM: the leader resigns and exits.
    kill(Pid::from_raw(alpha.pid() as i32), Signal::SIGTERM)?;
    let start = Instant::now();
    while !alpha.has_exited()? && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let alpha_out = alpha.stop()?;
    let left = wait_keys(&ep, "myelection/", 1)?;
    // Time for beta and the observer to see the new leader and print it.
    std::thread::sleep(Duration::from_millis(2000));
    let beta_out = beta.stop()?;
    let observer_out = observer.stop()?;
    let second = both
        .iter()
        .find(|k| !first.contains(k))
        .context("no second key")?;
    let norm = Normalizer::new()
        .replace(first[0].as_str(), "myelection/<alpha lease>")
        .replace(second.as_str(), "myelection/<beta lease>");
    Ok(norm.apply(&format!(
        "alpha exit {:?}, stdout:\n{}beta stdout:\n{}observer stdout:\n{}keys left: {left:?}\n",
        alpha_out.code,
        alpha_out.stdout_text(),
        beta_out.stdout_text(),
        observer_out.stdout_text(),
    )))
}

#[test]
fn etcdctl_elect_observe_and_campaign_like_etcd() {
    let want = elect_scenario(KINDS[0]).expect("etcd scenario");
    let got = elect_scenario(KINDS[1]).expect("concord scenario");
    assert!(
        want.contains("beta stdout:\nmyelection/<beta lease>\nbeta\n"),
        "{want}"
    );
    assert_eq!(want, got, "\n{}", line_diff(&want, &got));
}

fn status_line(r: std::result::Result<String, tonic::Status>) -> String {
    match r {
        Ok(s) => s,
        Err(e) => format!("error {:?}: {}", e.code(), e.message()),
    }
}

/// Adds a transcript line (also printed, so a hung session shows how far it got).
fn note(t: &mut Vec<String>, line: String) {
    eprintln!("{line}");
    t.push(line);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A scripted gRPC session of the Lock and Election services; the transcript of what came back.
async fn grpc_session(endpoint: String) -> Result<Vec<String>> {
    let ch = Channel::from_shared(endpoint)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    let mut lease = LeaseClient::new(ch.clone());
    let mut lock = LockClient::new(ch.clone());
    let mut elect = ElectionClient::new(ch.clone());
    for id in [100, 200, 300, 400] {
        lease.lease_grant(LeaseGrantRequest { ttl: 60, id }).await?;
    }
    let mut t = Vec::new();
    let lock_call = |name: &str, lease: i64| {
        let mut c = lock.clone();
        let name = name.to_owned();
        async move {
            c.lock(LockRequest {
                name: name.into_bytes(),
                lease,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                format!("key {} rev {}", text(&r.key), r.header.unwrap().revision)
            })
        }
    };
    note(
        &mut t,
        format!("lock L 100: {}", status_line(lock_call("L", 100).await)),
    );
    note(
        &mut t,
        format!(
            "lock L 100 again: {}",
            status_line(lock_call("L", 100).await)
        ),
    );
    note(
        &mut t,
        format!("lock L 999: {}", status_line(lock_call("L", 999).await)),
    );
    let waiter = tokio::spawn(lock_call("L", 200));
    tokio::time::sleep(Duration::from_millis(500)).await;
    note(&mut t, format!("second waits: {}", !waiter.is_finished()));
    let un = lock
        .unlock(UnlockRequest {
            key: b"L/64".to_vec(),
        })
        .await
        .map(|r| format!("rev {}", r.into_inner().header.unwrap().revision));
    note(&mut t, format!("unlock L/64: {}", status_line(un)));
    let second = tokio::time::timeout(Duration::from_secs(10), waiter).await??;
    note(&mut t, format!("second: {}", status_line(second)));
    let un = lock
        .unlock(UnlockRequest { key: vec![] })
        .await
        .map(|r| format!("rev {}", r.into_inner().header.unwrap().revision));
    note(&mut t, format!("unlock empty key: {}", status_line(un)));

    let leader = elect
        .leader(LeaderRequest {
            name: b"E".to_vec(),
        })
        .await
        .map(|r| text(&r.into_inner().kv.unwrap().value));
    note(
        &mut t,
        format!("leader of empty E: {}", status_line(leader)),
    );
    // etcd sends a stream's response headers with its first message: observe on a task, or the
    // call itself would wait for a leader.
    let (obs_tx, mut observer) = tokio::sync::mpsc::channel(16);
    {
        let mut c = elect.clone();
        tokio::spawn(async move {
            let Ok(r) = c
                .observe(LeaderRequest {
                    name: b"E".to_vec(),
                })
                .await
            else {
                return;
            };
            let mut stream = r.into_inner();
            while let Ok(Some(m)) = stream.message().await {
                if obs_tx.send(m).await.is_err() {
                    return;
                }
            }
        });
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let won = elect
        .campaign(CampaignRequest {
            name: b"E".to_vec(),
            lease: 300,
            value: b"one".to_vec(),
        })
        .await?
        .into_inner();
    let key: LeaderKey = won.leader.clone().unwrap();
    note(
        &mut t,
        format!(
            "campaign 300: header rev {} leader key {} rev {} lease {}",
            won.header.unwrap().revision,
            text(&key.key),
            key.rev,
            key.lease
        ),
    );
    let mut observe = async || -> Result<String> {
        let r = tokio::time::timeout(Duration::from_secs(10), observer.recv())
            .await?
            .context("observe ended")?;
        let kv = r.kv.unwrap();
        Ok(format!(
            "observed {}={} (mod rev {}, header rev {})",
            text(&kv.key),
            text(&kv.value),
            kv.mod_revision,
            r.header.unwrap().revision
        ))
    };
    note(&mut t, observe().await?);
    let contender = {
        let mut c = elect.clone();
        tokio::spawn(async move {
            c.campaign(CampaignRequest {
                name: b"E".to_vec(),
                lease: 400,
                value: b"two".to_vec(),
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                let l = r.leader.unwrap();
                format!(
                    "header rev {} key {} rev {}",
                    r.header.unwrap().revision,
                    text(&l.key),
                    l.rev
                )
            })
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = elect
        .proclaim(ProclaimRequest {
            leader: Some(key.clone()),
            value: b"uno".to_vec(),
        })
        .await
        .map(|r| format!("rev {}", r.into_inner().header.unwrap().revision));
    note(&mut t, format!("proclaim uno: {}", status_line(p)));
    note(&mut t, observe().await?);
    let mut stale = key.clone();
    stale.rev = 1;
    let p = elect
        .proclaim(ProclaimRequest {
            leader: Some(stale.clone()),
            value: b"x".to_vec(),
        })
        .await
        .map(|r| format!("rev {}", r.into_inner().header.unwrap().revision));
    note(
        &mut t,
        format!("proclaim with stale rev: {}", status_line(p)),
    );
    let p = elect
        .proclaim(ProclaimRequest {
            leader: None,
            value: b"x".to_vec(),
        })
        .await
        .map(|_| "ok".to_string());
    note(
        &mut t,
        format!("proclaim without leader: {}", status_line(p)),
    );
    let r = elect
        .resign(ResignRequest {
            leader: Some(stale),
        })
        .await
        .map(|r| format!("rev {}", r.into_inner().header.unwrap().revision));
    note(&mut t, format!("resign with stale rev: {}", status_line(r)));
    note(
        &mut t,
        format!("contender waits: {}", !contender.is_finished()),
    );
    let r = elect
        .resign(ResignRequest { leader: Some(key) })
        .await
        .map(|r| format!("rev {}", r.into_inner().header.unwrap().revision));
    note(&mut t, format!("resign: {}", status_line(r)));
    let c = tokio::time::timeout(Duration::from_secs(10), contender).await??;
    note(&mut t, format!("contender: {}", status_line(c)));
    note(&mut t, observe().await?);
    let leader = elect
        .leader(LeaderRequest {
            name: b"E".to_vec(),
        })
        .await
        .map(|r| {
            let r = r.into_inner();
            let kv = r.kv.unwrap();
            format!("{}={}", text(&kv.key), text(&kv.value))
        });
    note(&mut t, format!("leader: {}", status_line(leader)));
    Ok(t)
}

#[test]
fn grpc_lock_and_election_sessions_match_etcd() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut transcripts = Vec::new();
    for kind in KINDS {
        let server = Server::start(kind).unwrap();
        let t = rt
            .block_on(async {
                tokio::time::timeout(Duration::from_secs(60), grpc_session(server.endpoint())).await
            })
            .unwrap_or_else(|_| panic!("{kind:?}: session timed out"))
            .unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
        transcripts.push(t.join("\n"));
    }
    let (want, got) = (&transcripts[0], &transcripts[1]);
    assert!(want.contains("second: key L/c8"), "{want}");
    assert_eq!(want, got, "\n{}", line_diff(want, got));
}
