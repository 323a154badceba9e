//! `v3electionpb.Election`: Campaign, Proclaim, Leader, Observe (server streaming) and Resign,
//! served by the recipes in `concurrency` with etcd 3.5's semantics
//! (`server/etcdserver/api/v3election`). Errors arrive as etcd's do through its in-process
//! client: code `Unknown` with etcd's message ([`Error::via_client`]).
//!
//! [`Error::via_client`]: crate::error::Error::via_client

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::api::lock::fill;
use crate::auth::{AuthInfo, with_credentials};
use crate::concurrency;
use crate::proto::v3electionpb::{
    CampaignRequest, CampaignResponse, LeaderRequest, LeaderResponse, ProclaimRequest,
    ProclaimResponse, ResignRequest, ResignResponse, election_server::Election,
};
use crate::server::EtcdServer;

/// The Election service of one member.
pub struct ElectionService {
    server: Arc<EtcdServer>,
}

impl ElectionService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        ElectionService { server }
    }
}

type ObserveStream = Pin<Box<dyn Stream<Item = Result<LeaderResponse, Status>> + Send>>;

impl ElectionService {
    /// The caller's credentials: etcd serves Election through an in-process client that
    /// passes them on to every KV call it makes.
    async fn credentials<T>(&self, req: &Request<T>) -> Result<Option<AuthInfo>, Status> {
        self.server
            .auth_info_of(req)
            .await
            .map_err(|e| e.via_client())
    }
}

#[tonic::async_trait]
impl Election for ElectionService {
    async fn campaign(
        &self,
        req: Request<CampaignRequest>,
    ) -> Result<Response<CampaignResponse>, Status> {
        let info = self.credentials(&req).await?;
        let req = req.into_inner();
        let server = self.server.clone();
        let mut resp = concurrency::run_detached(move |cancel| {
            with_credentials(
                info,
                concurrency::campaign(server, req.name, req.lease, req.value, cancel),
            )
        })
        .await
        .map_err(|e| e.via_client())?;
        fill(&self.server, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn proclaim(
        &self,
        req: Request<ProclaimRequest>,
    ) -> Result<Response<ProclaimResponse>, Status> {
        let info = self.credentials(&req).await?;
        let req = req.into_inner();
        let mut resp = with_credentials(
            info,
            concurrency::proclaim(&self.server, req.leader, &req.value),
        )
        .await
        .map_err(|e| e.via_client())?;
        fill(&self.server, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn leader(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<LeaderResponse>, Status> {
        let info = self.credentials(&req).await?;
        let name = req.into_inner().name;
        let mut resp = with_credentials(info, concurrency::leader(&self.server, &name))
            .await
            .map_err(|e| e.via_client())?;
        fill(&self.server, &mut resp.header);
        Ok(Response::new(resp))
    }

    async fn observe(
        &self,
        req: Request<LeaderRequest>,
    ) -> Result<Response<ObserveStream>, Status> {
        let info = self.credentials(&req).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(with_credentials(
            info,
            concurrency::observe(self.server.clone(), req.into_inner().name, tx),
        ));
        let server = self.server.clone();
        let stream = ReceiverStream::new(rx).map(move |mut r| {
            fill(&server, &mut r.header);
            Ok(r)
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn resign(
        &self,
        req: Request<ResignRequest>,
    ) -> Result<Response<ResignResponse>, Status> {
        let info = self.credentials(&req).await?;
        let leader = req.into_inner().leader;
        let mut resp = with_credentials(info, concurrency::resign(&self.server, leader))
            .await
            .map_err(|e| e.via_client())?;
        fill(&self.server, &mut resp.header);
        Ok(Response::new(resp))
    }
}
