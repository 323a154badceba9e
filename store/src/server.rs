//! The server: what the api layer calls. It validates limits that depend on configuration,
//! proposes writes to raft and waits for their result, and serves reads linearizably
//! (ReadIndex, then wait for the applied index) or serializably (local state).
//!
//! It owns the member's identity (member and cluster ids) and the response header. It never
//! touches redb tables directly except through `mvcc::ReadView` (and `membership` for the
//! member list). It sets up the peer transport for the raft loop but never talks to peers itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use redb::ReadableDatabase;
use tokio::sync::oneshot;

use crate::apply::{self, Applied};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lease::{Lessor, MAX_LEASE_TTL};
use crate::membership;
use crate::mvcc::ReadView;
use crate::proto::concordpb::{InternalRequest, MemberAttrSet, internal_request::Request};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, Member,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusResponse,
    TxnRequest, TxnResponse,
};
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveResponse, LeaseLeasesResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, LeaseStatus, LeaseTimeToLiveRequest,
    LeaseTimeToLiveResponse,
};
use crate::raft::{Msg, RaftConfig, RaftHandle, RaftStatus};
use crate::transport::{PeerService, Transport};
use crate::watch::WatchHub;

/// etcd's default backend quota when `--quota-backend-bytes` is 0: 2 GiB.
pub const DEFAULT_QUOTA_BYTES: i64 = 2 << 30;

/// What the server needs to know about itself and its limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub name: String,
    pub member_id: u64,
    pub cluster_id: u64,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub max_request_bytes: usize,
    pub max_txn_ops: usize,
    /// Backend quota in bytes (0 means etcd's default).
    pub quota_backend_bytes: i64,
    /// How long a proposal may wait before `etcdserver: request timed out`.
    pub request_timeout: Duration,
    /// How often watchers that asked for progress notifications get one.
    pub watch_progress_notify_interval: Duration,
    /// Auto-compaction policy, if enabled.
    pub auto_compaction: Option<crate::compactor::Policy>,
    pub raft: RaftConfig,
}

/// A running member.
pub struct EtcdServer {
    cfg: ServerConfig,
    backend: Arc<Backend>,
    raft: RaftHandle,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    /// Links to the other members (kept for membership changes).
    #[allow(dead_code)]
    transport: Arc<Transport>,
    next_id: AtomicU64,
}

impl EtcdServer {
    /// Starts the member on `backend`: loads raft state and starts the raft loop.
    pub fn start(cfg: ServerConfig, backend: Arc<Backend>) -> Result<Arc<EtcdServer>> {
        let hub = WatchHub::new(backend.clone())?;
        let lessor = Arc::new(Lessor::load(&backend)?);
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Raft("a member must be started inside a tokio runtime".into()))?;
        let transport = Transport::new(cfg.member_id, cfg.cluster_id, rt);
        for m in membership::list(&backend)? {
            transport.add_peer(m.id, m.peer_ur_ls);
        }
        let raft = crate::raft::start(
            backend.clone(),
            hub.clone(),
            lessor.clone(),
            cfg.raft.clone(),
            transport.clone(),
        )?;
        // Proposal ids: the member id's low 16 bits, then a counter seeded from the clock, as
        // etcd's idutil does, so ids stay unique across members and restarts.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let seed = ((cfg.member_id & 0xffff) << 48) | ((now_ms & 0xff_ffff_ffff) << 8);
        Ok(Arc::new(EtcdServer {
            cfg,
            backend,
            raft,
            hub,
            lessor,
            transport,
            next_id: AtomicU64::new(seed),
        }))
    }

    /// The watch hub of this member.
    pub fn hub(&self) -> &Arc<WatchHub> {
        &self.hub
    }

    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Resolves if the raft loop stops; the member cannot serve writes after that.
    pub async fn raft_stopped(&self) {
        self.raft.stopped().await
    }

    pub fn raft_status(&self) -> RaftStatus {
        self.raft.status()
    }

    /// A response header for this member at `revision`.
    pub fn header(&self, revision: i64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: self.cfg.cluster_id,
            member_id: self.cfg.member_id,
            revision,
            raft_term: self.raft.status().term,
        }
    }

    fn fill(&self, h: &mut Option<ResponseHeader>) {
        let rev = h.as_ref().map_or(0, |h| h.revision);
        *h = Some(self.header(rev));
    }

    /// Waits until this member may serve a linearizable read.
    pub async fn linearizable_read_barrier(&self) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.raft.send(Msg::ReadIndex { reply: tx })?;
        let index = tokio::time::timeout(self.cfg.request_timeout, rx)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Stopped)??;
        tokio::time::timeout(self.cfg.request_timeout, self.raft.wait_applied(index))
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// A read view of the last applied state.
    pub fn read_view(&self) -> Result<ReadView> {
        let rtx = self.backend.db().begin_read()?;
        ReadView::open(&rtx)
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        if !req.serializable {
            self.linearizable_read_barrier().await?;
        }
        let mut resp = apply::range(&self.read_view()?, &req)?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    fn quota(&self) -> i64 {
        if self.cfg.quota_backend_bytes <= 0 {
            DEFAULT_QUOTA_BYTES
        } else {
            self.cfg.quota_backend_bytes
        }
    }

    /// Whether the backend has outgrown `--quota-backend-bytes` (etcd's NOSPACE condition).
    pub fn over_quota(&self) -> bool {
        self.backend.size() as i64 > self.quota()
    }

    fn check_quota(&self, data_len: usize) -> Result<()> {
        if self.backend.size() as i64 + data_len as i64 > self.quota() {
            return Err(Error::NoSpace);
        }
        Ok(())
    }

    async fn propose(&self, request: Request) -> Result<Applied> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let writes = match &request {
            Request::Put(_) | Request::DeleteRange(_) => true,
            Request::Txn(t) => !apply::txn_is_read_only(t),
            Request::LeaseGrant(_) => true,
            Request::Compaction(_) | Request::LeaseRevoke(_) | Request::MemberAttrSet(_) => false,
        };
        let data = InternalRequest {
            id,
            request: Some(request),
        }
        .encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        if writes {
            self.check_quota(data.len())?;
        }
        let (tx, rx) = oneshot::channel();
        self.raft.send(Msg::Propose {
            id,
            data,
            reply: tx,
        })?;
        tokio::time::timeout(self.cfg.request_timeout, rx)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Stopped)?
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        match self.propose(Request::Put(req)).await? {
            Applied::Put(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(mismatch(other)),
        }
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        match self.propose(Request::DeleteRange(req)).await? {
            Applied::DeleteRange(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(mismatch(other)),
        }
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        match self.propose(Request::Txn(req)).await? {
            Applied::Txn(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(mismatch(other)),
        }
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        match self.propose(Request::Compaction(req)).await? {
            Applied::Compaction(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(mismatch(other)),
        }
    }

    /// etcd's minimum lease TTL: 1.5 election timeouts (in whole ticks), rounded up to seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        let hb = self.cfg.raft.heartbeat.as_millis().max(1);
        let election_ticks = self.cfg.raft.election_timeout.as_millis() / hb;
        let min_ms = (3 * election_ticks / 2) * hb;
        min_ms.div_ceil(1000) as i64
    }

    pub async fn lease_grant(&self, mut req: LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if req.ttl > MAX_LEASE_TTL {
            return Err(Error::LeaseTtlTooLarge);
        }
        while req.id == 0 {
            req.id = (self.next_id.fetch_add(1, Ordering::Relaxed) & (i64::MAX as u64)) as i64;
        }
        req.ttl = req.ttl.max(self.min_lease_ttl());
        match self.propose(Request::LeaseGrant(req)).await? {
            Applied::LeaseGrant(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(mismatch(other)),
        }
    }

    pub async fn lease_revoke(&self, req: LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        match self.propose(Request::LeaseRevoke(req)).await? {
            Applied::LeaseRevoke(mut r) => {
                self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(mismatch(other)),
        }
    }

    /// Keep-alive of one lease: its TTL, or 0 if it is unknown or expired (as etcd answers).
    pub fn lease_renew(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        let ttl = match self.lessor.renew(id, std::time::Instant::now()) {
            Ok(ttl) => ttl,
            Err(Error::LeaseNotFound) => 0,
            Err(e) => return Err(e),
        };
        Ok(LeaseKeepAliveResponse {
            header: Some(self.header(self.current_rev())),
            id,
            ttl,
        })
    }

    pub fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        let header = Some(self.header(self.current_rev()));
        let Some((remaining, granted)) =
            self.lessor.time_to_live(req.id, std::time::Instant::now())
        else {
            return Ok(LeaseTimeToLiveResponse {
                header,
                id: req.id,
                ttl: -1,
                ..Default::default()
            });
        };
        let keys = if req.keys {
            crate::lease::committed_keys(&self.backend, req.id)?
        } else {
            vec![]
        };
        Ok(LeaseTimeToLiveResponse {
            header,
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        })
    }

    pub fn lease_leases(&self) -> LeaseLeasesResponse {
        LeaseLeasesResponse {
            header: Some(self.header(self.current_rev())),
            leases: self
                .lessor
                .ids()
                .into_iter()
                .map(|id| LeaseStatus { id })
                .collect(),
        }
    }

    /// The store revision of the last applied write.
    pub fn current_rev(&self) -> i64 {
        self.hub.current_rev()
    }

    /// Runs the lessor's leader duties until dropped: promote/demote with leadership, and
    /// propose a revoke for every lease whose deadline passed (etcd checks every 500 ms).
    pub async fn run_lessor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let leader = self.raft.status().is_leader;
            if leader != self.lessor.is_primary() {
                if leader {
                    self.lessor
                        .promote(self.cfg.raft.election_timeout, std::time::Instant::now());
                } else {
                    self.lessor.demote();
                }
            }
            for id in self.lessor.take_expired(std::time::Instant::now()) {
                let server = self.clone();
                tokio::spawn(async move {
                    tracing::debug!(lease = format!("{id:x}"), "lease expired; revoking");
                    match server.lease_revoke(LeaseRevokeRequest { id }).await {
                        Ok(_) | Err(Error::LeaseNotFound) => {}
                        Err(e) => {
                            tracing::warn!(lease = format!("{id:x}"), error = %e, "failed to revoke expired lease; will retry");
                            server.lessor.revoke_failed(id);
                        }
                    }
                });
            }
        }
    }

    /// `Maintenance.Status` of this member.
    pub fn status(&self) -> Result<StatusResponse> {
        let st = self.raft.status();
        let view = self.read_view()?;
        let size = self.backend.size() as i64;
        Ok(StatusResponse {
            header: Some(self.header(crate::mvcc::KvRead::revs(&view).current)),
            version: crate::ETCD_VERSION.to_string(),
            db_size: size,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors: vec![],
            db_size_in_use: size,
            is_learner: self.is_learner()?,
        })
    }

    /// The members of the cluster as this member knows them, sorted by id.
    pub fn members(&self) -> Result<Vec<Member>> {
        membership::list(&self.backend)
    }

    /// Whether this member is a learner.
    pub fn is_learner(&self) -> Result<bool> {
        Ok(self
            .members()?
            .iter()
            .any(|m| m.id == self.cfg.member_id && m.is_learner))
    }

    /// The peer service of this member (incoming raft messages).
    pub fn peer_service(&self) -> PeerService {
        PeerService::new(self.cfg.member_id, self.cfg.cluster_id, self.raft.sender())
    }

    /// Proposes a membership request and waits until it is applied.
    async fn propose_member(&self, request: Request) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = InternalRequest {
            id,
            request: Some(request),
        }
        .encode_to_vec();
        let (tx, rx) = oneshot::channel();
        self.raft.send(Msg::ProposeMember {
            id,
            data,
            reply: tx,
        })?;
        tokio::time::timeout(self.cfg.request_timeout, rx)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Stopped)?
    }

    /// Publishes this member's name and client URLs through raft, as etcd does after every
    /// start, retrying until it is applied; then every member's MemberList shows them.
    pub async fn publish(&self) -> Result<()> {
        loop {
            let attrs = MemberAttrSet {
                member_id: self.cfg.member_id,
                name: self.cfg.name.clone(),
                client_urls: self.cfg.client_urls.clone(),
            };
            match self.propose_member(Request::MemberAttrSet(attrs)).await {
                Ok(()) => {
                    tracing::info!(
                        local_member_id = format!("{:x}", self.cfg.member_id),
                        local_member_name = %self.cfg.name,
                        local_member_client_urls = %self.cfg.client_urls.join(","),
                        cluster_id = format!("{:x}", self.cfg.cluster_id),
                        "published local member to cluster through raft"
                    );
                    return Ok(());
                }
                Err(Error::Stopped) => return Err(Error::Stopped),
                Err(e) => {
                    tracing::warn!(
                        local_member_id = format!("{:x}", self.cfg.member_id),
                        error = %e,
                        "failed to publish local member to cluster through raft; retrying"
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

impl crate::compactor::Target for Arc<EtcdServer> {
    fn current_rev(&self) -> i64 {
        self.read_view()
            .map(|v| crate::mvcc::KvRead::revs(&v).current)
            .unwrap_or(0)
    }

    fn is_leader(&self) -> bool {
        self.raft.status().is_leader
    }

    async fn compact(&self, rev: i64) -> Result<()> {
        EtcdServer::compact(
            self,
            CompactionRequest {
                revision: rev,
                physical: false,
            },
        )
        .await
        .map(|_| ())
    }
}

fn mismatch(a: Applied) -> Error {
    Error::Raft(format!("applied result does not match the request: {a:?}"))
}
