//! Compiles `proto/wharf.proto` with `protox` (pure Rust, no system `protoc`)
//! and generates the prost messages plus tonic client and server code, and
//! the file descriptor set that server reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/wharf.proto");
    let fds = protox::compile(["proto/wharf.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("wharf_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .codec_path("crate::codec::WharfCodec")
        // No `connect` over tonic's `Channel`: wharf-client brings its own
        // connection, and without it tonic's client transport is not built.
        .build_transport(false)
        .bytes(".")
        .compile_fds(fds)?;
    Ok(())
}
