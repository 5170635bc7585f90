//! Generates the gRPC code for `proto/hark/v1/hark.proto` plus a descriptor set for reflection.
//! protoc comes from `protoc-bin-vendored`, so a fresh machine needs no system package.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { env::set_var("PROTOC", protoc) };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("hark_descriptor.bin"))
        .compile_protos(&["proto/hark/v1/hark.proto"], &["proto"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
