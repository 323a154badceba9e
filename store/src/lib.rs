//! concord: a raft-backed key-value server that speaks etcd 3.5's API.
//!
//! A request flows down one path and its answer flows back up it:
//! `api` (tonic services, HTTP endpoints) -> `server` (validation, propose-and-wait, ReadIndex)
//! -> `raft` (the RawNode loop) -> `apply` (committed entry -> state change) -> `mvcc` ->
//! `backend` (redb). `config` turns etcd's flags into a [`config::Config`].

pub mod api;
pub mod apply;
pub mod auth;
pub mod backend;
pub mod compactor;
pub mod concurrency;
pub mod config;
pub mod embed;
pub mod error;
pub mod fault;
pub mod hash;
pub mod ids;
pub mod index;
pub mod lease;
pub mod membership;
pub mod mvcc;
pub mod overlay;
pub mod proto;
pub mod raft;
pub mod server;
pub mod snapshot;
pub mod tls;
pub mod transport;
pub mod wal;
pub mod watch;

pub use error::{Error, Result};

/// The etcd version concord reports (`Status.version`, `/version`): clients enable features by it.
pub const ETCD_VERSION: &str = "3.5.16";
/// The cluster version concord reports, as etcd 3.5 does (`major.minor.0`).
pub const ETCD_CLUSTER_VERSION: &str = "3.5.0";
