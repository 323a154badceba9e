//! `etcdserverpb.Auth`: users, roles, permissions, AuthEnable/Disable/Status and Authenticate.
//!
//! Each rpc resolves the caller's credentials (etcd's `AuthInfoFromCtx`: the `token`
//! metadata, `authorization` through the JSON gateway, or the client certificate's common name
//! with `--client-cert-auth`) and hands the request to `server` (see `auth::ops`): changes are
//! proposed with those credentials and checked by the applier (root only, as etcd's
//! `needAdminPermission`), reads are checked by this member. Authenticate needs no
//! credentials. Errors are etcd's, through `Error -> Status`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::with_credentials;
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListRequest, AuthRoleListResponse,
    AuthRoleRevokePermissionRequest, AuthRoleRevokePermissionResponse, AuthStatusRequest,
    AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse, AuthUserChangePasswordRequest,
    AuthUserChangePasswordResponse, AuthUserDeleteRequest, AuthUserDeleteResponse,
    AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest, AuthUserGrantRoleResponse,
    AuthUserListRequest, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, auth_server::Auth,
};
use crate::server::EtcdServer;

/// The Auth service of one member.
pub struct AuthService {
    server: Arc<EtcdServer>,
}

impl AuthService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        AuthService { server }
    }
}

/// An rpc whose change is proposed with the caller's credentials.
macro_rules! proposed {
    ($self:ident, $req:ident, $method:ident) => {{
        let info = $self.server.auth_info_of(&$req).await?;
        let resp = with_credentials(info, $self.server.$method($req.into_inner())).await?;
        Ok(Response::new(resp))
    }};
}

/// A read served by this member with the caller's credentials checked.
macro_rules! checked_read {
    ($self:ident, $req:ident, $method:ident $(, $arg:expr)?) => {{
        let info = $self.server.auth_info_of(&$req).await?;
        #[allow(unused_variables)]
        let inner = $req.into_inner();
        let resp = $self.server.$method(info.as_ref() $(, $arg(inner))?).await?;
        Ok(Response::new(resp))
    }};
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        proposed!(self, req, auth_enable)
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        proposed!(self, req, auth_disable)
    }

    async fn auth_status(
        &self,
        req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        checked_read!(self, req, auth_status)
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Ok(Response::new(
            self.server.authenticate(req.into_inner()).await?,
        ))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        proposed!(self, req, user_add)
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        checked_read!(self, req, user_get, std::convert::identity)
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        checked_read!(self, req, user_list)
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        proposed!(self, req, user_delete)
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        proposed!(self, req, user_change_password)
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        proposed!(self, req, user_grant_role)
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        proposed!(self, req, user_revoke_role)
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        proposed!(self, req, role_add)
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        checked_read!(self, req, role_get, std::convert::identity)
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        checked_read!(self, req, role_list)
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        proposed!(self, req, role_delete)
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        proposed!(self, req, role_grant_permission)
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        proposed!(self, req, role_revoke_permission)
    }
}
