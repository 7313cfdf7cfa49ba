//! Compiles `anxin/v1/*.proto` with protox (pure Rust, no system `protoc`) and
//! generates tonic/prost code plus the descriptor set used by server reflection.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "anxin/v1/common.proto",
    "anxin/v1/alarm.proto",
    "anxin/v1/dispatch.proto",
    "anxin/v1/caregiver.proto",
    "anxin/v1/registry.proto",
    "anxin/v1/scheduling.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(proto).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    std::fs::write(out_dir.join("anxin_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure().build_server(true).build_client(true).compile_fds(fds)?;
    Ok(())
}
