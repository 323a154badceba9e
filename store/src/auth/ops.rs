//! The server side of etcd's Auth service: what `EtcdServer` does for each rpc.
//!
//! Changes go through raft (passwords are hashed here first, with `--bcrypt-cost`, so the log
//! never holds one); reads (user and role get and list, status) are served by this member
//! after a linearizable read barrier, with etcd's admin rules (a user may get itself, and the
//! roles it has). Authenticate checks the password here, then proposes the token's issue, and
//! retries if the auth store changed meanwhile, as etcd's does.

use crate::apply::Applied;
use crate::error::{Error, Result};
use crate::proto::concordpb::{AuthenticateEntry, internal_request::Request};
use crate::proto::etcdserverpb::{
    AuthDisableRequest, AuthDisableResponse, AuthEnableRequest, AuthEnableResponse,
    AuthRoleAddRequest, AuthRoleAddResponse, AuthRoleDeleteRequest, AuthRoleDeleteResponse,
    AuthRoleGetRequest, AuthRoleGetResponse, AuthRoleGrantPermissionRequest,
    AuthRoleGrantPermissionResponse, AuthRoleListResponse, AuthRoleRevokePermissionRequest,
    AuthRoleRevokePermissionResponse, AuthStatusResponse, AuthUserAddRequest, AuthUserAddResponse,
    AuthUserChangePasswordRequest, AuthUserChangePasswordResponse, AuthUserDeleteRequest,
    AuthUserDeleteResponse, AuthUserGetRequest, AuthUserGetResponse, AuthUserGrantRoleRequest,
    AuthUserGrantRoleResponse, AuthUserListResponse, AuthUserRevokeRoleRequest,
    AuthUserRevokeRoleResponse, AuthenticateRequest, AuthenticateResponse, ResponseHeader,
};
use crate::server::EtcdServer;

use super::token::{self, TokenProvider};
use super::{AuthApplied, AuthInfo};

/// Defines an rpc that proposes `$variant($req)` and answers `$resp` with the header filled.
macro_rules! proposed_auth {
    ($name:ident, $req:ty, $variant:ident, $resp:ident) => {
        pub async fn $name(&self, req: $req) -> Result<$resp> {
            let a = self.propose_auth(Request::$variant(req)).await?;
            Ok($resp {
                header: self.auth_header(&a),
            })
        }
    };
}

impl EtcdServer {
    /// Proposes an auth request and waits for it; this member's cached auth state is dropped
    /// so its next check sees the change.
    async fn propose_auth(&self, req: Request) -> Result<AuthApplied> {
        let out = self.submit(req).await;
        self.auth().invalidate();
        match out? {
            Applied::Auth(a) => Ok(a),
            other => Err(Error::Raft(format!(
                "applied result does not match the auth request: {other:?}"
            ))),
        }
    }

    fn auth_header(&self, a: &AuthApplied) -> Option<ResponseHeader> {
        Some(self.header(a.store_revision))
    }

    fn local_header(&self) -> Option<ResponseHeader> {
        Some(self.header(self.current_rev()))
    }

    async fn hash_password(&self, password: String) -> Result<String> {
        let cost = self.auth().bcrypt_cost;
        tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Raft(format!("password hashing failed: {e}")))?
            .map_err(|e| Error::Raft(format!("cannot hash the password: {e}")))
    }

    proposed_auth!(
        auth_enable,
        AuthEnableRequest,
        AuthEnable,
        AuthEnableResponse
    );
    proposed_auth!(
        auth_disable,
        AuthDisableRequest,
        AuthDisable,
        AuthDisableResponse
    );
    proposed_auth!(
        user_delete,
        AuthUserDeleteRequest,
        AuthUserDelete,
        AuthUserDeleteResponse
    );
    proposed_auth!(
        user_grant_role,
        AuthUserGrantRoleRequest,
        AuthUserGrantRole,
        AuthUserGrantRoleResponse
    );
    proposed_auth!(
        user_revoke_role,
        AuthUserRevokeRoleRequest,
        AuthUserRevokeRole,
        AuthUserRevokeRoleResponse
    );
    proposed_auth!(
        role_add,
        AuthRoleAddRequest,
        AuthRoleAdd,
        AuthRoleAddResponse
    );
    proposed_auth!(
        role_delete,
        AuthRoleDeleteRequest,
        AuthRoleDelete,
        AuthRoleDeleteResponse
    );
    proposed_auth!(
        role_grant_permission,
        AuthRoleGrantPermissionRequest,
        AuthRoleGrantPermission,
        AuthRoleGrantPermissionResponse
    );
    proposed_auth!(
        role_revoke_permission,
        AuthRoleRevokePermissionRequest,
        AuthRoleRevokePermission,
        AuthRoleRevokePermissionResponse
    );

    /// etcd's UserAdd: the password is hashed here (unless the user has none).
    pub async fn user_add(&self, mut req: AuthUserAddRequest) -> Result<AuthUserAddResponse> {
        if !req.options.as_ref().is_some_and(|o| o.no_password) {
            req.hashed_password = self
                .hash_password(std::mem::take(&mut req.password))
                .await?;
        } else {
            req.hashed_password.clear();
        }
        req.password.clear();
        let a = self.propose_auth(Request::AuthUserAdd(req)).await?;
        Ok(AuthUserAddResponse {
            header: self.auth_header(&a),
        })
    }

    /// etcd's UserChangePassword: the new password is hashed here.
    pub async fn user_change_password(
        &self,
        mut req: AuthUserChangePasswordRequest,
    ) -> Result<AuthUserChangePasswordResponse> {
        if !req.password.is_empty() {
            req.hashed_password = self
                .hash_password(std::mem::take(&mut req.password))
                .await?;
        } else if !req.hashed_password.is_empty() {
            // etcd's `selectPassword`: a client's pre-hashed password arrives base64-encoded.
            // etcd fails with Go's base64 error on bad input; concord calls it bad management.
            req.hashed_password = base64_std_decode(&req.hashed_password)
                .and_then(|b| String::from_utf8(b).ok())
                .ok_or(Error::InvalidAuthMgmt)?;
        }
        let a = self
            .propose_auth(Request::AuthUserChangePassword(req))
            .await?;
        Ok(AuthUserChangePasswordResponse {
            header: self.auth_header(&a),
        })
    }

    /// etcd's Authenticate: check the password against this member's (linearizable) state,
    /// then issue the token through raft; retried if the auth store changed in between.
    pub async fn authenticate(&self, req: AuthenticateRequest) -> Result<AuthenticateResponse> {
        self.linearizable_read_barrier().await?;
        loop {
            let st = self.auth_state()?;
            if !st.enabled {
                return Err(Error::AuthNotEnabled);
            }
            let user = st.user(&req.name).ok_or(Error::AuthFailed)?;
            if user.options.as_ref().is_some_and(|o| o.no_password) {
                return Err(Error::NoPasswordUser);
            }
            let hash = String::from_utf8_lossy(&user.password).into_owned();
            let password = req.password.clone();
            let ok = tokio::task::spawn_blocking(move || {
                bcrypt::verify(password, &hash).unwrap_or(false)
            })
            .await
            .unwrap_or(false);
            if !ok {
                tracing::info!(user_name = %req.name, "invalid password");
                return Err(Error::AuthFailed);
            }
            let checked = st.revision;
            let simple = matches!(self.auth().tokens, TokenProvider::Simple);
            let entry = AuthenticateEntry {
                name: req.name.clone(),
                simple_token_prefix: if simple {
                    token::simple_prefix()?
                } else {
                    String::new()
                },
                issued_unix_ms: super::now_unix_ms(),
                ttl_ms: self.auth().cfg.token_ttl.as_millis() as u64,
            };
            let a = self.propose_auth(Request::Authenticate(entry)).await?;
            let token = match &self.auth().tokens {
                TokenProvider::Simple => a.token.clone(),
                TokenProvider::Jwt(j) => j.assign(&req.name, a.auth_revision)?,
            };
            if a.auth_revision == checked {
                tracing::debug!(user_name = %req.name, "authenticated a user");
                return Ok(AuthenticateResponse {
                    header: self.auth_header(&a),
                    token,
                });
            }
            tracing::info!("revision when password checked became stale; retrying");
        }
    }

    /// etcd's AuthStatus (admin only while auth is enabled).
    pub async fn auth_status(&self, info: Option<&AuthInfo>) -> Result<AuthStatusResponse> {
        self.linearizable_read_barrier().await?;
        let st = self.auth_state()?;
        st.check_admin(info)?;
        Ok(AuthStatusResponse {
            header: self.local_header(),
            enabled: st.enabled,
            auth_revision: st.revision,
        })
    }

    /// etcd's UserGet: admins, and a user asking about itself.
    pub async fn user_get(
        &self,
        info: Option<&AuthInfo>,
        req: AuthUserGetRequest,
    ) -> Result<AuthUserGetResponse> {
        self.linearizable_read_barrier().await?;
        let st = self.auth_state()?;
        if let Err(e) = st.check_admin(info)
            && info.map_or("", |i| i.username.as_str()) != req.name
        {
            return Err(e);
        }
        let user = st.user(&req.name).ok_or(Error::UserNotFound)?;
        Ok(AuthUserGetResponse {
            header: self.local_header(),
            roles: user.roles.clone(),
        })
    }

    /// etcd's UserList (admin only while auth is enabled).
    pub async fn user_list(&self, info: Option<&AuthInfo>) -> Result<AuthUserListResponse> {
        self.linearizable_read_barrier().await?;
        let st = self.auth_state()?;
        st.check_admin(info)?;
        Ok(AuthUserListResponse {
            header: self.local_header(),
            users: st.user_names(),
        })
    }

    /// etcd's RoleGet: admins, and users that have the role.
    pub async fn role_get(
        &self,
        info: Option<&AuthInfo>,
        req: AuthRoleGetRequest,
    ) -> Result<AuthRoleGetResponse> {
        self.linearizable_read_barrier().await?;
        let st = self.auth_state()?;
        if let Err(e) = st.check_admin(info) {
            let has = info
                .and_then(|i| st.user(&i.username))
                .is_some_and(|u| u.roles.contains(&req.role));
            if !has {
                return Err(e);
            }
        }
        let role = st.role(&req.role).ok_or(Error::RoleNotFound)?;
        Ok(AuthRoleGetResponse {
            header: self.local_header(),
            perm: role.key_permission.clone(),
        })
    }

    /// etcd's RoleList (admin only while auth is enabled).
    pub async fn role_list(&self, info: Option<&AuthInfo>) -> Result<AuthRoleListResponse> {
        self.linearizable_read_barrier().await?;
        let st = self.auth_state()?;
        st.check_admin(info)?;
        Ok(AuthRoleListResponse {
            header: self.local_header(),
            roles: st.role_names(),
        })
    }
}

/// Standard base64 with padding (Go's `base64.StdEncoding`); `None` on bad input.
fn base64_std_decode(s: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let bytes = s.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    for (i, chunk) in bytes.chunks(4).enumerate() {
        let last = i + 1 == bytes.len() / 4;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | value(c)?;
        }
        n <<= 6 * pad as u32;
        let got = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&got[..3 - pad]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::base64_std_decode;

    #[test]
    fn base64_as_gos_std_encoding() {
        assert_eq!(base64_std_decode("").as_deref(), Some(&b""[..]));
        assert_eq!(base64_std_decode("Zm9v").as_deref(), Some(&b"foo"[..]));
        assert_eq!(base64_std_decode("Zm9vYg==").as_deref(), Some(&b"foob"[..]));
        assert_eq!(
            base64_std_decode("Zm9vYmE=").as_deref(),
            Some(&b"fooba"[..])
        );
        assert_eq!(
            base64_std_decode("JDJhJDA0JA==").as_deref(),
            Some(&b"$2a$04$"[..])
        );
        assert_eq!(base64_std_decode("Zm9"), None);
        assert_eq!(base64_std_decode("Zm=v"), None);
        assert_eq!(base64_std_decode("Zm9v!A=="), None);
    }
}
