//! A watch history of puts and deletes of arbitrary keys and values applied to
//! `store::ClusterView`, checked against a fresh listing, then validated into tables.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| overlay_daemon::fuzz::etcd_view(data));
