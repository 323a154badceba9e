//! The server: what the api layer calls. It validates limits that depend on configuration,
//! proposes writes to raft and waits for their result, and serves reads linearizably
//! (ReadIndex, then wait for the applied index) or serializably (local state).
//!
//! It owns the member's identity (member and cluster ids) and the response header. It never
//! touches redb tables directly except through `mvcc::ReadView` (and `membership` for the
//! member list). It sets up the peer transport for the raft loop, and calls the leader itself
//! only for what only the leader knows, over the peer service ([`crate::transport::LeaderCalls`]):
//! lease keep-alives and time-to-live (the leader's lessor) and learner promotion (whether the
//! learner caught up).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use redb::ReadableDatabase;
use tokio::sync::oneshot;

use crate::apply::{self, Applied};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::lease::{Lessor, MAX_CHECKPOINT_BATCH, MAX_LEASE_TTL};
use crate::membership;
use crate::mvcc::ReadView;
use crate::proto::concordpb::peer_client::PeerClient;
use crate::proto::concordpb::{
    InternalRequest, LeaseCheckpoints, MemberAttrSet, internal_request::Request,
};
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashResponse, alarm_request::AlarmAction,
};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, Member,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusResponse,
    TxnRequest, TxnResponse,
};
use crate::proto::etcdserverpb::{
    LeaseCheckpoint, LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest,
    LeaseKeepAliveResponse, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseStatus, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use crate::proto::etcdserverpb::{
    MemberPromoteRequest, MemberPromoteResponse, MemberUpdateRequest,
};
use crate::raft::{Msg, RaftConfig, RaftHandle, RaftStatus};
use crate::transport::{LeaderCalls, PeerService, Transport};
use crate::watch::WatchHub;
use raft::prelude::{ConfChange, ConfChangeType};

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
    /// `--strict-reconfig-check`: refuse membership changes that could lose quorum.
    pub strict_reconfig_check: bool,
    /// `--experimental-enable-lease-checkpoint`: the leader checkpoints remaining lease TTLs.
    pub lease_checkpoint: bool,
    /// `--experimental-enable-lease-checkpoint-persist`: checkpoints are also persisted.
    pub lease_checkpoint_persist: bool,
    /// Interval between lease checkpoints (etcd's embed-only `LeaseCheckpointInterval`).
    pub lease_checkpoint_interval: Duration,
    /// TLS for connections to `https` peer URLs (`--peer-cert-file`..., `--peer-auto-tls`).
    pub peer_tls: Option<crate::tls::Tls>,
    pub raft: RaftConfig,
    /// `--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`, `--client-cert-auth`.
    pub auth: crate::auth::AuthConfig,
    /// `--cors`: origins allowed to read HTTP answers (`*`, or an empty list: any).
    pub cors: Vec<String>,
    /// `--host-whitelist`: `Host` names plain-HTTP requests may carry (`*`, or none: any).
    pub host_whitelist: Vec<String>,
}

/// Proposes `$req` and unwraps the `Applied::$variant` it must produce, with the header filled.
macro_rules! proposed {
    ($self:ident, $req:expr, $variant:ident) => {
        match $self.propose($req).await? {
            Applied::$variant(mut r) => {
                $self.fill(&mut r.header);
                Ok(r)
            }
            other => Err(mismatch(other)),
        }
    };
}

/// A running member.
pub struct EtcdServer {
    cfg: ServerConfig,
    backend: Arc<Backend>,
    raft: RaftHandle,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    /// Links to the other members (membership changes check who is connected).
    transport: Arc<Transport>,
    next_id: AtomicU64,
    /// Users, roles, tokens and permission checks (see `auth`).
    auth: crate::auth::AuthStore,
    /// What the HTTP health endpoints answered, for `/metrics`.
    health: crate::api::http::HealthCounts,
}

impl EtcdServer {
    /// Starts the member on `backend`: loads raft state and starts the raft loop.
    pub fn start(cfg: ServerConfig, backend: Arc<Backend>) -> Result<Arc<EtcdServer>> {
        let hub = WatchHub::new(backend.clone())?;
        let auth = crate::auth::AuthStore::new(backend.clone(), cfg.auth.clone())?;
        let lessor = Arc::new(Lessor::load(
            &backend,
            cfg.lease_checkpoint
                .then_some(cfg.lease_checkpoint_interval),
        )?);
        let rt = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::Raft("a member must be started inside a tokio runtime".into()))?;
        let transport = Transport::new(cfg.member_id, cfg.cluster_id, cfg.peer_tls.clone(), rt);
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
            auth,
            health: Default::default(),
        }))
    }

    /// What the HTTP health endpoints of this member answered so far.
    pub fn health_counts(&self) -> &crate::api::http::HealthCounts {
        &self.health
    }

    /// The auth store of this member.
    pub fn auth(&self) -> &crate::auth::AuthStore {
        &self.auth
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
        let index = tokio::time::timeout(self.cfg.request_timeout, self.raft.read_index())
            .await
            .map_err(|_| Error::Timeout)??;
        tokio::time::timeout(self.cfg.request_timeout, self.raft.wait_applied(index))
            .await
            .map_err(|_| Error::Timeout)?
    }

    /// A read view of the last applied state.
    pub fn read_view(&self) -> Result<ReadView> {
        ReadView::open(&self.backend)
    }

    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse> {
        if !req.serializable && self.raft.status().is_learner {
            return Err(Error::NotSupportedForLearner);
        }
        if !req.serializable {
            self.linearizable_read_barrier().await?;
        }
        // etcd's `doSerialize`: the caller's read permission, and no auth change meanwhile.
        self.auth_check_current(crate::auth::Access::Read, &req.key, &req.range_end)?;
        let mut resp = apply::range(&self.read_view()?, &req)?;
        self.auth_recheck_current()?;
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// The backend quota in bytes: `--quota-backend-bytes`, etcd's default for 0, none (`None`)
    /// when negative, as etcd.
    fn quota(&self) -> Option<i64> {
        match self.cfg.quota_backend_bytes {
            q if q < 0 => None,
            0 => Some(DEFAULT_QUOTA_BYTES),
            q => Some(q),
        }
    }

    /// etcd's `backendQuota.Cost`: what a request may add to the backend (0 = nothing).
    fn quota_cost(request: &Request) -> i64 {
        const KV_OVERHEAD: i64 = 256;
        const LEASE_OVERHEAD: i64 = 64;
        let put = |p: &PutRequest| KV_OVERHEAD + (p.key.len() + p.value.len()) as i64;
        let branch = |ops: &[crate::proto::etcdserverpb::RequestOp]| -> i64 {
            ops.iter()
                .map(|op| match &op.request {
                    Some(crate::proto::etcdserverpb::request_op::Request::RequestPut(p)) => put(p),
                    _ => 0,
                })
                .sum()
        };
        match request {
            Request::Put(p) => put(p),
            Request::Txn(t) => branch(&t.success).max(branch(&t.failure)),
            Request::LeaseGrant(_) => LEASE_OVERHEAD,
            _ => 0,
        }
    }

    /// etcd's quota check in front of Put, Txn and LeaseGrant: a request that would take the
    /// backend to its quota raises the NOSPACE alarm (through raft) and fails.
    async fn check_quota(&self, request: &Request) -> Result<()> {
        let cost = Self::quota_cost(request);
        let Some(quota) = self.quota() else {
            return Ok(());
        };
        if cost == 0 || self.backend.recent_size() as i64 + cost < quota {
            return Ok(());
        }
        let raise = AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id: self.cfg.member_id,
            alarm: AlarmType::Nospace as i32,
        };
        if let Err(e) = self.submit(Request::Alarm(raise)).await {
            tracing::warn!(error = %e, "failed to raise the NOSPACE alarm");
        }
        Err(Error::NoSpace)
    }

    async fn propose(&self, request: Request) -> Result<Applied> {
        self.check_quota(&request).await?;
        self.submit(request).await
    }

    /// Proposes `request` as is and waits until it is applied.
    pub(crate) async fn submit(&self, request: Request) -> Result<Applied> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        // With the credentials of the client request being served, if any (see `auth`).
        let data = crate::auth::wrap_proposal(id, request).encode_to_vec();
        if data.len() > self.cfg.max_request_bytes {
            return Err(Error::RequestTooLarge);
        }
        let (tx, rx) = oneshot::channel();
        self.raft.send(Msg::Propose {
            id,
            data,
            reply: tx,
        })?;
        self.wait_reply(rx).await
    }

    pub async fn put(&self, req: PutRequest) -> Result<PutResponse> {
        proposed!(self, Request::Put(req), Put)
    }

    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        proposed!(self, Request::DeleteRange(req), DeleteRange)
    }

    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse> {
        proposed!(self, Request::Txn(req), Txn)
    }

    pub async fn compact(&self, req: CompactionRequest) -> Result<CompactionResponse> {
        proposed!(self, Request::Compaction(req), Compaction)
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
        proposed!(self, Request::LeaseGrant(req), LeaseGrant)
    }

    pub async fn lease_revoke(&self, req: LeaseRevokeRequest) -> Result<LeaseRevokeResponse> {
        proposed!(self, Request::LeaseRevoke(req), LeaseRevoke)
    }

    /// Waits for the raft loop's answer to a request, up to the request timeout.
    async fn wait_reply<T>(&self, rx: oneshot::Receiver<Result<T>>) -> Result<T> {
        tokio::time::timeout(self.cfg.request_timeout, rx)
            .await
            .map_err(|_| Error::Timeout)?
            .map_err(|_| Error::Stopped)?
    }

    /// Proposes lease checkpoints through raft (etcd's checkpointer); leader only.
    async fn lease_checkpoint(&self, checkpoints: Vec<LeaseCheckpoint>) -> Result<()> {
        if !self.raft.status().is_leader {
            return Err(Error::NotLeader);
        }
        let req = LeaseCheckpoints {
            checkpoints,
            persist: self.cfg.lease_checkpoint_persist,
        };
        match self.propose(Request::LeaseCheckpoint(req)).await? {
            Applied::LeaseCheckpoint(_) => Ok(()),
            other => Err(mismatch(other)),
        }
    }

    /// Keep-alive of one lease (etcd's `LeaseRenew`): its TTL, or 0 if it is unknown or expired
    /// (as etcd answers). Only the leader's lessor renews; a follower forwards to the leader.
    pub async fn lease_renew(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        let resp = self
            .at_leader(
                || self.renew_as_leader(id),
                |mut c| async move { c.lease_renew(LeaseKeepAliveRequest { id }).await },
            )
            .await;
        let ttl = match resp {
            Ok(r) => r.ttl,
            Err(Error::LeaseNotFound) => 0,
            Err(e) => return Err(e),
        };
        Ok(LeaseKeepAliveResponse {
            header: Some(self.header(self.current_rev())),
            id,
            ttl,
        })
    }

    /// etcd's `LeaseTimeToLive`: remaining and granted TTL (and keys) from the leader's lessor,
    /// forwarded there by a follower; an unknown lease answers TTL -1.
    pub async fn lease_time_to_live(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        let id = req.id;
        let resp = self
            .at_leader(
                || self.time_to_live_as_leader(req),
                |mut c| async move { c.lease_time_to_live(req).await },
            )
            .await;
        let header = Some(self.header(self.current_rev()));
        match resp {
            Ok(r) => Ok(LeaseTimeToLiveResponse { header, ..r }),
            Err(Error::LeaseNotFound) => Ok(LeaseTimeToLiveResponse {
                header,
                id,
                ttl: -1,
                ..Default::default()
            }),
            Err(e) => Err(e),
        }
    }

    /// Runs a request only the leader answers (its lessor, its view of the learners'
    /// progress): `local` when this member leads, else `forward` to the leader over the peer
    /// transport. As etcd's forwarding loop,
    /// it asks again every 50 ms while there is no leader, the leader's lessor is not primary
    /// yet or the leader cannot be reached, up to the request timeout.
    async fn at_leader<T, L, LF, F, FF>(&self, local: L, forward: F) -> Result<T>
    where
        L: Fn() -> LF,
        LF: std::future::Future<Output = Result<T>>,
        F: Fn(PeerClient<tonic::transport::Channel>) -> FF,
        FF: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = tokio::time::Instant::now() + self.cfg.request_timeout;
        loop {
            let leader = self.raft.status().leader;
            let result = if leader == self.cfg.member_id {
                local().await
            } else if leader == 0 {
                Err(Error::NoLeader)
            } else {
                match self.transport.client(leader).await {
                    Ok(client) => forward(client)
                        .await
                        .map(tonic::Response::into_inner)
                        .map_err(|s| Error::from_status(&s)),
                    Err(e) => Err(e),
                }
            };
            match result {
                Err(e @ (Error::NotLeader | Error::NoLeader | Error::Raft(_) | Error::Timeout)) => {
                    if tokio::time::Instant::now() >= deadline {
                        tracing::warn!(error = %e, leader = format!("{leader:x}"), "request found no leader to answer it");
                        return Err(Error::Timeout);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    /// The leader's side of a keep-alive. A lease with a checkpointed remaining TTL first has
    /// it reset through raft, as etcd does.
    async fn renew_as_leader(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        self.wait_applied_commit().await?;
        if self.lessor.needs_checkpoint_reset(id) {
            let reset = LeaseCheckpoint {
                id,
                remaining_ttl: 0,
            };
            self.lease_checkpoint(vec![reset]).await?;
        }
        let ttl = self.lessor.renew(id, std::time::Instant::now())?;
        Ok(LeaseKeepAliveResponse {
            header: None,
            id,
            ttl,
        })
    }

    /// The leader's side of a time-to-live query.
    async fn time_to_live_as_leader(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        if !self.lessor.is_primary() {
            return Err(Error::NotLeader);
        }
        self.wait_applied_commit().await?;
        let (remaining, granted) = self
            .lessor
            .time_to_live(req.id, std::time::Instant::now())
            .ok_or(Error::LeaseNotFound)?;
        let keys = if req.keys {
            crate::lease::committed_keys(&self.backend, req.id)?
        } else {
            vec![]
        };
        Ok(LeaseTimeToLiveResponse {
            header: None,
            id: req.id,
            ttl: remaining,
            granted_ttl: granted,
            keys,
        })
    }

    /// etcd's `waitAppliedIndex`: waits until everything this member knows committed is
    /// applied, so the leader's lessor has seen every grant and revoke.
    async fn wait_applied_commit(&self) -> Result<()> {
        let commit = self.raft.status().commit;
        tokio::time::timeout(self.cfg.request_timeout, self.raft.wait_applied(commit))
            .await
            .map_err(|_| Error::Timeout)?
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

    /// Runs the lessor's leader duties until dropped: promote/demote with leadership, propose a
    /// revoke for every lease whose deadline passed, and propose due lease checkpoints in
    /// batches (etcd checks both every 500 ms).
    pub async fn run_lessor(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        let mut status = self.raft.subscribe();
        loop {
            // A leadership change promotes or demotes the lessor at once, as etcd's raft loop
            // does, so keep-alives never wait for the next tick on a new leader.
            tokio::select! {
                _ = tick.tick() => {}
                changed = status.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
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
            // etcd's checkpointScheduledLeases: up to leaseCheckpointRate/2 full batches a tick.
            for _ in 0..500 {
                let due = self
                    .lessor
                    .take_due_checkpoints(std::time::Instant::now(), MAX_CHECKPOINT_BATCH);
                let full = due.len() == MAX_CHECKPOINT_BATCH;
                if due.is_empty() {
                    break;
                }
                let cps = due
                    .into_iter()
                    .map(|(id, remaining_ttl)| LeaseCheckpoint { id, remaining_ttl })
                    .collect();
                if let Err(e) = self.lease_checkpoint(cps).await {
                    tracing::warn!(error = %e, "failed to checkpoint leases");
                    break;
                }
                if !full {
                    break;
                }
            }
        }
    }

    /// `Maintenance.Status` of this member. `errors` lists a missing leader and every raised
    /// alarm in etcd's words (`memberID:<id> alarm:NOSPACE `).
    pub fn status(&self) -> Result<StatusResponse> {
        let st = self.raft.status();
        // Each read below opens and closes its own transaction (see `Backend::db`).
        let is_learner = self.is_learner()?;
        let mut errors = Vec::new();
        if st.leader == 0 {
            errors.push(Error::NoLeader.to_string());
        }
        for a in self.alarms()? {
            errors.push(alarm_text(&a));
        }
        let size = self.backend.size() as i64;
        Ok(StatusResponse {
            header: Some(self.header(self.read_revs()?.current)),
            version: crate::ETCD_VERSION.to_string(),
            db_size: size,
            leader: st.leader,
            raft_index: st.commit,
            raft_term: st.term,
            raft_applied_index: st.applied,
            errors,
            db_size_in_use: size,
            is_learner,
        })
    }

    /// Current and compaction revisions of the last applied state.
    pub fn read_revs(&self) -> Result<crate::mvcc::Revs> {
        Ok(crate::mvcc::KvRead::revs(&self.read_view()?))
    }

    /// The raised alarms in the applied state, in (member id, alarm) order.
    pub fn alarms(&self) -> Result<Vec<AlarmMember>> {
        let rtx = self.backend.db().begin_read()?;
        let t = rtx.open_table(crate::backend::ALARMS)?;
        let mut out = Vec::new();
        for item in redb::ReadableTable::iter(&t)? {
            let (k, _) = item?;
            let (member_id, alarm) = k.value();
            out.push(AlarmMember { member_id, alarm });
        }
        Ok(out)
    }

    /// `Maintenance.Alarm`: GET lists the raised alarms (all, or those of one type) after a
    /// linearizable barrier; ACTIVATE and DEACTIVATE go through raft, as in etcd.
    pub async fn alarm(&self, req: AlarmRequest) -> Result<AlarmResponse> {
        let mut resp = match AlarmAction::try_from(req.action) {
            Ok(AlarmAction::Get) => {
                self.linearizable_read_barrier().await?;
                let alarms = self
                    .alarms()?
                    .into_iter()
                    .filter(|a| req.alarm == AlarmType::None as i32 || a.alarm == req.alarm)
                    .collect();
                AlarmResponse {
                    header: Some(self.header(self.read_revs()?.current)),
                    alarms,
                }
            }
            _ => match self.submit(Request::Alarm(req)).await? {
                Applied::Alarm(r) => r,
                other => return Err(mismatch(other)),
            },
        };
        for a in &resp.alarms {
            if AlarmAction::try_from(req.action) != Ok(AlarmAction::Get) {
                tracing::warn!(
                    alarm = %alarm_text(a),
                    action = ?AlarmAction::try_from(req.action),
                    "alarm changed"
                );
            }
        }
        self.fill(&mut resp.header);
        Ok(resp)
    }

    /// The backend of this member (maintenance: hashes, snapshots, defragmentation).
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }

    /// Runs a maintenance task that reads the committed tables alone (hashes, snapshots,
    /// defragmentation) off the async threads, once the raft loop has committed every applied
    /// entry (it keeps key-value writes in an open transaction for a while; see `overlay`).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Backend) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        match self.raft.commit().await {
            // A stopped loop has nothing open that could still commit.
            Ok(()) | Err(Error::Stopped) => {}
            Err(e) => return Err(e),
        }
        let backend = self.backend.clone();
        tokio::task::spawn_blocking(move || f(&backend))
            .await
            .map_err(|e| Error::Storage(format!("maintenance task failed: {e}")))?
    }

    /// `Maintenance.Hash`: see `hash::hash`.
    pub async fn hash(&self) -> Result<HashResponse> {
        let (hash, rev) = self.blocking(crate::hash::hash).await?;
        Ok(HashResponse {
            header: Some(self.header(rev)),
            hash,
        })
    }

    /// `Maintenance.HashKV`: see `hash::hash_kv`.
    pub async fn hash_kv(&self, req: HashKvRequest) -> Result<HashKvResponse> {
        let h = self
            .blocking(move |b| crate::hash::hash_kv(b, req.revision))
            .await?;
        Ok(HashKvResponse {
            header: Some(self.header(h.current)),
            hash: h.hash,
            compact_revision: h.compact_revision,
        })
    }

    /// `Maintenance.Defragment`: compacts the database file (see `Backend::defragment`).
    pub async fn defragment(&self) -> Result<DefragmentResponse> {
        tracing::info!("starting defragment");
        let (before, after) = self.blocking(|b| b.defragment()).await?;
        tracing::info!(
            current_db_size_bytes_diff = after as i64 - before as i64,
            current_db_size_bytes = after,
            "finished defragment"
        );
        Ok(DefragmentResponse {
            header: Some(self.header(self.current_rev())),
        })
    }

    /// Writes a snapshot file of the applied state (see `snapshot::create`).
    pub async fn snapshot(&self) -> Result<crate::snapshot::SnapshotFile> {
        self.blocking(crate::snapshot::create).await
    }

    /// The members of the cluster as this member knows them, sorted by id.
    pub fn members(&self) -> Result<Vec<Member>> {
        membership::list(&self.backend)
    }

    /// Whether this member is a learner.
    pub fn is_learner(&self) -> Result<bool> {
        Ok(self.raft.status().is_learner)
    }

    /// The peer service of this member (incoming raft messages).
    pub fn peer_service(self: &Arc<Self>) -> PeerService {
        PeerService::new(
            self.cfg.member_id,
            self.cfg.cluster_id,
            self.raft.sender(),
            self.backend.clone(),
            self.clone(),
        )
    }

    /// Proposes a membership request and waits until it is applied.
    async fn propose_member(&self, request: Request) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let data = InternalRequest {
            id,
            request: Some(request),
            credentials: None,
        }
        .encode_to_vec();
        let (tx, rx) = oneshot::channel();
        self.raft.send(Msg::ProposeMember {
            id,
            data,
            reply: tx,
        })?;
        self.wait_reply(rx).await
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

/// Membership changes (etcd's `AddMember`, `RemoveMember`, `PromoteMember`), with etcd's checks:
/// the `--strict-reconfig-check` quorum rules, at most one learner, unique peer URLs, and
/// promotion only of a learner whose log is within 90% of the leader's.
impl EtcdServer {
    /// Proposes a raft conf change and waits until it is applied.
    async fn propose_conf_change(&self, cc: ConfChange) -> Result<()> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.raft
            .send(Msg::ProposeConfChange { id, cc, reply: tx })?;
        self.wait_reply(rx).await
    }

    /// Adds a member (a learner, or a voter) with `peer_urls`; returns it and the new list.
    pub async fn member_add(
        &self,
        peer_urls: &[String],
        is_learner: bool,
    ) -> Result<(Member, Vec<Member>)> {
        let mut urls = Vec::with_capacity(peer_urls.len());
        for u in peer_urls {
            let parsed = url::Url::parse(u).map_err(|_| Error::MemberBadUrls)?;
            if !matches!(parsed.scheme(), "http" | "https")
                || parsed.host_str().is_none()
                || parsed.port().is_none()
                || parsed.path() != "/"
            {
                return Err(Error::MemberBadUrls);
            }
            urls.push(crate::ids::url_string(&parsed));
        }
        if urls.is_empty() {
            return Err(Error::MemberBadUrls);
        }
        urls.sort();
        let members = self.members()?;
        if self.cfg.strict_reconfig_check && !is_learner && !ready_to_add_voter(&members) {
            return Err(Error::MemberNotEnoughStarted);
        }
        if self.cfg.strict_reconfig_check && !self.connected_fully(&members) {
            return Err(Error::Unhealthy);
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        // etcd's MemberAdd: no cluster name, the time in seconds.
        let id = crate::ids::member_id(&urls, "", Some(now));
        // etcd's ValidateConfigurationChange, in its order.
        if members.iter().any(|m| m.id == id) {
            return Err(Error::MemberExist);
        }
        if members
            .iter()
            .any(|m| m.peer_ur_ls.iter().any(|u| urls.contains(u)))
        {
            return Err(Error::PeerUrlExist);
        }
        if is_learner && members.iter().any(|m| m.is_learner) {
            return Err(Error::TooManyLearners);
        }
        let member = Member {
            id,
            name: String::new(),
            peer_ur_ls: urls,
            client_ur_ls: vec![],
            is_learner,
        };
        let change_type = if is_learner {
            ConfChangeType::AddLearnerNode
        } else {
            ConfChangeType::AddNode
        };
        self.propose_conf_change(ConfChange {
            change_type,
            node_id: id,
            context: member.encode_to_vec().into(),
            ..Default::default()
        })
        .await?;
        tracing::info!(
            member_id = format!("{id:x}"),
            peer_urls = %member.peer_ur_ls.join(","),
            is_learner,
            "added member"
        );
        Ok((member, self.members()?))
    }

    /// Removes member `id`; returns the new list.
    pub async fn member_remove(&self, id: u64) -> Result<Vec<Member>> {
        let members = self.members()?;
        let Some(m) = members.iter().find(|m| m.id == id) else {
            return Err(Error::MemberNotFound);
        };
        if self.cfg.strict_reconfig_check && !m.is_learner {
            if !ready_to_remove_voter(&members, id) {
                return Err(Error::MemberNotEnoughStarted);
            }
            // A member that is down is safe to remove; otherwise the rest must keep a quorum.
            let down = id != self.cfg.member_id && self.transport.active_since(id).is_none();
            let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
            let active = self.connected_since_health_interval(&voters);
            if !down && active - 1 < 1 + (voters.len() - 1) / 2 {
                return Err(Error::Unhealthy);
            }
        }
        self.propose_conf_change(ConfChange {
            change_type: ConfChangeType::RemoveNode,
            node_id: id,
            ..Default::default()
        })
        .await?;
        tracing::info!(member_id = format!("{id:x}"), "removed member");
        self.members()
    }

    /// Gives member `id` new peer URLs (etcd's `UpdateMember`); returns the new list. The
    /// checks (member not found, peer URLs already exist) run when the entry is applied, as
    /// etcd's do, and every member's transport then uses the new URLs.
    pub async fn member_update(&self, id: u64, peer_urls: Vec<String>) -> Result<Vec<Member>> {
        let urls = peer_urls.join(",");
        self.propose_member(Request::MemberUpdate(MemberUpdateRequest {
            id,
            peer_ur_ls: peer_urls,
        }))
        .await?;
        tracing::info!(member_id = format!("{id:x}"), peer_urls = %urls, "updated member");
        self.members()
    }

    /// Promotes learner `id` to a voter; returns the new list. Only the leader knows whether
    /// the learner caught up, so another member forwards the request to the leader.
    pub async fn member_promote(&self, id: u64) -> Result<Vec<Member>> {
        let resp = self
            .at_leader(
                || self.promote_as_leader(id),
                |mut c| async move { c.member_promote(MemberPromoteRequest { id }).await },
            )
            .await?;
        Ok(resp.members)
    }

    /// The leader's side of a promotion: etcd's checks, then the conf change.
    async fn promote_as_leader(&self, id: u64) -> Result<MemberPromoteResponse> {
        let members = self.members()?;
        let Some(m) = members.iter().find(|m| m.id == id) else {
            return Err(Error::MemberNotFound);
        };
        if !m.is_learner {
            return Err(Error::MemberNotLearner);
        }
        let (tx, rx) = oneshot::channel();
        self.raft.send(Msg::Progress { reply: tx })?;
        let Some(progress) = rx.await.map_err(|_| Error::Stopped)? else {
            return Err(Error::NotLeader);
        };
        let leader_match = progress.get(&self.cfg.member_id).copied().unwrap_or(0);
        let learner_match = progress.get(&id).copied().unwrap_or(0);
        // etcd's readyPercent: the learner must have 90% of the leader's log.
        if (learner_match as f64) < (leader_match as f64) * 0.9 {
            return Err(Error::LearnerNotReady);
        }
        if self.cfg.strict_reconfig_check && !ready_to_promote(&members) {
            return Err(Error::MemberNotEnoughStarted);
        }
        let mut promoted = m.clone();
        promoted.is_learner = false;
        self.propose_conf_change(ConfChange {
            change_type: ConfChangeType::AddNode,
            node_id: id,
            context: promoted.encode_to_vec().into(),
            ..Default::default()
        })
        .await?;
        tracing::info!(member_id = format!("{id:x}"), "promoted learner to voter");
        Ok(MemberPromoteResponse {
            header: None,
            members: self.members()?,
        })
    }

    /// etcd's `MoveLeader`: on the leader only, hands leadership to voting member `transferee`
    /// and waits until this member sees it lead.
    pub async fn move_leader(&self, transferee: u64) -> Result<()> {
        let lead = self.raft.status().leader;
        if lead != self.cfg.member_id {
            return Err(Error::NotLeader);
        }
        if !self
            .members()?
            .iter()
            .any(|m| m.id == transferee && !m.is_learner)
        {
            return Err(Error::BadLeaderTransferee);
        }
        tracing::info!(
            local_member_id = format!("{:x}", self.cfg.member_id),
            current_leader_member_id = format!("{lead:x}"),
            transferee_member_id = format!("{transferee:x}"),
            "leadership transfer starting"
        );
        let start = std::time::Instant::now();
        self.raft.send(Msg::TransferLeader { to: transferee })?;
        tokio::time::timeout(self.cfg.request_timeout, self.raft.wait_leader(transferee))
            .await
            .map_err(|_| Error::TimeoutLeaderTransfer)??;
        tracing::info!(
            local_member_id = format!("{:x}", self.cfg.member_id),
            old_leader_member_id = format!("{lead:x}"),
            new_leader_member_id = format!("{transferee:x}"),
            took = ?start.elapsed(),
            "leadership transfer finished"
        );
        Ok(())
    }

    /// Voting members (this one included) whose stream has worked for etcd's health interval.
    fn connected_since_health_interval(&self, voters: &[&Member]) -> usize {
        let since = std::time::Instant::now().checked_sub(HEALTH_INTERVAL);
        voters
            .iter()
            .filter(|m| {
                m.id == self.cfg.member_id
                    || self
                        .transport
                        .active_since(m.id)
                        .is_some_and(|t| since.is_none_or(|s| t <= s))
            })
            .count()
    }

    /// etcd's `isConnectedFullySince`: every voting member connected for the health interval.
    fn connected_fully(&self, members: &[Member]) -> bool {
        let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
        self.connected_since_health_interval(&voters) == voters.len()
    }
}

/// etcd's `HealthInterval`: how long members must have been connected before a membership
/// change counts them.
const HEALTH_INTERVAL: Duration = Duration::from_secs(5);

/// etcd's `IsStarted`: a member that published its name.
fn started(m: &Member) -> bool {
    !m.name.is_empty()
}

/// etcd's `IsReadyToAddVotingMember`.
fn ready_to_add_voter(members: &[Member]) -> bool {
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let nmembers = voters.len() + 1;
    let nstarted = voters.iter().filter(|m| started(m)).count();
    // Adding a second member to a one-member cluster (restoring data) is allowed.
    if nstarted == 1 && nmembers == 2 {
        return true;
    }
    // At least a quorum (nmembers / 2 + 1) started.
    nstarted > nmembers / 2
}

/// etcd's `IsReadyToRemoveVotingMember`.
fn ready_to_remove_voter(members: &[Member], id: u64) -> bool {
    let rest: Vec<&Member> = members
        .iter()
        .filter(|m| !m.is_learner && m.id != id)
        .collect();
    let nstarted = rest.iter().filter(|m| started(m)).count();
    nstarted > rest.len() / 2
}

/// etcd's `IsReadyToPromoteMember` (the learner counts as a started voter).
fn ready_to_promote(members: &[Member]) -> bool {
    let voters: Vec<&Member> = members.iter().filter(|m| !m.is_learner).collect();
    let nmembers = voters.len() + 1;
    let nstarted = voters.iter().filter(|m| started(m)).count() + 1;
    // At least a quorum (nmembers / 2 + 1) started.
    nstarted > nmembers / 2
}

#[tonic::async_trait]
impl LeaderCalls for EtcdServer {
    async fn renew_as_leader(&self, id: i64) -> Result<LeaseKeepAliveResponse> {
        EtcdServer::renew_as_leader(self, id).await
    }

    async fn time_to_live_as_leader(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse> {
        EtcdServer::time_to_live_as_leader(self, req).await
    }

    async fn promote_as_leader(&self, id: u64) -> Result<MemberPromoteResponse> {
        EtcdServer::promote_as_leader(self, id).await
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

/// An alarm as etcd prints it (gogoproto's compact text of `AlarmMember`).
pub fn alarm_text(a: &AlarmMember) -> String {
    let name = AlarmType::try_from(a.alarm)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| a.alarm.to_string());
    format!("memberID:{} alarm:{name} ", a.member_id)
}

fn mismatch(a: Applied) -> Error {
    Error::Raft(format!("applied result does not match the request: {a:?}"))
}
