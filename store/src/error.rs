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
            Storage(_) | Raft(_) | DataDir(_) => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        Status::new(e.code(), e.to_string())
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
        ];
        for c in cases {
            let status: Status = c.err.into();
            assert_eq!(status.code(), c.code, "{}", c.message);
            assert_eq!(status.message(), c.message);
        }
    }
}
