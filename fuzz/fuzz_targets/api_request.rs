//! Lines of the API socket: `overlay_daemon::api::parse_request` (the daemon reading a
//! request) and the client reading a `Response` and its typed results.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_daemon::fuzz::api_request(data));
