//! Auth: etcd 3.5's users, roles, key permissions, tokens and permission checks.
//!
//! Owns:
//! - the replicated auth state (users, roles, the enabled flag, the auth revision, simple
//!   tokens), changed only by applied raft entries ([`apply`]) in the `auth*` tables of
//!   `backend`;
//! - this member's read cache of that state ([`AuthStore`]), keyed by the raft applied index,
//!   so a request with auth disabled costs one lock-free-ish comparison and no storage read;
//! - tokens ([`token`]: simple and JWT) and password hashing (bcrypt, `--bcrypt-cost`);
//! - the checks, with etcd's rules (`server/auth/store.go`, `etcdserver/apply_auth.go`):
//!   reads (Range, Watch create, LeaseTimeToLive keys) are checked by the member that serves
//!   them, after its linearizable read barrier; writes (Put, DeleteRange, Txn and every op and
//!   compare in it, LeaseRevoke) and auth management (root only) are checked by the applier
//!   against the credentials the entry carries (its `concordpb::Credentials` field), so a
//!   request made with an older auth revision fails with `etcdserver: revision of auth store
//!   is old` and a revoked permission takes effect at once on every member.
//!
//! The api layer resolves a request's credentials (the `token` metadata, `authorization` for
//! the JSON gateway, or the verified client certificate's common name with
//! `--client-cert-auth`) with [`EtcdServer::auth_info`] and runs the server call inside
//! [`with_credentials`]; `server` wraps every proposal made inside it ([`wrap_proposal`]).
//! Proposals made outside (lease expiry, alarms, checkpoints) are the member's own and carry
//! no credentials, as etcd's `WithRoot` ones pass every check.
//!
//! Never: reads clocks or randomness in [`apply`]; logs passwords or hashes.

pub mod apply;
pub mod ops;
pub mod perm;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use prost::Message;
use redb::{ReadableDatabase, ReadableTable};

use crate::backend::{AUTH, AUTH_ROLES, AUTH_TOKENS, AUTH_USERS, Backend};
use crate::error::{Error, Result};
use crate::proto::authpb::{Role, User};
use crate::proto::concordpb::{
    Credentials, InternalRequest, SimpleTokenRecord, internal_request::Request,
};
use crate::server::EtcdServer;

pub use apply::{AuthApplied, AuthTables};
pub use perm::Access;
use perm::UserPerms;
use token::TokenProvider;

/// etcd's root user and role names.
pub const ROOT_USER: &str = "root";
pub const ROOT_ROLE: &str = "root";

/// etcd's gRPC metadata key for the token (`rpctypes.TokenFieldNameGRPC`).
pub const TOKEN_METADATA: &str = "token";
/// The JSON gateway's header for the token (`rpctypes.TokenFieldNameSwagger`).
pub const TOKEN_HEADER: &str = "authorization";

/// etcd's bcrypt cost bounds and default.
const BCRYPT_MIN_COST: u64 = 4;
const BCRYPT_MAX_COST: u64 = 31;
const BCRYPT_DEFAULT_COST: u32 = 10;

/// How long a member waits for the Authenticate entry of a simple token it does not know yet
/// (issued through another member) to be applied here, as etcd's `isValidSimpleToken` waits
/// for its index.
const TOKEN_APPLY_WAIT: Duration = Duration::from_secs(5);

/// Expired simple tokens are swept from the in-memory keeper when it grows past this (and
/// then at every doubling); an expired token is refused on lookup in any case.
const SWEEP_AT: usize = 1024;

/// The auth settings of a member (`--auth-token`, `--auth-token-ttl`, `--bcrypt-cost`,
/// `--client-cert-auth`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub token: String,
    pub token_ttl: Duration,
    pub bcrypt_cost: u64,
    pub client_cert_auth: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            token: "simple".into(),
            token_ttl: Duration::from_secs(300),
            bcrypt_cost: BCRYPT_DEFAULT_COST as u64,
            client_cert_auth: false,
        }
    }
}

impl AuthConfig {
    pub fn from_config(cfg: &crate::config::Config) -> AuthConfig {
        AuthConfig {
            token: cfg.auth_token.clone(),
            token_ttl: Duration::from_secs(cfg.auth_token_ttl),
            bcrypt_cost: cfg.bcrypt_cost,
            client_cert_auth: cfg.client_tls.client_cert_auth,
        }
    }
}

/// Who a request is from (etcd's `AuthInfo`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthInfo {
    pub username: String,
    /// The auth revision the credentials stand for (0: none).
    pub revision: u64,
}

tokio::task_local! {
    /// The credentials of the client request being served (see [`with_credentials`]).
    static CREDENTIALS: AuthInfo;
}

/// Runs `f` (a server call) on behalf of a client with credentials `info` (`None`: none given,
/// or auth disabled): every proposal it makes carries them to the applier.
pub async fn with_credentials<F: Future>(info: Option<AuthInfo>, f: F) -> F::Output {
    CREDENTIALS.scope(info.unwrap_or_default(), f).await
}

/// The credentials of the client request being served (`Some` inside [`with_credentials`],
/// the empty ones when none were given); `None` outside, for the member's own work.
pub fn current_credentials() -> Option<AuthInfo> {
    CREDENTIALS.try_with(Clone::clone).ok()
}

/// The raft payload of a proposal: `request` with the credentials of the client request being
/// served, or none when the member proposes on its own. The credentials are a field of the
/// request, so a proposal is encoded (and decoded by the applier) once.
pub fn wrap_proposal(id: u64, request: Request) -> InternalRequest {
    InternalRequest {
        id,
        request: Some(request),
        credentials: CREDENTIALS
            .try_with(|who| Credentials {
                username: who.username.clone(),
                auth_revision: who.revision,
            })
            .ok(),
    }
}

/// An auth error as etcd returns it where it skips its gRPC error table (Maintenance's
/// `isAuthenticated`): code `Unknown` with the auth store's own text (`auth: ...`).
pub fn unconverted_status(e: Error) -> tonic::Status {
    let text = match e {
        Error::UserEmpty => "auth: user name is empty",
        Error::UserNotFound => "auth: user not found",
        Error::PermissionDenied => "auth: permission denied",
        Error::InvalidAuthToken => "auth: invalid auth token",
        Error::AuthOldRevision => "auth: revision in header is old",
        other => return other.into(),
    };
    tonic::Status::new(tonic::Code::Unknown, text)
}

/// A watch's cancel reason for an auth error (etcd's `isWatchPermitted` failure): the text of
/// etcd's gRPC status error, `rpc error: code = ... desc = ...`; any other error is
/// `permission denied`.
pub fn watch_cancel_reason(e: &Error) -> String {
    let (code, e) = match e {
        Error::InvalidAuthToken => ("Unauthenticated", e),
        Error::AuthOldRevision | Error::UserEmpty => ("InvalidArgument", e),
        _ => ("PermissionDenied", &Error::PermissionDenied),
    };
    format!("rpc error: code = {code} desc = {e}")
}

/// The auth state as of one applied index.
#[derive(Debug, Default)]
pub struct AuthState {
    /// The applied index and cache generation this state was read at.
    applied: u64,
    generation: u64,
    pub enabled: bool,
    pub revision: u64,
    data: Arc<AuthData>,
}

/// Users and roles, shared between states of the same auth revision.
#[derive(Debug, Default)]
struct AuthData {
    users: HashMap<String, User>,
    roles: HashMap<String, Role>,
    /// User name -> (has the root role, merged permissions).
    perms: HashMap<String, (bool, UserPerms)>,
}

impl AuthState {
    pub fn user(&self, name: &str) -> Option<&User> {
        self.data.users.get(name)
    }

    pub fn role(&self, name: &str) -> Option<&Role> {
        self.data.roles.get(name)
    }

    /// User names, sorted.
    pub fn user_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.data.users.keys().cloned().collect();
        v.sort();
        v
    }

    /// Role names, sorted.
    pub fn role_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.data.roles.keys().cloned().collect();
        v.sort();
        v
    }

    /// etcd's `isOpPermitted`.
    pub fn check_op(
        &self,
        info: Option<&AuthInfo>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let (name, rev) = info.map_or(("", 0), |i| (i.username.as_str(), i.revision));
        if rev == 0 {
            return Err(Error::UserEmpty);
        }
        if rev < self.revision {
            return Err(Error::AuthOldRevision);
        }
        match self.data.perms.get(name) {
            None => Err(Error::PermissionDenied),
            Some((true, _)) => Ok(()),
            Some((false, p)) if p.allows(access, key, range_end) => Ok(()),
            Some(_) => Err(Error::PermissionDenied),
        }
    }

    /// etcd's `IsAdminPermitted`.
    pub fn check_admin(&self, info: Option<&AuthInfo>) -> Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let name = info.map_or("", |i| i.username.as_str());
        if name.is_empty() {
            return Err(Error::UserEmpty);
        }
        match self.data.perms.get(name) {
            None => Err(Error::UserNotFound),
            Some((true, _)) => Ok(()),
            Some(_) => Err(Error::PermissionDenied),
        }
    }
}

/// This member's view of the auth store: the cached state, the token provider and the simple
/// tokens in use here.
pub struct AuthStore {
    backend: Arc<Backend>,
    cfg: AuthConfig,
    bcrypt_cost: u32,
    tokens: TokenProvider,
    state: RwLock<Arc<AuthState>>,
    /// Bumped by [`AuthStore::invalidate`]; a state read before a bump is never cached.
    generation: AtomicU64,
    /// Simple tokens seen in use on this member: token -> (user, expiry), etcd's TTL keeper.
    simple: Mutex<HashMap<String, (String, Instant)>>,
}

impl std::fmt::Debug for AuthStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthStore")
            .field("cfg", &self.cfg)
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl AuthStore {
    /// The auth store of a member on `backend`; fails on a bad `--auth-token` or unreadable
    /// JWT keys, as etcd refuses to start.
    pub fn new(backend: Arc<Backend>, cfg: AuthConfig) -> Result<AuthStore> {
        let tokens = TokenProvider::from_flag(&cfg.token)?;
        if matches!(tokens, TokenProvider::Simple) {
            tracing::warn!("simple token is not cryptographically signed");
        }
        let bcrypt_cost = if (BCRYPT_MIN_COST..=BCRYPT_MAX_COST).contains(&cfg.bcrypt_cost) {
            cfg.bcrypt_cost as u32
        } else {
            tracing::warn!(
                min_cost = BCRYPT_MIN_COST,
                max_cost = BCRYPT_MAX_COST,
                default_cost = BCRYPT_DEFAULT_COST,
                given_cost = cfg.bcrypt_cost,
                "use default bcrypt cost instead of the invalid given cost"
            );
            BCRYPT_DEFAULT_COST
        };
        let store = AuthStore {
            backend,
            cfg,
            bcrypt_cost,
            tokens,
            state: RwLock::new(Arc::new(AuthState {
                applied: u64::MAX,
                ..Default::default()
            })),
            generation: AtomicU64::new(0),
            simple: Mutex::new(HashMap::new()),
        };
        Ok(store)
    }

    /// Forgets the cached state: the next check reads the committed tables. Called after this
    /// member applied an auth change it proposed, before the raft status shows the new index.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The auth state as of applied index `applied`: the cached one when nothing was applied
    /// since, else re-read (users and roles only when the auth revision or flag changed).
    pub fn state(&self, applied: u64) -> Result<Arc<AuthState>> {
        let generation = self.generation.load(Ordering::Acquire);
        let cached = self.state.read().unwrap_or_else(|p| p.into_inner()).clone();
        if cached.applied == applied && cached.generation == generation {
            return Ok(cached);
        }
        let rtx = self.backend.db().begin_read()?;
        let meta = rtx.open_table(AUTH)?;
        let enabled = apply::enabled(&meta)?;
        let revision = apply::revision(&meta)?;
        let data = if cached.applied != u64::MAX
            && cached.enabled == enabled
            && cached.revision == revision
        {
            cached.data.clone()
        } else {
            let users_t = rtx.open_table(AUTH_USERS)?;
            let roles_t = rtx.open_table(AUTH_ROLES)?;
            let mut users = HashMap::new();
            for item in users_t.iter()? {
                let (k, v) = item?;
                users.insert(k.value().to_owned(), User::decode(v.value())?);
            }
            let mut roles = HashMap::new();
            for item in roles_t.iter()? {
                let (k, v) = item?;
                roles.insert(k.value().to_owned(), Role::decode(v.value())?);
            }
            let perms = users
                .iter()
                .map(|(name, u)| {
                    let p = UserPerms::of(u, |r| roles.get(r).cloned());
                    (name.clone(), (apply::has_root_role(u), p))
                })
                .collect();
            // Tokens dropped by the applier (user deleted, password changed, auth disabled)
            // stop working here too.
            let tokens_t = rtx.open_table(AUTH_TOKENS)?;
            lock(&self.simple).retain(|t, _| {
                token::split_simple(t)
                    .is_some_and(|(_, i)| tokens_t.get(i).ok().flatten().is_some())
            });
            Arc::new(AuthData {
                users,
                roles,
                perms,
            })
        };
        let state = Arc::new(AuthState {
            applied,
            generation,
            enabled,
            revision,
            data,
        });
        let mut slot = self.state.write().unwrap_or_else(|p| p.into_inner());
        if self.generation.load(Ordering::Acquire) == generation {
            *slot = state.clone();
        }
        Ok(state)
    }

    /// The user of a simple token, if it is valid here.
    async fn simple_token_user(&self, token: &str) -> Result<String> {
        let (prefix, index) = token::split_simple(token).ok_or(Error::InvalidAuthToken)?;
        let ttl = self.cfg.token_ttl;
        {
            let mut map = lock(&self.simple);
            if let Some((user, expires)) = map.get_mut(token) {
                let now = Instant::now();
                if now < *expires {
                    *expires = now + ttl;
                    return Ok(user.clone());
                }
                map.remove(token);
                return Err(Error::InvalidAuthToken);
            }
        }
        let deadline = Instant::now() + TOKEN_APPLY_WAIT;
        let rec = loop {
            let rtx = self.backend.db().begin_read()?;
            if let Some(v) = rtx.open_table(AUTH_TOKENS)?.get(index)? {
                break SimpleTokenRecord::decode(v.value())?;
            }
            let issued_here = apply::token_index(&rtx.open_table(AUTH)?)?;
            drop(rtx);
            // An index not issued yet may be on its way through raft; one already issued and
            // gone was dropped.
            if index <= issued_here || Instant::now() >= deadline {
                return Err(Error::InvalidAuthToken);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        if rec.prefix != prefix {
            return Err(Error::InvalidAuthToken);
        }
        let expires_ms = rec.issued_unix_ms + ttl.as_millis() as u64;
        let now_ms = now_unix_ms();
        if expires_ms <= now_ms {
            return Err(Error::InvalidAuthToken);
        }
        let expires = Instant::now() + Duration::from_millis(expires_ms - now_ms);
        let mut map = lock(&self.simple);
        if map.len() >= SWEEP_AT && map.len().is_power_of_two() {
            let now = Instant::now();
            map.retain(|_, (_, exp)| *exp > now);
        }
        map.insert(token.to_owned(), (rec.username.clone(), expires));
        Ok(rec.username)
    }
}

impl EtcdServer {
    /// The auth state as of this member's last applied entry.
    pub fn auth_state(&self) -> Result<Arc<AuthState>> {
        self.auth().state(self.raft_status().applied)
    }

    /// The credentials of a request (etcd's `AuthInfoFromCtx`): none while auth is disabled;
    /// else from the `token` metadata (`authorization` through the JSON gateway), or the client
    /// certificate's common name with `--client-cert-auth`. A bad token is
    /// `etcdserver: invalid auth token`.
    pub async fn auth_info(
        &self,
        metadata: &tonic::metadata::MetadataMap,
        extensions: &tonic::Extensions,
    ) -> Result<Option<AuthInfo>> {
        let st = self.auth_state()?;
        if !st.enabled {
            return Ok(None);
        }
        let token = metadata
            .get(TOKEN_METADATA)
            .or_else(|| metadata.get(TOKEN_HEADER));
        let Some(token) = token else {
            if !self.auth().cfg.client_cert_auth {
                return Ok(None);
            }
            return Ok(extensions
                .get::<crate::tls::ClientCertCommonName>()
                .map(|cn| AuthInfo {
                    username: cn.0.clone(),
                    revision: st.revision,
                }));
        };
        let token = token.to_str().map_err(|_| Error::InvalidAuthToken)?;
        match &self.auth().tokens {
            TokenProvider::Simple => {
                let username = self.auth().simple_token_user(token).await?;
                Ok(Some(AuthInfo {
                    username,
                    revision: st.revision,
                }))
            }
            TokenProvider::Jwt(j) => {
                let (username, revision) = j.info(token).ok_or(Error::InvalidAuthToken)?;
                Ok(Some(AuthInfo { username, revision }))
            }
        }
    }

    /// [`EtcdServer::auth_info`] of a tonic request.
    pub async fn auth_info_of<T>(&self, req: &tonic::Request<T>) -> Result<Option<AuthInfo>> {
        self.auth_info(req.metadata(), req.extensions()).await
    }

    /// etcd's `IsRangePermitted` / `IsPutPermitted` on this member's state.
    pub fn auth_check(
        &self,
        info: Option<&AuthInfo>,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<()> {
        self.auth_state()?.check_op(info, access, key, range_end)
    }

    /// etcd's `IsAdminPermitted` on this member's state.
    pub fn auth_check_admin(&self, info: Option<&AuthInfo>) -> Result<()> {
        self.auth_state()?.check_admin(info)
    }

    /// [`EtcdServer::auth_check`] with the credentials of the client request being served
    /// ([`current_credentials`]); the member's own reads pass.
    pub fn auth_check_current(&self, access: Access, key: &[u8], range_end: &[u8]) -> Result<()> {
        match current_credentials() {
            Some(info) => self.auth_check(Some(&info), access, key, range_end),
            None => Ok(()),
        }
    }

    /// [`EtcdServer::auth_recheck`] with the credentials of the client request being served.
    pub fn auth_recheck_current(&self) -> Result<()> {
        self.auth_recheck(current_credentials().as_ref())
    }

    /// etcd's `checkLeaseTimeToLive` (LeaseTimeToLive with keys): read permission on every
    /// key attached to `lease`; no credentials at all is `etcdserver: user name is empty`.
    /// Returns the auth revision checked at, for [`EtcdServer::auth_recheck_revision`].
    pub fn auth_check_lease_keys(&self, info: Option<&AuthInfo>, lease: i64) -> Result<u64> {
        let st = self.auth_state()?;
        if !st.enabled {
            return Ok(st.revision);
        }
        let info = info.ok_or(Error::UserEmpty)?;
        for key in crate::lease::committed_keys(self.backend(), lease)? {
            st.check_op(Some(info), Access::Read, &key, &[])?;
        }
        Ok(st.revision)
    }

    /// Fails with `etcdserver: revision of auth store is old` if auth is enabled and its
    /// revision is no longer `checked`.
    pub fn auth_recheck_revision(&self, checked: u64) -> Result<()> {
        let st = self.auth_state()?;
        if st.enabled && st.revision != checked {
            return Err(Error::AuthOldRevision);
        }
        Ok(())
    }

    /// etcd's `doSerialize` tail: the auth store must not have changed while a checked read
    /// was served with credentials.
    pub fn auth_recheck(&self, info: Option<&AuthInfo>) -> Result<()> {
        match info {
            Some(i) if i.revision != 0 && i.revision != self.auth_state()?.revision => {
                Err(Error::AuthOldRevision)
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_cancel_reasons_are_etcds_status_texts() {
        let cases = [
            (
                Error::PermissionDenied,
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
            ),
            (
                Error::UserEmpty,
                "rpc error: code = InvalidArgument desc = etcdserver: user name is empty",
            ),
            (
                Error::AuthOldRevision,
                "rpc error: code = InvalidArgument desc = etcdserver: revision of auth store is old",
            ),
            (
                Error::InvalidAuthToken,
                "rpc error: code = Unauthenticated desc = etcdserver: invalid auth token",
            ),
            // Anything else reads as permission denied, as etcd's default branch.
            (
                Error::UserNotFound,
                "rpc error: code = PermissionDenied desc = etcdserver: permission denied",
            ),
        ];
        for (e, want) in cases {
            assert_eq!(watch_cancel_reason(&e), want, "{e:?}");
        }
    }

    #[test]
    fn maintenance_auth_errors_are_unconverted() {
        let s = unconverted_status(Error::PermissionDenied);
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Unknown, "auth: permission denied")
        );
        let s = unconverted_status(Error::UserNotFound);
        assert_eq!(s.message(), "auth: user not found");
        // Errors that are not the auth store's keep their own status.
        let s = unconverted_status(Error::NoLeader);
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }

    fn state_with(users: &[(&str, &[&str])], role_perms: &[(&str, &str)]) -> AuthState {
        use crate::proto::authpb::{Permission, permission::Type};
        let users: HashMap<String, User> = users
            .iter()
            .map(|(n, roles)| {
                (
                    n.to_string(),
                    User {
                        name: n.as_bytes().to_vec(),
                        roles: roles.iter().map(|r| r.to_string()).collect(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        let roles: HashMap<String, Role> = role_perms
            .iter()
            .map(|(r, key)| {
                (
                    r.to_string(),
                    Role {
                        name: r.as_bytes().to_vec(),
                        key_permission: vec![Permission {
                            perm_type: Type::Readwrite as i32,
                            key: key.as_bytes().to_vec(),
                            range_end: vec![],
                        }],
                    },
                )
            })
            .collect();
        let perms = users
            .iter()
            .map(|(n, u)| {
                let p = UserPerms::of(u, |r| roles.get(r).cloned());
                (n.clone(), (apply::has_root_role(u), p))
            })
            .collect();
        AuthState {
            enabled: true,
            revision: 5,
            data: Arc::new(AuthData {
                users,
                roles,
                perms,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn op_and_admin_checks_follow_etcd() {
        let st = state_with(&[("root", &["root"]), ("alice", &["r"])], &[("r", "a")]);
        let who = |n: &str, rev: u64| AuthInfo {
            username: n.into(),
            revision: rev,
        };
        let alice = who("alice", 5);
        assert!(st.check_op(Some(&alice), Access::Write, b"a", b"").is_ok());
        assert!(matches!(
            st.check_op(Some(&alice), Access::Read, b"b", b""),
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            st.check_op(Some(&who("alice", 4)), Access::Read, b"a", b""),
            Err(Error::AuthOldRevision)
        ));
        assert!(matches!(
            st.check_op(None, Access::Read, b"a", b""),
            Err(Error::UserEmpty)
        ));
        assert!(matches!(
            st.check_op(Some(&who("ghost", 5)), Access::Read, b"a", b""),
            Err(Error::PermissionDenied)
        ));
        assert!(
            st.check_op(Some(&who("root", 5)), Access::Write, b"\0", b"\0")
                .is_ok()
        );
        assert!(st.check_admin(Some(&who("root", 1))).is_ok());
        assert!(matches!(
            st.check_admin(Some(&alice)),
            Err(Error::PermissionDenied)
        ));
        assert!(matches!(
            st.check_admin(Some(&who("ghost", 5))),
            Err(Error::UserNotFound)
        ));
        assert!(matches!(st.check_admin(None), Err(Error::UserEmpty)));
        let off = AuthState::default();
        assert!(off.check_op(None, Access::Write, b"x", b"").is_ok());
        assert!(off.check_admin(None).is_ok());
    }
}
