//! Generated protobuf and gRPC code: etcd's wire API (`etcdserverpb`, `mvccpb`, `authpb`,
//! `v3lockpb`, `v3electionpb`) and concord's internal messages (`concordpb`).
//!
//! The `.proto` sources live in `store/proto/`; `build.rs` compiles them with a vendored
//! `protoc`. This module only includes the output; it must never hold hand-written logic. The
//! operator and the tests use these clients too, so there is exactly one proto compile.

#![allow(clippy::all, clippy::pedantic, missing_docs)]

pub mod mvccpb {
    tonic::include_proto!("mvccpb");
}
pub mod authpb {
    tonic::include_proto!("authpb");
}
pub mod etcdserverpb {
    tonic::include_proto!("etcdserverpb");
}
pub mod v3lockpb {
    tonic::include_proto!("v3lockpb");
}
pub mod v3electionpb {
    tonic::include_proto!("v3electionpb");
}
pub mod concordpb {
    tonic::include_proto!("concordpb");
}

/// The encoded `FileDescriptorSet` of every proto above (the JSON gateway transcodes with it).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("concord_descriptor");
