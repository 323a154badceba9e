//! The crate's one error type and its one mapping to gRPC statuses.
//!
//! Every variant that a client can see carries etcd 3.5's exact message text, and
//! [`Error::code`] gives etcd's gRPC code for it: Go clients match on both. Nothing else in the
//! crate builds a `tonic::Status` from scratch for these conditions.

use tonic::{Code, Status};

/// Result alias used throughout the store crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Errors concord reports. Client-visible texts are etcd's (`api/v3rpc/rpctypes/error.go`).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    #[error("etcdserver: key not found")]
    KeyNotFound,
    #[error("etcdserver: value is provided")]
    ValueProvided,
    #[error("etcdserver: lease is provided")]
    LeaseProvided,
    #[error("etcdserver: too many operations in txn request")]
    TooManyOps,
    #[error("etcdserver: duplicate key given in txn request")]
    DuplicateKey,
    #[error("etcdserver: invalid sort option")]
    InvalidSortOption,
    #[error("etcdserver: mvcc: required revision has been compacted")]
    Compacted,
    #[error("etcdserver: mvcc: required revision is a future revision")]
    FutureRev,
    #[error("etcdserver: mvcc: database space exceeded")]
    NoSpace,
    #[error("etcdserver: requested lease not found")]
    LeaseNotFound,
    #[error("etcdserver: lease already exists")]
    LeaseExists,
    #[error("etcdserver: too large lease TTL")]
    LeaseTtlTooLarge,
    #[error("etcdserver: request is too large")]
    RequestTooLarge,
    #[error("etcdserver: no leader")]
    NoLeader,
    #[error("etcdserver: not leader")]
    NotLeader,
    #[error("etcdserver: request timed out")]
    Timeout,
    #[error("etcdserver: server stopped")]
    Stopped,
    #[error("etcdserver: corrupt cluster")]
    Corrupt,
    /// The client gave up on a request that was still waiting (Go's `context.Canceled`).
    #[error("context canceled")]
    Canceled,
    #[error("etcdserver: member ID already exist")]
    MemberExist,
    #[error("etcdserver: Peer URLs already exists")]
    PeerUrlExist,
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    MemberNotEnoughStarted,
    #[error("etcdserver: given member URLs are invalid")]
    MemberBadUrls,
    #[error("etcdserver: member not found")]
    MemberNotFound,
    #[error("etcdserver: can only promote a learner member")]
    MemberNotLearner,
    #[error("etcdserver: can only promote a learner member which is in sync with leader")]
    LearnerNotReady,
    #[error("etcdserver: too many learner members in cluster")]
    TooManyLearners,
    #[error("etcdserver: rpc not supported for learner")]
    NotSupportedForLearner,
    #[error("etcdserver: unhealthy cluster")]
    Unhealthy,
    /// MoveLeader to a member that is not a voting member of the cluster.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// MoveLeader: the transferee did not become leader in time (etcd maps no gRPC code to it,
    /// so clients see `Unknown`).
    #[error("etcdserver: request timed out, leader transfer took too long")]
    TimeoutLeaderTransfer,
    /// This member was removed from the cluster; it stops.
    #[error("the member has been permanently removed from the cluster")]
    Removed,
    /// A lock's or campaign's key vanished (its lease ended) while it waited
    /// (`concurrency.ErrSessionExpired`).
    #[error("session expired")]
    SessionExpired,
    /// `concurrency.ErrElectionNoLeader`.
    #[error("election: no leader")]
    ElectionNoLeader,
    /// `concurrency.ErrElectionNotLeader`.
    #[error("election: not leader")]
    ElectionNotLeader,
    /// `v3election.ErrMissingLeaderKey`.
    #[error("\"leader\" field must be provided")]
    MissingLeaderKey,
    #[error("etcdserver: root user does not exist")]
    RootUserNotExist,
    #[error("etcdserver: root user does not have root role")]
    RootRoleNotExist,
    #[error("etcdserver: user name already exists")]
    UserAlreadyExist,
    #[error("etcdserver: user name is empty")]
    UserEmpty,
    #[error("etcdserver: user name not found")]
    UserNotFound,
    #[error("etcdserver: role name already exists")]
    RoleAlreadyExist,
    #[error("etcdserver: role name not found")]
    RoleNotFound,
    #[error("etcdserver: role name is empty")]
    RoleEmpty,
    #[error("etcdserver: authentication failed, invalid user ID or password")]
    AuthFailed,
    #[error("etcdserver: permission not given")]
    PermissionNotGiven,
    #[error("etcdserver: permission denied")]
    PermissionDenied,
    #[error("etcdserver: role is not granted to the user")]
    RoleNotGranted,
    #[error("etcdserver: permission is not granted to the role")]
    PermissionNotGranted,
    #[error("etcdserver: authentication is not enabled")]
    AuthNotEnabled,
    #[error("etcdserver: invalid auth token")]
    InvalidAuthToken,
    #[error("etcdserver: invalid auth management")]
    InvalidAuthMgmt,
    #[error("etcdserver: revision of auth store is old")]
    AuthOldRevision,
    /// etcd's `auth.ErrNoPasswordUser`, which etcd maps to no gRPC code (clients see `Unknown`).
    #[error("auth: authentication failed, password was given for no password user")]
    NoPasswordUser,
    /// Authenticate with a JWT provider that has only a public key (etcd's `ErrVerifyOnly`).
    #[error("auth: token signing attempted with verify-only key")]
    VerifyOnly,
    /// The backend failed; the message says what broke. The server stops applying after this.
    #[error("etcdserver: storage error: {0}")]
    Storage(String),
    /// A raft-level failure that is not the client's fault.
    #[error("etcdserver: raft error: {0}")]
    Raft(String),
    /// The data dir cannot be used; the message says why and what to do.
    #[error("{0}")]
    DataDir(String),
}

impl Error {
    /// etcd's gRPC status code for this error.
    pub fn code(&self) -> Code {
        use Error::*;
        match self {
            EmptyKey | KeyNotFound | ValueProvided | LeaseProvided | TooManyOps | DuplicateKey
            | RequestTooLarge | InvalidSortOption => Code::InvalidArgument,
            Compacted | FutureRev => Code::OutOfRange,
            NoSpace => Code::ResourceExhausted,
            LeaseNotFound => Code::NotFound,
            LeaseExists => Code::FailedPrecondition,
            LeaseTtlTooLarge => Code::OutOfRange,
            NoLeader | Timeout | Stopped => Code::Unavailable,
            NotLeader => Code::FailedPrecondition,
            Corrupt => Code::DataLoss,
            Canceled => Code::Cancelled,
            MemberExist
            | PeerUrlExist
            | MemberNotEnoughStarted
            | MemberNotLearner
            | LearnerNotReady
            | TooManyLearners
            | NotSupportedForLearner
            | BadLeaderTransferee => Code::FailedPrecondition,
            TimeoutLeaderTransfer => Code::Unknown,
            MemberBadUrls => Code::InvalidArgument,
            MemberNotFound => Code::NotFound,
            Unhealthy => Code::Unavailable,
            Removed => Code::Unavailable,
            // etcd's Lock and Election services return these as plain Go errors.
            SessionExpired | ElectionNoLeader | ElectionNotLeader | MissingLeaderKey => {
                Code::Unknown
            }
            RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound
            | RoleAlreadyExist | RoleNotFound | RoleNotGranted | PermissionNotGranted
            | AuthNotEnabled => Code::FailedPrecondition,
            UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt
            | AuthOldRevision => Code::InvalidArgument,
            PermissionDenied => Code::PermissionDenied,
            InvalidAuthToken => Code::Unauthenticated,
            NoPasswordUser | VerifyOnly => Code::Unknown,
            Storage(_) | Raft(_) | DataDir(_) => Code::Internal,
        }
    }
}

impl Error {
    /// The error another member answered with, recognised by its message as etcd's clients do
    /// (a forwarded request); any other answer becomes [`Error::Raft`] with its text.
    pub fn from_status(s: &Status) -> Error {
        use Error::*;
        let known = [
            LeaseNotFound,
            LeaseExists,
            LeaseTtlTooLarge,
            NoSpace,
            Corrupt,
            MemberExist,
            PeerUrlExist,
            MemberNotEnoughStarted,
            MemberBadUrls,
            MemberNotFound,
            MemberNotLearner,
            LearnerNotReady,
            TooManyLearners,
            Unhealthy,
            NoLeader,
            NotLeader,
            Timeout,
            Stopped,
        ];
        known
            .into_iter()
            .find(|e| e.to_string() == s.message())
            .unwrap_or_else(|| Raft(format!("forwarded request failed: {}", s.message())))
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl Error {
    /// The status etcd's Lock and Election services answer with. etcd serves them through an
    /// in-process etcd client, which turns every gRPC error of the KV and Lease calls it makes
    /// into a plain Go error: the client sees code `Unknown` with etcd's message
    /// (e.g. `etcdserver: requested lease not found`).
    pub fn via_client(self) -> Status {
        Status::new(Code::Unknown, self.to_string())
    }
}

macro_rules! storage_errors {
    ($($t:ty),* $(,)?) => {$(
        impl From<$t> for Error {
            fn from(e: $t) -> Self {
                Error::Storage(e.to_string())
            }
        }
    )*};
}
storage_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::CompactionError,
    prost::DecodeError,
);

impl From<raft::Error> for Error {
    fn from(e: raft::Error) -> Self {
        Error::Raft(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestCase {
        err: Error,
        code: Code,
        message: &'static str,
    }

    #[test]
    fn every_client_error_has_etcds_code_and_text() {
        let cases = [
            TestCase {
                err: Error::EmptyKey,
                code: Code::InvalidArgument,
                message: "etcdserver: key is not provided",
            },
            TestCase {
                err: Error::KeyNotFound,
                code: Code::InvalidArgument,
                message: "etcdserver: key not found",
            },
            TestCase {
                err: Error::ValueProvided,
                code: Code::InvalidArgument,
                message: "etcdserver: value is provided",
            },
            TestCase {
                err: Error::LeaseProvided,
                code: Code::InvalidArgument,
                message: "etcdserver: lease is provided",
            },
            TestCase {
                err: Error::TooManyOps,
                code: Code::InvalidArgument,
                message: "etcdserver: too many operations in txn request",
            },
            TestCase {
                err: Error::DuplicateKey,
                code: Code::InvalidArgument,
                message: "etcdserver: duplicate key given in txn request",
            },
            TestCase {
                err: Error::InvalidSortOption,
                code: Code::InvalidArgument,
                message: "etcdserver: invalid sort option",
            },
            TestCase {
                err: Error::Compacted,
                code: Code::OutOfRange,
                message: "etcdserver: mvcc: required revision has been compacted",
            },
            TestCase {
                err: Error::FutureRev,
                code: Code::OutOfRange,
                message: "etcdserver: mvcc: required revision is a future revision",
            },
            TestCase {
                err: Error::NoSpace,
                code: Code::ResourceExhausted,
                message: "etcdserver: mvcc: database space exceeded",
            },
            TestCase {
                err: Error::LeaseNotFound,
                code: Code::NotFound,
                message: "etcdserver: requested lease not found",
            },
            TestCase {
                err: Error::LeaseExists,
                code: Code::FailedPrecondition,
                message: "etcdserver: lease already exists",
            },
            TestCase {
                err: Error::LeaseTtlTooLarge,
                code: Code::OutOfRange,
                message: "etcdserver: too large lease TTL",
            },
            TestCase {
                err: Error::RequestTooLarge,
                code: Code::InvalidArgument,
                message: "etcdserver: request is too large",
            },
            TestCase {
                err: Error::NoLeader,
                code: Code::Unavailable,
                message: "etcdserver: no leader",
            },
            TestCase {
                err: Error::NotLeader,
                code: Code::FailedPrecondition,
                message: "etcdserver: not leader",
            },
            TestCase {
                err: Error::Timeout,
                code: Code::Unavailable,
                message: "etcdserver: request timed out",
            },
            TestCase {
                err: Error::Stopped,
                code: Code::Unavailable,
                message: "etcdserver: server stopped",
            },
            TestCase {
                err: Error::Corrupt,
                code: Code::DataLoss,
                message: "etcdserver: corrupt cluster",
            },
            TestCase {
                err: Error::Canceled,
                code: Code::Cancelled,
                message: "context canceled",
            },
            TestCase {
                err: Error::SessionExpired,
                code: Code::Unknown,
                message: "session expired",
            },
            TestCase {
                err: Error::ElectionNoLeader,
                code: Code::Unknown,
                message: "election: no leader",
            },
            TestCase {
                err: Error::ElectionNotLeader,
                code: Code::Unknown,
                message: "election: not leader",
            },
            TestCase {
                err: Error::MissingLeaderKey,
                code: Code::Unknown,
                message: "\"leader\" field must be provided",
            },
            TestCase {
                err: Error::PeerUrlExist,
                code: Code::FailedPrecondition,
                message: "etcdserver: Peer URLs already exists",
            },
            TestCase {
                err: Error::MemberNotFound,
                code: Code::NotFound,
                message: "etcdserver: member not found",
            },
            TestCase {
                err: Error::LearnerNotReady,
                code: Code::FailedPrecondition,
                message: "etcdserver: can only promote a learner member which is in sync with leader",
            },
            TestCase {
                err: Error::TooManyLearners,
                code: Code::FailedPrecondition,
                message: "etcdserver: too many learner members in cluster",
            },
            TestCase {
                err: Error::NotSupportedForLearner,
                code: Code::FailedPrecondition,
                message: "etcdserver: rpc not supported for learner",
            },
            TestCase {
                err: Error::MemberBadUrls,
                code: Code::InvalidArgument,
                message: "etcdserver: given member URLs are invalid",
            },
        ];
        for c in cases {
            let status: Status = c.err.into();
            assert_eq!(status.code(), c.code, "{}", c.message);
            assert_eq!(status.message(), c.message);
        }
    }

    #[test]
    fn lock_and_election_errors_arrive_as_unknown_with_etcds_text() {
        let s = Error::LeaseNotFound.via_client();
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(s.message(), "etcdserver: requested lease not found");
        let s = Error::ElectionNoLeader.via_client();
        assert_eq!(s.code(), Code::Unknown);
        assert_eq!(s.message(), "election: no leader");
    }
}
