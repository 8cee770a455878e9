//! Generates the CRI client (Kubernetes' runtime.v1 API) the containerd tests speak.

fn main() {
    println!("cargo:rerun-if-changed=proto/runtime/v1/api.proto");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&["proto/runtime/v1/api.proto"], &["proto"])
        .expect("compile the CRI proto (protoc: cargo xtask setup installs protobuf-compiler)");
}
