//! Compiles the router <-> shard contract (proto/) into Rust at build time; nothing generated
//! is checked in.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    let proto = "../proto/ferrite/shard/v1/shard.proto";
    println!("cargo:rerun-if-changed={proto}");
    tonic_prost_build::configure()
        .build_server(true) // the in-process fake shard used by tests implements the server
        .compile_protos(&[proto], &["../proto"])?;
    Ok(())
}
