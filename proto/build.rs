//! Generates Rust from `hexcast/v1/*.proto` with a vendored protoc, so no system protoc is
//! needed. gRPC stubs are generated only with the `grpc` feature, which keeps tonic out of
//! the pure crates that need only the messages.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "hexcast/v1/geo.proto",
        "hexcast/v1/incident.proto",
        "hexcast/v1/requests.proto",
        "hexcast/v1/alert.proto",
        "hexcast/v1/subscription.proto",
        "hexcast/v1/notification.proto",
        "hexcast/v1/recipients.proto",
        "hexcast/v1/deadletter.proto",
        "hexcast/v1/services.proto",
    ];
    for proto in &protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);

    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_server(grpc)
        .build_client(grpc)
        .file_descriptor_set_path(out_dir.join("hexcast_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;

    // Canonical proto3 JSON (camelCase names, enums as strings, 64-bit ints as strings) for
    // the offline tools that read and print messages as JSON lines.
    let descriptors = std::fs::read(out_dir.join("hexcast_descriptor.bin"))?;
    pbjson_build::Builder::new().register_descriptors(&descriptors)?.build(&[".hexcast.v1"])?;
    Ok(())
}
