//! Service labels (`overlay.service=NAME:PORT[,...]`) from CNI args and Docker driver options:
//! `overlay_api::labels::parse_service_labels`, one runtime option per line.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_api::fuzz::service_labels(data));
