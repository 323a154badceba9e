//! `etcdserverpb.Maintenance`: Status, Alarm (list, raise, disarm), Defragment, Hash, HashKV and
//! Snapshot and MoveLeader, with etcd 3.5's semantics (`api/v3rpc/maintenance.go`). Downgrade is
//! not implemented: it answers gRPC `Unimplemented` (the generated default).
//!
//! Snapshot streams the file `snapshot::create` writes in 32 KiB chunks with `remaining_bytes`,
//! then one more message holding the SHA-256 of everything sent, as etcd does.

use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::proto::etcdserverpb::{
    AlarmRequest, AlarmResponse, DefragmentRequest, DefragmentResponse, HashKvRequest,
    HashKvResponse, HashRequest, HashResponse, MoveLeaderRequest, MoveLeaderResponse,
    SnapshotRequest, SnapshotResponse, StatusRequest, StatusResponse,
    maintenance_server::Maintenance,
};
use crate::server::EtcdServer;

/// Blob size of one snapshot message (etcd's `snapshotSendBufferSize`).
const SNAPSHOT_CHUNK: usize = 32 * 1024;

/// The Maintenance service of one member.
pub struct MaintenanceService {
    server: Arc<EtcdServer>,
}

impl MaintenanceService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        MaintenanceService { server }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

/// Sends the snapshot file in chunks, then its digest; runs on a blocking thread.
fn stream_file(
    file: crate::snapshot::SnapshotFile,
    tx: mpsc::Sender<Result<SnapshotResponse, Status>>,
) {
    let fail = |e: std::io::Error| {
        let _ = tx.blocking_send(Err(
            Error::Storage(format!("cannot read snapshot: {e}")).into()
        ));
    };
    let mut f = match std::fs::File::open(file.path()) {
        Ok(f) => f,
        Err(e) => return fail(e),
    };
    let total = match f.metadata() {
        Ok(m) => m.len(),
        Err(e) => return fail(e),
    };
    tracing::info!(total_bytes = total, "sending database snapshot to client");
    let mut sent = 0u64;
    let mut h = Sha256::new();
    while sent < total {
        let mut buf = vec![0u8; SNAPSHOT_CHUNK.min((total - sent) as usize)];
        if let Err(e) = f.read_exact(&mut buf) {
            return fail(e);
        }
        sent += buf.len() as u64;
        h.update(&buf);
        let resp = SnapshotResponse {
            header: None,
            remaining_bytes: total - sent,
            blob: buf,
        };
        if tx.blocking_send(Ok(resp)).is_err() {
            return;
        }
    }
    let digest = SnapshotResponse {
        header: None,
        remaining_bytes: 0,
        blob: h.finalize().to_vec(),
    };
    if tx.blocking_send(Ok(digest)).is_ok() {
        tracing::info!(
            total_bytes = total,
            "successfully sent database snapshot to client"
        );
    }
}

impl MaintenanceService {
    /// etcd's `authMaintenanceServer.isAuthenticated`: Defragment, Snapshot, Hash and HashKV
    /// are for the root role while auth is enabled. etcd answers these errors unconverted.
    async fn admin_only<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let info = self
            .server
            .auth_info_of(req)
            .await
            .map_err(crate::auth::unconverted_status)?;
        self.server
            .auth_check_admin(info.as_ref())
            .map_err(crate::auth::unconverted_status)
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.server.status()?))
    }

    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let info = self.server.auth_info_of(&req).await?;
        let resp = crate::auth::with_credentials(info, self.server.alarm(req.into_inner())).await?;
        Ok(Response::new(resp))
    }

    async fn defragment(
        &self,
        req: Request<DefragmentRequest>,
    ) -> Result<Response<DefragmentResponse>, Status> {
        self.admin_only(&req).await?;
        Ok(Response::new(self.server.defragment().await?))
    }

    async fn hash(&self, req: Request<HashRequest>) -> Result<Response<HashResponse>, Status> {
        self.admin_only(&req).await?;
        Ok(Response::new(self.server.hash().await?))
    }

    async fn hash_kv(
        &self,
        req: Request<HashKvRequest>,
    ) -> Result<Response<HashKvResponse>, Status> {
        self.admin_only(&req).await?;
        Ok(Response::new(self.server.hash_kv(req.into_inner()).await?))
    }

    async fn move_leader(
        &self,
        req: Request<MoveLeaderRequest>,
    ) -> Result<Response<MoveLeaderResponse>, Status> {
        self.server.move_leader(req.into_inner().target_id).await?;
        // etcd answers with an empty response, no header.
        Ok(Response::new(MoveLeaderResponse::default()))
    }

    async fn snapshot(
        &self,
        req: Request<SnapshotRequest>,
    ) -> Result<Response<SnapshotStream>, Status> {
        self.admin_only(&req).await?;
        let file = self.server.snapshot().await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || stream_file(file, tx));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
