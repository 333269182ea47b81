//! Compiles the protos with protox (pure Rust) so a machine without protoc can build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = [
        "workload/workload.proto",
        "sigil/v1/types.proto",
        "sigil/v1/agent.proto",
        "sigil/v1/admin.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // Workload API certificate and key fields are `Bytes` so the agent shares one buffer
        // across every subscriber instead of copying it per stream.
        .bytes(".X509SVID")
        .bytes(".X509SVIDResponse")
        .bytes(".X509BundlesResponse")
        .bytes(".JWTBundlesResponse")
        .compile_fds(fds)?;
    Ok(())
}
