//! The static tables file (`--tables`): `tables::ClusterTables::from_json` and `validate`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_daemon::fuzz::tables_file(data));
