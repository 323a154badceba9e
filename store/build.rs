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
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // Descriptors of every message, for the gRPC-JSON gateway (`api::gateway`).
        .file_descriptor_set_path(out_dir.join("concord_descriptor.bin"))
        .build_server(true)
        .build_client(true)
        // Services concord does not implement yet answer `Unimplemented`, never a fake OK.
        .generate_default_stubs(true)
        .compile_with_config(config, &files, &["proto"])?;
    Ok(())
}
