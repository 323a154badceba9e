//! `etcdserverpb.Maintenance`: `Status`, and `Alarm` listing (etcdctl's health check needs it). Every other rpc answers gRPC `Unimplemented`
//! (the generated default) until the maintenance issue lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, StatusRequest, StatusResponse,
    alarm_request::AlarmAction, maintenance_server::Maintenance,
};
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

    /// Lists alarms. concord raises NOSPACE while the backend is over its quota; raising or
    /// disarming alarms by hand is not implemented yet and says so.
    async fn alarm(&self, req: Request<AlarmRequest>) -> Result<Response<AlarmResponse>, Status> {
        let req = req.into_inner();
        if AlarmAction::try_from(req.action) != Ok(AlarmAction::Get) {
            return Err(Status::unimplemented(
                "concord: activating or deactivating alarms is not implemented yet",
            ));
        }
        let alarms = if self.server.over_quota() {
            vec![AlarmMember {
                member_id: self.server.config().member_id,
                alarm: AlarmType::Nospace as i32,
            }]
        } else {
            vec![]
        };
        let rev = self.server.read_view()?;
        Ok(Response::new(AlarmResponse {
            header: Some(self.server.header(crate::mvcc::KvRead::revs(&rev).current)),
            alarms,
        }))
    }
}
