//! An etcd value decoded as every record kind (`store::records::decode` for networks, nodes,
//! blocks, endpoints, services).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_daemon::fuzz::etcd_record(data));
