//! Generates the `tvix.castore.v1` protobuf and tonic code with protox (a pure-Rust
//! protobuf compiler, so no system `protoc` is needed) and writes the encoded file
//! descriptor set that the server hands to gRPC reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "protos/castore.proto";
    println!("cargo:rerun-if-changed={proto}");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut compiler = protox::Compiler::new(["protos"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("castore.proto")?;
    std::fs::write(
        out_dir.join("castore_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .bytes(".")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
