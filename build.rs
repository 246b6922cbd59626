//! Compiles the example protos with protox (pure Rust): the build needs no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=examples/proto");
    let fds = protox::compile(["bookinfo.proto"], ["examples/proto"])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
