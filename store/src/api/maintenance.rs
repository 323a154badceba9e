//! `etcdserverpb.Maintenance`: `Status` for now. Every other rpc answers gRPC `Unimplemented`
//! (the generated default) until the maintenance issue lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb::{StatusRequest, StatusResponse, maintenance_server::Maintenance};
use crate::server::EtcdServer;

/// The Maintenance service of one member.
pub struct MaintenanceService {
    server: Arc<EtcdServer>,
}

impl MaintenanceService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        MaintenanceService { server }
    }
}

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    async fn status(&self, _: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        Ok(Response::new(self.server.status()?))
    }
}
