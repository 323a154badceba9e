//! `etcdserverpb.Cluster`: `MemberList` for now (etcdctl's `--cluster` flags need it). Member
//! changes answer gRPC `Unimplemented` until the clustering issue lands.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb::{MemberListRequest, MemberListResponse, cluster_server::Cluster};
use crate::server::EtcdServer;

/// The Cluster service of one member.
pub struct ClusterService {
    server: Arc<EtcdServer>,
}

impl ClusterService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        ClusterService { server }
    }
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    async fn member_list(
        &self,
        _: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        if !self.server.raft_status().is_leader && self.server.raft_status().leader == 0 {
            return Err(crate::Error::NoLeader.into());
        }
        // etcd's cluster service fills ids and term but no revision.
        Ok(Response::new(MemberListResponse {
            header: Some(self.server.header(0)),
            members: self.server.members(),
        }))
    }
}
