//! The server: what the api layer calls. It validates limits that depend on configuration,
//! proposes writes to raft and waits for their result, and serves reads linearizably
//! (ReadIndex, then wait for the applied index) or serializably (local state).
//!
//! It owns the member's identity (member and cluster ids) and the response header. It never
//! touches redb tables directly except through `mvcc::ReadView`, and never talks to peers.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prost::Message;
use redb::ReadableDatabase;
use tokio::sync::oneshot;

use crate::apply::{self, Applied};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::mvcc::ReadView;
use crate::proto::concordpb::{InternalRequest, internal_request::Request};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, Member,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusResponse,
    TxnRequest, TxnResponse,
};
use crate::raft::{Msg, RaftConfig, RaftHandle, RaftStatus};
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
    next_id: AtomicU64,
}

impl EtcdServer {
    /// Starts the member on `backend`: loads raft state and starts the raft loop.
    pub fn start(cfg: ServerConfig, backend: Arc<Backend>) -> Result<Arc<EtcdServer>> {
        let hub = WatchHub::new(backend.clone())?;
        let raft = crate::raft::start(backend.clone(), hub.clone(), cfg.raft.clone())?;
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
            Request::Compaction(_) => false,
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
            is_learner: false,
        })
    }

    /// The members of the cluster as this member knows them.
    pub fn members(&self) -> Vec<Member> {
        vec![Member {
            id: self.cfg.member_id,
            name: self.cfg.name.clone(),
            peer_ur_ls: self.cfg.peer_urls.clone(),
            client_ur_ls: self.cfg.client_urls.clone(),
            is_learner: false,
        }]
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
