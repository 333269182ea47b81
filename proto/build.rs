//! Compiles the protos with protox (pure Rust) so a machine without protoc can build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let workload = ["workload/workload.proto"];
    let sigil = [
        "sigil/v1/types.proto",
        "sigil/v1/agent.proto",
        "sigil/v1/admin.proto",
    ];
    for f in workload.iter().chain(&sigil) {
        println!("cargo:rerun-if-changed={f}");
    }
    // The Workload API is compiled on its own so that its services use the lean codec: an agent
    // holds one such stream per workload connection for hours, and the default codec keeps an
    // 8 KiB encode buffer alive for each (see `src/codec.rs`).
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .codec_path("crate::codec::LeanCodec")
        // Workload API certificate and key fields are `Bytes` so the agent shares one buffer
        // across every subscriber instead of copying it per stream.
        .bytes(".X509SVID")
        .bytes(".X509SVIDResponse")
        .bytes(".X509BundlesResponse")
        .bytes(".JWTBundlesResponse")
        .compile_fds(protox::compile(workload, ["."])?)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(protox::compile(sigil, ["."])?)?;
    Ok(())
}
