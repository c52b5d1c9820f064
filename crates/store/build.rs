//! Generates the `tvix.store.v1` protobuf and tonic code with protox (no system
//! `protoc`), reusing `cairn-castore`'s generated `tvix.castore.v1` types, and writes
//! the encoded file descriptor set for gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/store.proto";
    let castore = "../castore/protos";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-changed={castore}/castore.proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["protos", castore])?;
    compiler.include_imports(false).include_source_info(true);
    compiler.open_file("store.proto")?;
    // Reflection gets castore.proto from cairn-castore's own set.
    std::fs::write(
        out_dir.join("store_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    let mut with_imports = protox::Compiler::new(["protos", castore])?;
    with_imports.include_imports(true);
    with_imports.open_file("store.proto")?;
    tonic_prost_build::configure()
        .bytes(".")
        .extern_path(".tvix.castore.v1", "::cairn_castore::proto")
        .codec_path("::cairn_castore::codec::StrictCodec")
        .compile_fds(with_imports.file_descriptor_set())?;
    Ok(())
}
