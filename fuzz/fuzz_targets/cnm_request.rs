//! A Docker plugin call (request path, newline, body): `overlay_daemon::cnm::decode`, the
//! decoding and checking `Driver::call` runs before it touches the cluster.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_daemon::fuzz::cnm_request(data));
