//! Generates the `tvix.castore.v1` protobuf and tonic code, and the seed's
//! `tvix.store.v1` BlobService and DirectoryService, with protox (a pure-Rust
//! protobuf compiler, so no system `protoc` is needed), and writes the encoded
//! file descriptor sets that the server hands to gRPC reflection.

use std::path::PathBuf;

/// The seed's messages that are wire-identical to the current ones: the seed's
/// services are generated over the current Rust types, so their servers hand
/// requests straight to the current ones. Only `BlobMeta` is its own type.
const SEED_SAME_ON_THE_WIRE: &[&str] = &[
    "Directory",
    "DirectoryNode",
    "FileNode",
    "SymlinkNode",
    "StatBlobRequest",
    "ReadBlobRequest",
    "BlobChunk",
    "PutBlobResponse",
    "GetDirectoryRequest",
    "PutDirectoryResponse",
];

/// Compiles `file` (in `protos/`) with `config`, writing its encoded descriptor
/// set to `OUT_DIR/{descriptor}` for reflection.
fn compile(
    file: &str,
    descriptor: &str,
    config: tonic_prost_build::Builder,
) -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=protos/{file}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["protos"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file(file)?;
    std::fs::write(
        out_dir.join(descriptor),
        compiler.encode_file_descriptor_set(),
    )?;
    config.compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    compile(
        "castore.proto",
        "castore_descriptor.bin",
        tonic_prost_build::configure()
            .bytes(".")
            .codec_path("crate::codec::StrictCodec"),
    )?;
    let mut seed = tonic_prost_build::configure()
        .bytes(".")
        .codec_path("crate::codec::StrictCodec");
    for name in SEED_SAME_ON_THE_WIRE {
        seed = seed.extern_path(
            format!(".tvix.store.v1.{name}"),
            format!("crate::proto::{name}"),
        );
    }
    compile("seed.proto", "seed_descriptor.bin", seed)
}
