//! The CNI plugin's input: CNI_* variables (`CniEnv::from_vars`), then the network
//! configuration on stdin, decoded and checked by `overlay_cni::decode` (what `run` does before
//! it calls the daemon).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_cni::fuzz::cni_config(data));
