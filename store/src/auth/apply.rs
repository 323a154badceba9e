//! The auth store's applier: etcd's `server/auth/store.go` management operations and
//! `authApplierV3` checks, over the `auth*` tables, inside the raft loop's write transaction.
//!
//! Deterministic, like `crate::apply`: the result depends only on the entry and the tables
//! (no clocks, no randomness, no member settings; a token's issue time and lifetime travel in
//! the entry). Every change to users, roles, permissions or disabling bumps the auth revision,
//! as etcd's `commitRevision` does; requests made with an older revision fail with
//! `etcdserver: revision of auth store is old`, so a revoked permission takes effect at once.

use prost::Message;
use redb::{ReadableTable, Table, WriteTransaction};

use crate::backend::{AUTH, AUTH_ROLES, AUTH_TOKENS, AUTH_USERS};
use crate::error::{Error, Result};
use crate::mvcc::{LazyTable, WriteTables};
use crate::proto::authpb::{Role, User, UserAddOptions};
use crate::proto::concordpb::{
    AuthenticateEntry, Credentials, SimpleTokenRecord, internal_request::Request,
};
use crate::proto::etcdserverpb::{TxnRequest, request_op};

use super::perm::{Access, UserPerms, valid_permission_range};
use super::{ROOT_ROLE, ROOT_USER};

/// `AUTH` keys.
const ENABLED: &str = "enabled";
const REVISION: &str = "revision";
const TOKEN_INDEX: &str = "token_index";

/// Simple-token rows older than this (by the issuing members' clocks) are dropped when new
/// tokens are issued. A token in use longer than this keeps working on the members that saw
/// it in use, as long as their TTL keeper has it.
const TOKEN_ROWS_KEPT_MS: u64 = 24 * 3600 * 1000;
/// At most this many old rows are dropped per issued token (bounded work per entry).
const TOKEN_ROWS_DROPPED_PER_ENTRY: usize = 64;

/// The auth store's tables inside one write transaction.
pub struct AuthTables<'t> {
    pub meta: Table<'t, &'static str, u64>,
    pub users: LazyTable<'t, &'static str, &'static [u8]>,
    pub roles: LazyTable<'t, &'static str, &'static [u8]>,
    pub tokens: LazyTable<'t, u64, &'static [u8]>,
}

impl<'t> AuthTables<'t> {
    /// Opens `AUTH` (every request checks whether auth is on); the others wait for first use.
    pub fn open(wtx: &'t WriteTransaction) -> Result<Self> {
        Ok(AuthTables {
            meta: wtx.open_table(AUTH)?,
            users: LazyTable::new(wtx, AUTH_USERS),
            roles: LazyTable::new(wtx, AUTH_ROLES),
            tokens: LazyTable::new(wtx, AUTH_TOKENS),
        })
    }

    /// Whether users, roles or tokens were written (a change of `meta` alone comes from an
    /// auth request, which the applier flags itself).
    pub fn written(&self) -> bool {
        self.users.written() || self.roles.written() || self.tokens.written()
    }
}

/// Whether auth is enabled, in any view of the `AUTH` table.
pub fn enabled(meta: &impl ReadableTable<&'static str, u64>) -> Result<bool> {
    Ok(meta.get(ENABLED)?.is_some_and(|v| v.value() == 1))
}

/// The auth revision (etcd's store starts at 1).
pub fn revision(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64> {
    Ok(meta.get(REVISION)?.map_or(1, |v| v.value()))
}

/// The index of the last simple token issued.
pub fn token_index(meta: &impl ReadableTable<&'static str, u64>) -> Result<u64> {
    Ok(meta.get(TOKEN_INDEX)?.map_or(0, |v| v.value()))
}

pub fn get_user(
    users: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<User>> {
    Ok(match users.get(name)? {
        Some(v) => Some(User::decode(v.value())?),
        None => None,
    })
}

pub fn get_role(
    roles: &impl ReadableTable<&'static str, &'static [u8]>,
    name: &str,
) -> Result<Option<Role>> {
    Ok(match roles.get(name)? {
        Some(v) => Some(Role::decode(v.value())?),
        None => None,
    })
}

pub fn has_root_role(u: &User) -> bool {
    u.roles.iter().any(|r| r == ROOT_ROLE)
}

/// Why a request's credentials are not enough (or `Ok`), for the entries that carry them.
pub fn check_entry(tables: &WriteTables<'_>, who: &Credentials, req: &Request) -> Result<()> {
    let auth = &tables.auth;
    if !enabled(&auth.meta)? {
        return Ok(());
    }
    let mut c = Checker {
        tables,
        who,
        perms: None,
    };
    match req {
        Request::Put(p) => {
            c.op(Access::Write, &p.key, &[])?;
            c.lease_puts(p.lease)?;
            if p.prev_kv {
                c.op(Access::Read, &p.key, &[])?;
            }
            Ok(())
        }
        Request::DeleteRange(d) => {
            c.op(Access::Write, &d.key, &d.range_end)?;
            if d.prev_kv {
                c.op(Access::Read, &d.key, &d.range_end)?;
            }
            Ok(())
        }
        Request::Txn(t) => c.txn(t),
        Request::LeaseRevoke(r) => c.lease_puts(r.id),
        Request::AuthEnable(_)
        | Request::AuthDisable(_)
        | Request::AuthUserAdd(_)
        | Request::AuthUserDelete(_)
        | Request::AuthUserChangePassword(_)
        | Request::AuthUserGrantRole(_)
        | Request::AuthUserRevokeRole(_)
        | Request::AuthRoleAdd(_)
        | Request::AuthRoleDelete(_)
        | Request::AuthRoleGrantPermission(_)
        | Request::AuthRoleRevokePermission(_) => c.admin(),
        _ => Ok(()),
    }
}

/// etcd's permission checks for one request, with the user's permissions loaded once.
struct Checker<'a, 't> {
    tables: &'a WriteTables<'t>,
    who: &'a Credentials,
    /// (user exists and has the root role, merged permissions), loaded on first use.
    perms: Option<Option<(bool, UserPerms)>>,
}

impl Checker<'_, '_> {
    fn load(&mut self) -> Result<&Option<(bool, UserPerms)>> {
        if self.perms.is_none() {
            let auth = &self.tables.auth;
            let loaded = match get_user(auth.users.open()?, &self.who.username)? {
                None => None,
                Some(u) => {
                    let root = has_root_role(&u);
                    let roles = auth.roles.open()?;
                    let perms = UserPerms::of(&u, |r| get_role(roles, r).ok().flatten());
                    Some((root, perms))
                }
            };
            self.perms = Some(loaded);
        }
        Ok(self.perms.as_ref().expect("just loaded"))
    }

    /// etcd's `isOpPermitted`.
    fn op(&mut self, access: Access, key: &[u8], range_end: &[u8]) -> Result<()> {
        if self.who.auth_revision == 0 {
            return Err(Error::UserEmpty);
        }
        if self.who.auth_revision < revision(&self.tables.auth.meta)? {
            return Err(Error::AuthOldRevision);
        }
        match self.load()? {
            None => Err(Error::PermissionDenied),
            Some((true, _)) => Ok(()),
            Some((false, p)) if p.allows(access, key, range_end) => Ok(()),
            Some(_) => Err(Error::PermissionDenied),
        }
    }

    /// etcd's `IsAdminPermitted`.
    fn admin(&mut self) -> Result<()> {
        if self.who.username.is_empty() {
            return Err(Error::UserEmpty);
        }
        match self.load()? {
            None => Err(Error::UserNotFound),
            Some((true, _)) => Ok(()),
            Some(_) => Err(Error::PermissionDenied),
        }
    }

    /// etcd's `checkLeasePuts`: a user may attach keys to, or revoke, a lease only if it may
    /// write every key already attached to it.
    fn lease_puts(&mut self, lease: i64) -> Result<()> {
        if lease == 0 || !crate::lease::exists(self.tables, lease)? {
            return Ok(());
        }
        if self.admin().is_ok() {
            return Ok(());
        }
        for key in crate::lease::attached_keys(self.tables, lease)? {
            self.op(Access::Write, &key, &[])?;
        }
        Ok(())
    }

    /// etcd's `checkTxnAuth`: every compare needs read access, every op its access. Unlike
    /// etcd 3.5.16, which skips them, the ops of nested txns are checked too.
    fn txn(&mut self, t: &TxnRequest) -> Result<()> {
        for c in &t.compare {
            self.op(Access::Read, &c.key, &c.range_end)?;
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    self.op(Access::Read, &r.key, &r.range_end)?
                }
                Some(request_op::Request::RequestPut(p)) => self.op(Access::Write, &p.key, &[])?,
                Some(request_op::Request::RequestDeleteRange(d)) => {
                    if d.prev_kv {
                        self.op(Access::Read, &d.key, &d.range_end)?;
                    }
                    self.op(Access::Write, &d.key, &d.range_end)?;
                }
                Some(request_op::Request::RequestTxn(inner)) => self.txn(inner)?,
                None => {}
            }
        }
        Ok(())
    }
}

/// What an applied auth request produced.
#[derive(Debug, Clone, Default)]
pub struct AuthApplied {
    /// The auth revision after the request.
    pub auth_revision: u64,
    /// Authenticate with simple tokens: the token issued.
    pub token: String,
    /// The key-value store's revision (for the response header; set by `crate::apply`).
    pub store_revision: i64,
}

fn commit_revision(auth: &mut AuthTables<'_>) -> Result<u64> {
    let rev = revision(&auth.meta)? + 1;
    auth.meta.insert(REVISION, rev)?;
    Ok(rev)
}

fn put_user(auth: &mut AuthTables<'_>, u: &User) -> Result<()> {
    let name = String::from_utf8_lossy(&u.name).into_owned();
    auth.users
        .open_mut()?
        .insert(name.as_str(), u.encode_to_vec().as_slice())?;
    Ok(())
}

fn put_role(auth: &mut AuthTables<'_>, r: &Role) -> Result<()> {
    let name = String::from_utf8_lossy(&r.name).into_owned();
    auth.roles
        .open_mut()?
        .insert(name.as_str(), r.encode_to_vec().as_slice())?;
    Ok(())
}

/// etcd's `invalidateUser`: drops the simple tokens of `name`.
fn drop_tokens_of(auth: &mut AuthTables<'_>, name: &str) -> Result<()> {
    auth.tokens
        .open_mut()?
        .retain(|_, v| SimpleTokenRecord::decode(v).map_or(true, |r| r.username != name))?;
    Ok(())
}

fn authenticate(auth: &mut AuthTables<'_>, a: &AuthenticateEntry) -> Result<AuthApplied> {
    if !enabled(&auth.meta)? {
        return Err(Error::AuthNotEnabled);
    }
    let user = get_user(auth.users.open()?, &a.name)?.ok_or(Error::AuthFailed)?;
    if user.options.as_ref().is_some_and(|o| o.no_password) {
        return Err(Error::AuthFailed);
    }
    let auth_revision = revision(&auth.meta)?;
    let mut token = String::new();
    if !a.simple_token_prefix.is_empty() {
        let index = token_index(&auth.meta)? + 1;
        auth.meta.insert(TOKEN_INDEX, index)?;
        let rec = SimpleTokenRecord {
            prefix: a.simple_token_prefix.clone(),
            username: a.name.clone(),
            issued_unix_ms: a.issued_unix_ms,
        };
        auth.tokens
            .open_mut()?
            .insert(index, rec.encode_to_vec().as_slice())?;
        token = format!("{}.{index}", a.simple_token_prefix);
        let horizon = a
            .issued_unix_ms
            .saturating_sub(TOKEN_ROWS_KEPT_MS.max(a.ttl_ms));
        for _ in 0..TOKEN_ROWS_DROPPED_PER_ENTRY {
            let old = match auth.tokens.open()?.first()? {
                Some((k, v)) => {
                    let rec = SimpleTokenRecord::decode(v.value())?;
                    (rec.issued_unix_ms < horizon).then(|| k.value())
                }
                None => None,
            };
            match old {
                Some(k) => {
                    auth.tokens.open_mut()?.remove(k)?;
                }
                None => break,
            }
        }
    }
    Ok(AuthApplied {
        auth_revision,
        token,
        store_revision: 0,
    })
}

/// Applies one auth management request (the credentials were checked by [`check_entry`]).
pub fn apply(tables: &mut WriteTables<'_>, req: &Request) -> Result<AuthApplied> {
    let auth = &mut tables.auth;
    let on = enabled(&auth.meta)?;
    match req {
        Request::AuthEnable(_) => {
            if !on {
                let root =
                    get_user(auth.users.open()?, ROOT_USER)?.ok_or(Error::RootUserNotExist)?;
                if !has_root_role(&root) {
                    return Err(Error::RootRoleNotExist);
                }
                auth.meta.insert(ENABLED, 1)?;
                tracing::info!("enabled authentication");
            }
        }
        Request::AuthDisable(_) => {
            if on {
                auth.meta.insert(ENABLED, 0)?;
                commit_revision(auth)?;
                auth.tokens.open_mut()?.retain(|_, _| false)?;
                tracing::info!("disabled authentication");
            }
        }
        Request::Authenticate(a) => return authenticate(auth, a),
        Request::AuthUserAdd(r) => {
            if r.name.is_empty() {
                return Err(Error::UserEmpty);
            }
            if get_user(auth.users.open()?, &r.name)?.is_some() {
                return Err(Error::UserAlreadyExist);
            }
            let options = r.options.unwrap_or(UserAddOptions { no_password: false });
            let password = if options.no_password {
                vec![]
            } else {
                r.hashed_password.as_bytes().to_vec()
            };
            put_user(
                auth,
                &User {
                    name: r.name.as_bytes().to_vec(),
                    password,
                    roles: vec![],
                    options: Some(options),
                },
            )?;
            commit_revision(auth)?;
            tracing::info!(user_name = %r.name, "added a user");
        }
        Request::AuthUserDelete(r) => {
            if on && r.name == ROOT_USER {
                return Err(Error::InvalidAuthMgmt);
            }
            if get_user(auth.users.open()?, &r.name)?.is_none() {
                return Err(Error::UserNotFound);
            }
            auth.users.open_mut()?.remove(r.name.as_str())?;
            commit_revision(auth)?;
            drop_tokens_of(auth, &r.name)?;
            tracing::info!(user_name = %r.name, "deleted a user");
        }
        Request::AuthUserChangePassword(r) => {
            let mut user = get_user(auth.users.open()?, &r.name)?.ok_or(Error::UserNotFound)?;
            let no_password = user.options.as_ref().is_some_and(|o| o.no_password);
            user.password = if no_password {
                vec![]
            } else {
                r.hashed_password.as_bytes().to_vec()
            };
            put_user(auth, &user)?;
            commit_revision(auth)?;
            drop_tokens_of(auth, &r.name)?;
            tracing::info!(user_name = %r.name, "changed a password of a user");
        }
        Request::AuthUserGrantRole(r) => {
            let mut user = get_user(auth.users.open()?, &r.user)?.ok_or(Error::UserNotFound)?;
            if r.role != ROOT_ROLE && get_role(auth.roles.open()?, &r.role)?.is_none() {
                return Err(Error::RoleNotFound);
            }
            if let Err(at) = user.roles.binary_search(&r.role) {
                user.roles.insert(at, r.role.clone());
                put_user(auth, &user)?;
                commit_revision(auth)?;
                tracing::info!(user_name = %r.user, role_name = %r.role, "granted a role to a user");
            }
        }
        Request::AuthUserRevokeRole(r) => {
            if on && r.name == ROOT_USER && r.role == ROOT_ROLE {
                return Err(Error::InvalidAuthMgmt);
            }
            let mut user = get_user(auth.users.open()?, &r.name)?.ok_or(Error::UserNotFound)?;
            let before = user.roles.len();
            user.roles.retain(|x| *x != r.role);
            if user.roles.len() == before {
                return Err(Error::RoleNotGranted);
            }
            put_user(auth, &user)?;
            commit_revision(auth)?;
            tracing::info!(user_name = %r.name, role_name = %r.role, "revoked a role from a user");
        }
        Request::AuthRoleAdd(r) => {
            if r.name.is_empty() {
                return Err(Error::RoleEmpty);
            }
            if get_role(auth.roles.open()?, &r.name)?.is_some() {
                return Err(Error::RoleAlreadyExist);
            }
            put_role(
                auth,
                &Role {
                    name: r.name.as_bytes().to_vec(),
                    key_permission: vec![],
                },
            )?;
            commit_revision(auth)?;
            tracing::info!(role_name = %r.name, "created a role");
        }
        Request::AuthRoleDelete(r) => {
            if on && r.role == ROOT_ROLE {
                return Err(Error::InvalidAuthMgmt);
            }
            if get_role(auth.roles.open()?, &r.role)?.is_none() {
                return Err(Error::RoleNotFound);
            }
            auth.roles.open_mut()?.remove(r.role.as_str())?;
            let mut changed = Vec::new();
            for item in auth.users.open()?.iter()? {
                let (_, v) = item?;
                let mut u = User::decode(v.value())?;
                let before = u.roles.len();
                u.roles.retain(|x| *x != r.role);
                if u.roles.len() != before {
                    changed.push(u);
                }
            }
            for u in &changed {
                put_user(auth, u)?;
            }
            commit_revision(auth)?;
            tracing::info!(role_name = %r.role, "deleted a role");
        }
        Request::AuthRoleGrantPermission(r) => {
            let perm = r.perm.as_ref().ok_or(Error::PermissionNotGiven)?;
            if !valid_permission_range(perm) {
                return Err(Error::InvalidAuthMgmt);
            }
            let mut role = get_role(auth.roles.open()?, &r.name)?.ok_or(Error::RoleNotFound)?;
            let at = role
                .key_permission
                .partition_point(|p| p.key.as_slice() < perm.key.as_slice());
            match role.key_permission.get_mut(at) {
                Some(p) if p.key == perm.key && p.range_end == perm.range_end => {
                    p.perm_type = perm.perm_type;
                }
                _ => {
                    role.key_permission.push(perm.clone());
                    role.key_permission.sort_by(|a, b| a.key.cmp(&b.key));
                }
            }
            put_role(auth, &role)?;
            commit_revision(auth)?;
            tracing::info!(role_name = %r.name, "granted/updated a permission to a role");
        }
        Request::AuthRoleRevokePermission(r) => {
            let mut role = get_role(auth.roles.open()?, &r.role)?.ok_or(Error::RoleNotFound)?;
            let before = role.key_permission.len();
            role.key_permission
                .retain(|p| !(p.key == r.key && p.range_end == r.range_end));
            if role.key_permission.len() == before {
                return Err(Error::PermissionNotGranted);
            }
            put_role(auth, &role)?;
            commit_revision(auth)?;
            tracing::info!(role_name = %r.role, "revoked a permission on range");
        }
        _ => return Err(Error::Raft("not an auth request".into())),
    }
    Ok(AuthApplied {
        auth_revision: revision(&auth.meta)?,
        token: String::new(),
        store_revision: 0,
    })
}

/// Whether `req` is one of the auth requests [`apply`] handles.
pub fn is_auth_request(req: &Request) -> bool {
    matches!(
        req,
        Request::AuthEnable(_)
            | Request::AuthDisable(_)
            | Request::Authenticate(_)
            | Request::AuthUserAdd(_)
            | Request::AuthUserDelete(_)
            | Request::AuthUserChangePassword(_)
            | Request::AuthUserGrantRole(_)
            | Request::AuthUserRevokeRole(_)
            | Request::AuthRoleAdd(_)
            | Request::AuthRoleDelete(_)
            | Request::AuthRoleGrantPermission(_)
            | Request::AuthRoleRevokePermission(_)
    )
}
