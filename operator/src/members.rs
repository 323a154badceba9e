//! The etcd-facing side of the operator: the member list, per-member health and leadership, and
//! the membership calls (add learner, promote, remove, move leader), over the store crate's
//! generated gRPC clients.
//!
//! Members are dialled by the endpoint the caller gives (the controller passes pod DNS names
//! through the headless Service, `http(s)://<pod>.<svc>.<ns>.svc.<domain>:2379`; tests pass
//! loopback addresses), never a Service ClusterIP. `https` endpoints are dialled with the
//! [`MemberTls`] the client was made with (the CA that signs the members' client certificates
//! and, optionally, a client certificate), over rustls with the ring provider. Every call has a deadline; transient failures are
//! retried with `backon`, but a call whose outcome is unknown (a timeout after sending) is not
//! blindly repeated: the controller re-reads the member list and plans again.

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use concord_store::proto::etcdserverpb::{
    MemberAddRequest, MemberListRequest, MemberPromoteRequest, MemberRemoveRequest,
    MoveLeaderRequest, StatusRequest, cluster_client::ClusterClient,
    maintenance_client::MaintenanceClient,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How long to wait for a TCP connection to a member.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Deadline of every call.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// Errors talking to members.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// The endpoint is not a valid URI.
    #[error("bad member endpoint {0}")]
    Endpoint(String),
    /// Could not connect to the member.
    #[error("connecting to {endpoint}: {source}")]
    Connect {
        /// The endpoint dialled.
        endpoint: String,
        /// The transport error.
        source: tonic::transport::Error,
    },
    /// The member answered with an error status.
    #[error("{endpoint}: {}", status.message())]
    Rpc {
        /// The endpoint called.
        endpoint: String,
        /// The gRPC status.
        status: tonic::Status,
    },
    /// No endpoint answered.
    #[error("no member answered")]
    NoneReachable,
    /// TLS material that cannot be used.
    #[error("client TLS: {0}")]
    Tls(String),
    /// An `https` endpoint, but the client has no TLS settings (or the reverse).
    #[error("{0}: scheme does not match the client's TLS settings")]
    Scheme(String),
}

impl MemberError {
    /// The gRPC message, if the member answered with one.
    pub fn message(&self) -> Option<&str> {
        match self {
            MemberError::Rpc { status, .. } => Some(status.message()),
            _ => None,
        }
    }

    /// Whether it is worth retrying at once (connection trouble, unavailable, deadline).
    fn transient(&self) -> bool {
        match self {
            MemberError::Connect { .. } => true,
            MemberError::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
            ),
            _ => false,
        }
    }
}

/// One entry of the member list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Member ID.
    pub id: u64,
    /// Name; empty until the member started.
    pub name: String,
    /// Peer URLs.
    pub peer_urls: Vec<String>,
    /// Client URLs (empty until started).
    pub client_urls: Vec<String>,
    /// Whether it is a learner.
    pub learner: bool,
}

/// A member's answer to `Maintenance.Status`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberHealth {
    /// The answering member's ID.
    pub id: u64,
    /// The leader it knows (0: none).
    pub leader: u64,
    /// Cluster ID.
    pub cluster_id: u64,
    /// Server version.
    pub version: String,
    /// Raft applied index.
    pub applied_index: u64,
    /// Whether it is a learner.
    pub learner: bool,
    /// Errors it reports (alarms).
    pub errors: Vec<String>,
}

/// PEM material for dialling members over `https`, as a Kubernetes TLS Secret holds it
/// (`ca.crt`, `tls.crt`, `tls.key`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberTls {
    /// CA bundle that signs the members' serving certificates.
    pub ca_pem: Vec<u8>,
    /// Client certificate chain and key presented to members that ask for one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

fn has_pem(pem: &[u8], label: &str) -> bool {
    let text = String::from_utf8_lossy(pem);
    text.contains(&format!("-----BEGIN {label}-----"))
}

impl MemberTls {
    /// Checks that the CA and the optional certificate and key are PEM of the right kind.
    pub fn new(ca_pem: Vec<u8>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Result<Self, MemberError> {
        if !has_pem(&ca_pem, "CERTIFICATE") {
            return Err(MemberError::Tls("the CA holds no PEM certificate".into()));
        }
        if let Some((cert, key)) = &identity {
            if !has_pem(cert, "CERTIFICATE") {
                return Err(MemberError::Tls(
                    "the client certificate is not a PEM certificate".into(),
                ));
            }
            let key_text = String::from_utf8_lossy(key);
            if !(key_text.contains("-----BEGIN ") && key_text.contains("PRIVATE KEY-----")) {
                return Err(MemberError::Tls(
                    "the client key is not a PEM private key".into(),
                ));
            }
        }
        Ok(MemberTls { ca_pem, identity })
    }

    fn config(&self) -> ClientTlsConfig {
        let c = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert, key)) => c.identity(Identity::from_pem(cert, key)),
            None => c,
        }
    }
}

/// Dials members and performs membership calls: `http` endpoints in plain text, `https` ones
/// with the client's [`MemberTls`].
#[derive(Clone, Debug, Default)]
pub struct MemberClient {
    tls: Option<MemberTls>,
}

impl MemberClient {
    /// A client for plain-text (`http`) members.
    pub fn plain() -> MemberClient {
        MemberClient { tls: None }
    }

    /// A client for `https` members, verified with `tls`.
    pub fn with_tls(tls: MemberTls) -> MemberClient {
        MemberClient { tls: Some(tls) }
    }

    /// The TLS settings, if any.
    pub fn tls(&self) -> Option<&MemberTls> {
        self.tls.as_ref()
    }

    fn channel(&self, endpoint: &str) -> Result<Channel, MemberError> {
        let mut ep = Endpoint::from_shared(endpoint.to_owned())
            .map_err(|_| MemberError::Endpoint(endpoint.to_owned()))?
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(CALL_TIMEOUT);
        let https = endpoint.starts_with("https://");
        match (&self.tls, https) {
            (Some(tls), true) => {
                ep = ep
                    .tls_config(tls.config())
                    .map_err(|e| MemberError::Tls(e.to_string()))?;
            }
            (None, false) => {}
            _ => return Err(MemberError::Scheme(endpoint.to_owned())),
        }
        Ok(ep.connect_lazy())
    }
}

fn rpc(endpoint: &str) -> impl Fn(tonic::Status) -> MemberError + '_ {
    move |status| {
        // A connection failure surfaces as Unavailable with the transport error inside.
        MemberError::Rpc {
            endpoint: endpoint.to_owned(),
            status,
        }
    }
}

fn retry() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(1))
        .with_max_times(2)
}

impl MemberClient {
    /// The member list, linearizable, from the first endpoint that answers.
    pub async fn list(&self, endpoints: &[String]) -> Result<(String, Vec<Member>), MemberError> {
        let mut last = MemberError::NoneReachable;
        for ep in endpoints {
            let call = || async {
                let mut c = ClusterClient::new(self.channel(ep)?);
                c.member_list(MemberListRequest { linearizable: true })
                    .await
                    .map_err(rpc(ep))
            };
            match call.retry(retry()).when(MemberError::transient).await {
                Ok(resp) => {
                    let members = resp
                        .into_inner()
                        .members
                        .into_iter()
                        .map(|m| Member {
                            id: m.id,
                            name: m.name,
                            peer_urls: m.peer_ur_ls,
                            client_urls: m.client_ur_ls,
                            learner: m.is_learner,
                        })
                        .collect();
                    return Ok((ep.clone(), members));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `Maintenance.Status` of one member (no retry: an unanswered status means unhealthy).
    pub async fn status(&self, endpoint: &str) -> Result<MemberHealth, MemberError> {
        let mut c = MaintenanceClient::new(self.channel(endpoint)?);
        let r = c
            .status(StatusRequest {})
            .await
            .map_err(rpc(endpoint))?
            .into_inner();
        let header = r.header.unwrap_or_default();
        Ok(MemberHealth {
            id: header.member_id,
            leader: r.leader,
            cluster_id: header.cluster_id,
            version: r.version,
            applied_index: r.raft_applied_index,
            learner: r.is_learner,
            errors: r.errors,
        })
    }

    /// `MemberAdd` as a learner; returns the new member's ID.
    pub async fn add_learner(&self, endpoint: &str, peer_url: &str) -> Result<u64, MemberError> {
        let mut c = ClusterClient::new(self.channel(endpoint)?);
        let r = c
            .member_add(MemberAddRequest {
                peer_ur_ls: vec![peer_url.to_owned()],
                is_learner: true,
            })
            .await
            .map_err(rpc(endpoint))?
            .into_inner();
        Ok(r.member.map(|m| m.id).unwrap_or_default())
    }

    /// `MemberPromote`. etcd refuses until the learner has caught up with the leader
    /// ([`is_not_ready_to_promote`]).
    pub async fn promote(&self, endpoint: &str, id: u64) -> Result<(), MemberError> {
        let mut c = ClusterClient::new(self.channel(endpoint)?);
        c.member_promote(MemberPromoteRequest { id })
            .await
            .map_err(rpc(endpoint))?;
        Ok(())
    }

    /// `MemberRemove`.
    pub async fn remove(&self, endpoint: &str, id: u64) -> Result<(), MemberError> {
        let mut c = ClusterClient::new(self.channel(endpoint)?);
        c.member_remove(MemberRemoveRequest { id })
            .await
            .map_err(rpc(endpoint))?;
        Ok(())
    }

    /// `MoveLeader`, sent to the current leader's endpoint.
    pub async fn move_leader(&self, leader_endpoint: &str, target: u64) -> Result<(), MemberError> {
        let mut c = MaintenanceClient::new(self.channel(leader_endpoint)?);
        c.move_leader(MoveLeaderRequest { target_id: target })
            .await
            .map_err(rpc(leader_endpoint))?;
        Ok(())
    }
}

/// etcd's refusal to promote a learner that has not caught up yet (retry later).
pub fn is_not_ready_to_promote(e: &MemberError) -> bool {
    e.message()
        .is_some_and(|m| m.contains("can only promote a learner member which is in sync"))
}

/// The member is already gone (a removal that already happened).
pub fn is_member_not_found(e: &MemberError) -> bool {
    e.message().is_some_and(|m| m.contains("member not found"))
}

/// The member is already a voter (a promotion that already happened).
pub fn is_not_learner(e: &MemberError) -> bool {
    e.message()
        .is_some_and(|m| m.contains("can only promote a learner member"))
        && !is_not_ready_to_promote(e)
}

/// etcd refuses membership changes while it cannot prove the cluster healthy (the first seconds
/// after a start, or a member down that the change would make critical): nothing was changed,
/// retry later.
pub fn is_unhealthy_cluster(e: &MemberError) -> bool {
    e.message()
        .is_some_and(|m| m.contains("etcdserver: unhealthy cluster"))
}
