//! Cluster membership: which members the cluster has (id, name, peer URLs, client URLs, learner
//! flag), kept in the backend's `members` table (layout documented there).
//!
//! Rows are written once at bootstrap, from `--initial-cluster` (or, for a member joining with
//! `--initial-cluster-state=existing`, from the members a running member lists), and afterwards
//! only by applied raft entries, so every member holds the same rows and a restart needs no
//! flags. Those entries are raft conf changes (MemberAdd, MemberPromote, MemberRemove; the
//! member travels in the conf change's context, see [`apply_conf_change`]), `MemberAttrSet`:
//! a member publishing its name and client URLs after it starts, as etcd's `publishV3` does
//! ("published local member to cluster through raft"), and `MemberUpdate` (new peer URLs: etcd's
//! `ConfChangeUpdateNode`, a normal entry here since raft-rs has no such conf change type,
//! validated when applied as etcd validates it). The raft loop hands these entries here
//! ([`peek`], [`apply`], [`apply_conf_change`]) instead of to `apply`, inside the same write
//! transaction as the rest of the batch. Readers (MemberList, Status, the peer transport) read
//! the table through [`list`]. Removed member ids are kept in `members_removed` ([`is_removed`]),
//! so the peer service can refuse a removed member. This module never talks to peers or to raft.

use std::collections::BTreeMap;

use prost::Message;
use redb::{ReadableDatabase, ReadableTable, WriteTransaction};

use crate::backend::{Backend, MEMBERS, MEMBERS_REMOVED};
use crate::error::{Error, Result};
use crate::ids::{member_id, url_string};
use crate::proto::concordpb::MemberAttrSet;
use crate::proto::etcdserverpb::{Member, MemberUpdateRequest};

/// The members of a brand-new cluster, from `--initial-cluster` (`name=url` pairs, a name once
/// per URL): names and peer URLs, ids derived as etcd derives them, no client URLs yet (members
/// publish those through raft once they run). Sorted by id, as etcd lists members.
pub fn initial_members(initial_cluster: &[(String, url::Url)], token: &str) -> Vec<Member> {
    let mut by_name: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (name, url) in initial_cluster {
        by_name
            .entry(name.as_str())
            .or_default()
            .push(url_string(url));
    }
    let mut members: Vec<Member> = by_name
        .into_iter()
        .map(|(name, peer_urls)| Member {
            id: member_id(&peer_urls, token, None),
            name: name.to_owned(),
            peer_ur_ls: peer_urls,
            client_ur_ls: vec![],
            is_learner: false,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    members
}

/// Writes (or overwrites) `members` in `wtx`.
pub fn write(wtx: &WriteTransaction, members: &[Member]) -> Result<()> {
    let mut t = wtx.open_table(MEMBERS)?;
    for m in members {
        t.insert(m.id, m.encode_to_vec().as_slice())?;
    }
    Ok(())
}

/// Every member, sorted by id (etcd's order).
pub fn list(backend: &Backend) -> Result<Vec<Member>> {
    let rtx = backend.db().begin_read()?;
    let t = rtx.open_table(MEMBERS)?;
    t.iter()?
        .map(|item| {
            let (_, v) = item?;
            Ok(Member::decode(v.value())?)
        })
        .collect()
}

/// Whether member `id` was removed from the cluster (etcd's `IsIDRemoved`).
pub fn is_removed(backend: &Backend, id: u64) -> Result<bool> {
    let rtx = backend.db().begin_read()?;
    Ok(rtx.open_table(MEMBERS_REMOVED)?.get(id)?.is_some())
}

/// Ids of the voting members (learners excluded).
pub fn voters(members: &[Member]) -> Vec<u64> {
    members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect()
}

/// A membership request found in a raft entry.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberRequest {
    AttrSet(MemberAttrSet),
    Update(MemberUpdateRequest),
}

/// Only the membership fields of `concordpb.InternalRequest` (same field numbers): decoding an
/// entry with it skips a key-value request's payload without copying it.
#[derive(Clone, PartialEq, prost::Message)]
struct Peek {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(message, optional, tag = "20")]
    member_attr_set: Option<MemberAttrSet>,
    #[prost(message, optional, tag = "21")]
    member_update: Option<MemberUpdateRequest>,
}

/// If the payload of a normal raft entry is a membership request: its proposal id and the
/// request. `None` for every other payload (key-value, lease), which `apply` handles.
pub fn peek(data: &[u8]) -> Option<(u64, MemberRequest)> {
    let p = Peek::decode(data).ok()?;
    if let Some(u) = p.member_update {
        return Some((p.id, MemberRequest::Update(u)));
    }
    p.member_attr_set.map(|a| (p.id, MemberRequest::AttrSet(a)))
}

/// Applies a membership request inside `wtx`. Deterministic: the same entry on the same rows
/// gives the same rows (and the same error) on every member. An update returns the member with
/// its new peer URLs, for the transport.
pub fn apply(wtx: &WriteTransaction, req: MemberRequest) -> Result<Option<Change>> {
    match req {
        MemberRequest::Update(u) => {
            let mut t = wtx.open_table(MEMBERS)?;
            let mut members = Vec::new();
            for item in t.iter()? {
                members.push(Member::decode(item?.1.value())?);
            }
            // etcd's ValidateConfigurationChange for ConfChangeUpdateNode.
            let Some(mut m) = members.iter().find(|m| m.id == u.id).cloned() else {
                return Err(Error::MemberNotFound);
            };
            if members
                .iter()
                .filter(|o| o.id != u.id)
                .any(|o| o.peer_ur_ls.iter().any(|url| u.peer_ur_ls.contains(url)))
            {
                return Err(Error::PeerUrlExist);
            }
            m.peer_ur_ls = u.peer_ur_ls;
            t.insert(m.id, m.encode_to_vec().as_slice())?;
            Ok(Some(Change::Updated(m)))
        }
        MemberRequest::AttrSet(a) => {
            let mut t = wtx.open_table(MEMBERS)?;
            let current = t.get(a.member_id)?.map(|v| Member::decode(v.value()));
            let Some(mut m) = current.transpose()? else {
                // etcd ignores attributes of a member that was removed meanwhile.
                tracing::warn!(
                    member_id = format!("{:x}", a.member_id),
                    "ignored attributes published by a member that is not in the cluster"
                );
                return Ok(None);
            };
            m.name = a.name;
            m.client_ur_ls = a.client_urls;
            t.insert(m.id, m.encode_to_vec().as_slice())?;
            Ok(None)
        }
    }
}

/// A membership change made by an applied raft conf change or MemberUpdate entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    Added(Member),
    Removed(u64),
    /// A member's peer URLs changed (MemberUpdate).
    Updated(Member),
}

/// Applies the membership side of a raft conf change inside `wtx` (raft's side, the conf state,
/// is the raft loop's). The context of an add is the member (`etcdserverpb.Member`, prost):
/// added, or for a member already there (the bootstrap entries, a promotion) its peer URLs and
/// learner flag updated, keeping the name and client URLs it published.
pub fn apply_conf_change(
    wtx: &WriteTransaction,
    kind: raft::eraftpb::ConfChangeType,
    node_id: u64,
    context: &[u8],
) -> Result<Option<Change>> {
    use raft::eraftpb::ConfChangeType as T;
    let mut t = wtx.open_table(MEMBERS)?;
    match kind {
        T::AddNode | T::AddLearnerNode => {
            if context.is_empty() {
                return Ok(None);
            }
            let mut m = Member::decode(context)?;
            m.id = node_id;
            m.is_learner = kind == T::AddLearnerNode;
            let current = t.get(node_id)?.map(|v| Member::decode(v.value()));
            if let Some(old) = current.transpose()? {
                m.name = old.name;
                m.client_ur_ls = old.client_ur_ls;
            }
            t.insert(node_id, m.encode_to_vec().as_slice())?;
            Ok(Some(Change::Added(m)))
        }
        T::RemoveNode => {
            t.remove(node_id)?;
            wtx.open_table(MEMBERS_REMOVED)?.insert(node_id, ())?;
            Ok(Some(Change::Removed(node_id)))
        }
    }
}

/// Checks that this member (`own`, from `--initial-advertise-peer-urls`) is one of the initial
/// members, with etcd's messages when it is not.
pub fn check_local_member(
    members: &[Member],
    own: u64,
    name: &str,
    own_urls: &[String],
    initial_cluster: &[(String, url::Url)],
) -> Result<()> {
    if members.iter().any(|m| m.id == own && m.name == name) {
        return Ok(());
    }
    let Some(listed) = members.iter().find(|m| m.name == name) else {
        return Err(Error::DataDir(format!(
            "couldn't find local name {name:?} in the initial cluster configuration; list this \
             member in --initial-cluster as {name}={}",
            own_urls.join(",")
        )));
    };
    let cluster = initial_cluster
        .iter()
        .map(|(n, u)| format!("{n}={}", url_string(u)))
        .collect::<Vec<_>>()
        .join(",");
    Err(Error::DataDir(format!(
        "--initial-cluster has {name}={} but missing from --initial-advertise-peer-urls={} \
         (--initial-cluster={cluster}); give this member the same peer URLs in both flags",
        listed.peer_ur_ls.join(","),
        own_urls.join(",")
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::cluster_id;
    use crate::proto::concordpb::{InternalRequest, internal_request::Request};
    use crate::proto::etcdserverpb::PutRequest;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn initial_members_match_etcds_ids() {
        // etcd's documented 3-member example: infra0..2 on 10.0.1.10..12 with token
        // etcd-cluster-1; ids are etcd's computeMemberId of each member's sorted peer URLs.
        let ic = vec![
            ("infra0".to_owned(), url("http://10.0.1.10:2380")),
            ("infra1".to_owned(), url("http://10.0.1.11:2380")),
            ("infra2".to_owned(), url("http://10.0.1.12:2380")),
        ];
        let ms = initial_members(&ic, "etcd-cluster-1");
        assert_eq!(ms.len(), 3);
        assert!(ms.windows(2).all(|w| w[0].id < w[1].id), "sorted by id");
        for m in &ms {
            assert_eq!(m.id, member_id(&m.peer_ur_ls, "etcd-cluster-1", None));
            assert!(m.client_ur_ls.is_empty() && !m.is_learner);
        }
        // Same flags, same cluster id, whatever the order of --initial-cluster.
        let mut rev = ic.clone();
        rev.reverse();
        let ids = |ms: &[Member]| ms.iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(
            cluster_id(&ids(&ms)),
            cluster_id(&ids(&initial_members(&rev, "etcd-cluster-1")))
        );
    }

    #[test]
    fn peek_finds_only_membership_requests() {
        let attr = MemberAttrSet {
            member_id: 9,
            name: "n".into(),
            client_urls: vec!["http://c:2379".into()],
        };
        let data = InternalRequest {
            id: 5,
            request: Some(Request::MemberAttrSet(attr.clone())),
            credentials: None,
        }
        .encode_to_vec();
        assert_eq!(peek(&data), Some((5, MemberRequest::AttrSet(attr))));
        let put = InternalRequest {
            id: 6,
            request: Some(Request::Put(PutRequest {
                key: b"k".to_vec(),
                value: vec![1; 100],
                ..Default::default()
            })),
            credentials: None,
        }
        .encode_to_vec();
        assert_eq!(peek(&put), None);
    }

    #[test]
    fn update_checks_like_etcd_and_removal_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let ms = initial_members(
            &[
                ("a".to_owned(), url("http://127.0.0.1:2380")),
                ("b".to_owned(), url("http://127.0.0.2:2380")),
            ],
            "t",
        );
        let wtx = b.db().begin_write().unwrap();
        write(&wtx, &ms).unwrap();
        let update = |id, u: &str| {
            MemberRequest::Update(MemberUpdateRequest {
                id,
                peer_ur_ls: vec![u.to_owned()],
            })
        };
        assert!(matches!(
            apply(&wtx, update(42, "http://127.0.0.3:2380")),
            Err(Error::MemberNotFound)
        ));
        assert!(matches!(
            apply(&wtx, update(ms[0].id, &ms[1].peer_ur_ls[0])),
            Err(Error::PeerUrlExist)
        ));
        let Some(Change::Updated(m)) =
            apply(&wtx, update(ms[0].id, "http://127.0.0.3:2380")).unwrap()
        else {
            panic!("no update");
        };
        assert_eq!(m.peer_ur_ls, vec!["http://127.0.0.3:2380".to_owned()]);
        apply_conf_change(
            &wtx,
            raft::eraftpb::ConfChangeType::RemoveNode,
            ms[1].id,
            &[],
        )
        .unwrap();
        wtx.commit().unwrap();
        assert_eq!(list(&b).unwrap(), vec![m]);
        assert!(is_removed(&b, ms[1].id).unwrap());
        assert!(!is_removed(&b, ms[0].id).unwrap());
    }

    #[test]
    fn attr_set_updates_a_known_member_and_ignores_unknown_ones() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let ms = initial_members(&[("a".to_owned(), url("http://127.0.0.1:2380"))], "t");
        let wtx = b.db().begin_write().unwrap();
        write(&wtx, &ms).unwrap();
        for id in [ms[0].id, 42] {
            let req = MemberRequest::AttrSet(MemberAttrSet {
                member_id: id,
                name: "a".into(),
                client_urls: vec!["http://127.0.0.1:2379".into()],
            });
            apply(&wtx, req).unwrap();
        }
        wtx.commit().unwrap();
        let got = list(&b).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].client_ur_ls,
            vec!["http://127.0.0.1:2379".to_owned()]
        );
        assert_eq!(voters(&got), vec![ms[0].id]);
    }
}
