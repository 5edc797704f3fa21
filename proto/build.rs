//! Build script of cairn-proto: generates the Rust types of cairn's control API
//! (`cairn.proto`, gRPC, behind the `cri` feature) with tonic-build. Runs at build time.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cairn.proto");
    // The control API is gRPC, part of the `cri` feature (the shim builds without it).
    if std::env::var_os("CARGO_FEATURE_CRI").is_some() {
        tonic_prost_build::configure().compile_protos(&["cairn.proto"], &["."])?;
    }
    Ok(())
}
