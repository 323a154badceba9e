//! `v3lockpb.Lock`: Lock and Unlock, served by the recipes in `concurrency` with etcd 3.5's
//! semantics (`server/etcdserver/api/v3lock`). Errors arrive as etcd's do through its
//! in-process client: code `Unknown` with etcd's message ([`Error::via_client`]).
//!
//! [`Error::via_client`]: crate::error::Error::via_client

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::{AuthInfo, with_credentials};
use crate::concurrency;
use crate::proto::v3lockpb::{
    LockRequest, LockResponse, UnlockRequest, UnlockResponse, lock_server::Lock,
};
use crate::server::EtcdServer;

/// The Lock service of one member.
pub struct LockService {
    server: Arc<EtcdServer>,
}

impl LockService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        LockService { server }
    }
}

impl LockService {
    /// The caller's credentials: etcd serves Lock through an in-process client that passes
    /// them on to every KV call it makes.
    async fn credentials<T>(&self, req: &Request<T>) -> Result<Option<AuthInfo>, Status> {
        self.server
            .auth_info_of(req)
            .await
            .map_err(|e| e.via_client())
    }
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: Request<LockRequest>) -> Result<Response<LockResponse>, Status> {
        let info = self.credentials(&req).await?;
        let req = req.into_inner();
        let server = self.server.clone();
        let mut resp = concurrency::run_detached(move |cancel| {
            with_credentials(info, concurrency::lock(server, req.name, req.lease, cancel))
        })
        .await
        .map_err(|e| e.via_client())?;
        fill(&self.server, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn unlock(
        &self,
        req: Request<UnlockRequest>,
    ) -> Result<Response<UnlockResponse>, Status> {
        let info = self.credentials(&req).await?;
        let key = req.into_inner().key;
        let mut resp = with_credentials(info, concurrency::unlock(&self.server, &key))
            .await
            .map_err(|e| e.via_client())?;
        fill(&self.server, &mut resp.header);
        Ok(Response::new(resp))
    }
}

/// Completes a header with this member's ids and term, keeping its revision.
pub(crate) fn fill(
    server: &EtcdServer,
    h: &mut Option<crate::proto::etcdserverpb::ResponseHeader>,
) {
    let rev = h.as_ref().map_or(0, |h| h.revision);
    *h = Some(server.header(rev));
}
