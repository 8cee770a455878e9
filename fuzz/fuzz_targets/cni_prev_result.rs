//! A result chained from a previous run (`prevResult`), as CNI CHECK reads it:
//! `NetConf::prev_result` (`CniResult::from_prev`) and the comparison with the daemon's endpoint
//! (`check_recorded`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_cni::fuzz::cni_prev_result(data));
