//! Compiles concord's protobuf definitions (etcd's API plus our internal messages) with a
//! vendored `protoc`, so `cargo build` needs nothing but cargo.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/v3lockpb/v3lock.proto",
        "proto/v3electionpb/v3election.proto",
        "proto/concordpb/internal.proto",
        "proto/concordpb/peer.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Services concord does not implement yet answer `Unimplemented`, never a fake OK.
        .generate_default_stubs(true)
        .compile_with_config(config, &files, &["proto"])?;
    Ok(())
}
