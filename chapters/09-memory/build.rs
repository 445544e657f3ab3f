// Compiles proto/abi.proto into Rust at build time. `protox` parses the
// file in pure Rust, so no `protoc` binary is needed; prost-build writes
// the generated code to OUT_DIR, where src/pb/mod.rs includes it.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/abi.proto";
    println!("cargo::rerun-if-changed={proto}");

    let descriptors = protox::compile([proto], ["proto"])?;
    prost_build::Config::new()
        // `bytes` fields become `bytes::Bytes`: cloning a value is cheap.
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
