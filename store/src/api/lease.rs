//! `etcdserverpb.Lease`: grant, revoke, keep-alive streams, time-to-live and listing.
//!
//! Grants and revokes go through raft (`server`); keep-alives and TTL queries are answered from
//! the leader's lessor, as etcd does: a follower forwards them to the leader over the peer
//! transport (with lease checkpointing on, a keep-alive of a lease with a checkpointed remaining
//! TTL first proposes resetting it). Unknown leases answer as etcd's do:
//! keep-alive with TTL 0, time-to-live with TTL -1.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::with_credentials;
use crate::proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse,
    LeaseLeasesRequest, LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse,
    LeaseTimeToLiveRequest, LeaseTimeToLiveResponse, lease_server::Lease,
};
use crate::server::EtcdServer;

/// The Lease service of one member.
pub struct LeaseService {
    server: Arc<EtcdServer>,
}

impl LeaseService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        LeaseService { server }
    }
}

type KeepAliveStream = Pin<Box<dyn Stream<Item = Result<LeaseKeepAliveResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Lease for LeaseService {
    async fn lease_grant(
        &self,
        req: Request<LeaseGrantRequest>,
    ) -> Result<Response<LeaseGrantResponse>, Status> {
        let info = self.server.auth_info_of(&req).await?;
        let resp = with_credentials(info, self.server.lease_grant(req.into_inner())).await?;
        Ok(Response::new(resp))
    }

    async fn lease_revoke(
        &self,
        req: Request<LeaseRevokeRequest>,
    ) -> Result<Response<LeaseRevokeResponse>, Status> {
        // The applier checks write permission on every key attached to the lease.
        let info = self.server.auth_info_of(&req).await?;
        let resp = with_credentials(info, self.server.lease_revoke(req.into_inner())).await?;
        Ok(Response::new(resp))
    }

    async fn lease_keep_alive(
        &self,
        req: Request<Streaming<LeaseKeepAliveRequest>>,
    ) -> Result<Response<KeepAliveStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel(64);
        let server = self.server.clone();
        tokio::spawn(async move {
            while let Ok(Some(req)) = inbound.message().await {
                let resp = server.lease_renew(req.id).await.map_err(Status::from);
                let failed = resp.is_err();
                if tx.send(resp).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> Result<Response<LeaseTimeToLiveResponse>, Status> {
        // etcd checks read permission on the attached keys only when they are asked for.
        let checked = if req.get_ref().keys {
            let info = self.server.auth_info_of(&req).await?;
            Some(
                self.server
                    .auth_check_lease_keys(info.as_ref(), req.get_ref().id)?,
            )
        } else {
            None
        };
        let resp = self.server.lease_time_to_live(req.into_inner()).await?;
        if let Some(rev) = checked {
            self.server.auth_recheck_revision(rev)?;
        }
        Ok(Response::new(resp))
    }

    async fn lease_leases(
        &self,
        _: Request<LeaseLeasesRequest>,
    ) -> Result<Response<LeaseLeasesResponse>, Status> {
        Ok(Response::new(self.server.lease_leases()))
    }
}
