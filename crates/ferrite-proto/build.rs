//! Compiles `proto/ferrite/v1/*.proto` with protox (pure Rust, so no `protoc` needs to be installed).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut files = Vec::new();
    for entry in std::fs::read_dir(root.join("ferrite/v1"))? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            files.push(path);
        }
    }
    files.sort();
    println!("cargo:rerun-if-changed={}", root.join("ferrite/v1").display());
    let descriptors = protox::compile(&files, [&root])?;

    // Server reflection answers from this encoded set, so grpcurl-style tools work without the .proto files.
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("ferrite_descriptor.bin"), descriptors.encode_to_vec())?;

    // The gRPC clients and servers need tonic; crates that only want the messages (ferrite-core) leave
    // the `grpc` feature off and so never compile tonic on their behalf.
    tonic_prost_build::configure()
        .server_mod_attribute(".", r#"#[cfg(feature = "grpc")]"#)
        .client_mod_attribute(".", r#"#[cfg(feature = "grpc")]"#)
        .compile_fds(descriptors)?;
    Ok(())
}
