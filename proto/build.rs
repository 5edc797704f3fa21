fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=cairn.proto");
    tonic_prost_build::configure().compile_protos(&["cairn.proto"], &["."])?;
    Ok(())
}
