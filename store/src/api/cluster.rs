//! `etcdserverpb.Cluster`: `MemberList` (the members table, as every member holds it),
//! `MemberAdd` (voter or learner), `MemberRemove`, `MemberUpdate` (new peer URLs) and
//! `MemberPromote`, with etcd's rules and errors (in `server` and `membership`).

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::proto::etcdserverpb::{
    Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    MemberUpdateRequest, MemberUpdateResponse, cluster_server::Cluster,
};
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
    async fn member_add(
        &self,
        req: Request<MemberAddRequest>,
    ) -> Result<Response<MemberAddResponse>, Status> {
        let req = req.into_inner();
        let (member, members) = self
            .server
            .member_add(&req.peer_ur_ls, req.is_learner)
            .await?;
        Ok(Response::new(MemberAddResponse {
            header: Some(self.server.header(0)),
            // etcd answers the new member with its id, peer URLs and learner flag only.
            member: Some(Member {
                id: member.id,
                name: String::new(),
                peer_ur_ls: member.peer_ur_ls,
                client_ur_ls: vec![],
                is_learner: member.is_learner,
            }),
            members,
        }))
    }

    async fn member_remove(
        &self,
        req: Request<MemberRemoveRequest>,
    ) -> Result<Response<MemberRemoveResponse>, Status> {
        let members = self.server.member_remove(req.into_inner().id).await?;
        Ok(Response::new(MemberRemoveResponse {
            header: Some(self.server.header(0)),
            members,
        }))
    }

    async fn member_update(
        &self,
        req: Request<MemberUpdateRequest>,
    ) -> Result<Response<MemberUpdateResponse>, Status> {
        let req = req.into_inner();
        let members = self.server.member_update(req.id, req.peer_ur_ls).await?;
        Ok(Response::new(MemberUpdateResponse {
            header: Some(self.server.header(0)),
            members,
        }))
    }

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

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        let members = self.server.member_promote(req.into_inner().id).await?;
        Ok(Response::new(MemberPromoteResponse {
            header: Some(self.server.header(0)),
            members,
        }))
    }
}
