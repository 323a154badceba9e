//! `etcdserverpb.Cluster`: `MemberList` (the members table, as every member holds it). Member
//! changes (add, remove, update, promote) answer gRPC `Unimplemented` until they land.

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
        req: Request<MemberListRequest>,
    ) -> Result<Response<MemberListResponse>, Status> {
        // As etcd: local membership, unless the client asks for a linearizable list.
        if req.into_inner().linearizable {
            self.server.linearizable_read_barrier().await?;
        }
        // etcd's cluster service fills ids and term but no revision.
        Ok(Response::new(MemberListResponse {
            header: Some(self.server.header(0)),
            members: self.server.members()?,
        }))
    }
}
