//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) for the parsers of this crate, and
//! the replay of their seed corpora and regression inputs that plain `cargo test` runs.
//!
//! Each entry point runs the code the product runs on one input and panics when an invariant
//! breaks (what parses must serialize and parse back to the same value, errors are one line),
//! so a fuzz target and its replay test check the same things. Not an API: hidden from docs.

use std::{
    panic::{catch_unwind, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use crate::{
    labels::{parse_service_label, parse_service_labels, valid_name},
    Endpoint, Response, Stats, Status,
};

/// Panics unless `msg` is one non-empty line (what every error of the project must be).
pub fn assert_one_line(what: &str, msg: &str) {
    assert!(!msg.trim().is_empty(), "{what}: empty error message");
    assert!(
        !msg.contains(['\n', '\r']),
        "{what}: the error is not one line: {msg:?}"
    );
}

/// Service labels as runtimes hand them over: one option value per line of `data` (a CNI_ARGS
/// value, an item of `args.cni`, a Docker driver option), each `NAME:PORT[,NAME:PORT...]`.
pub fn service_labels(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let raw: Vec<&str> = text.split('\n').collect();
    for r in &raw {
        match parse_service_label(r) {
            Ok((name, port)) => {
                assert!(valid_name(&name) && port != 0, "{r:?} gave {name:?}:{port}");
                let canonical = format!("{name}:{port}");
                assert_eq!(
                    parse_service_label(&canonical),
                    Ok((name, port)),
                    "{r:?} does not parse back from {canonical:?}"
                );
            }
            Err(e) => assert_one_line("service label", &e),
        }
    }
    match parse_service_labels(raw.iter().copied()) {
        Ok(labels) => {
            let mut seen = std::collections::BTreeSet::new();
            for l in &labels {
                let (name, port) = parse_service_label(l)
                    .unwrap_or_else(|e| panic!("kept label {l:?} does not parse: {e}"));
                assert_eq!(*l, format!("{name}:{port}"), "kept label is not canonical");
                assert!(seen.insert((name, port)), "label {l:?} kept twice");
            }
            // What the daemon stores is read back unchanged, one by one or joined.
            assert_eq!(
                parse_service_labels(labels.iter().map(String::as_str)).as_ref(),
                Ok(&labels)
            );
            assert_eq!(
                parse_service_labels([labels.join(",").as_str()]).as_ref(),
                Ok(&labels)
            );
        }
        Err(e) => assert_one_line("service labels", &e),
    }
}

/// A response line of the API socket as the client reads it: the response, its error kind,
/// and every result type a client decodes from it.
pub fn api_response(data: &[u8]) {
    // The client reads the line into a String: anything not UTF-8 fails there.
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(resp) = serde_json::from_str::<Response>(line) else {
        return;
    };
    let text = serde_json::to_string(&resp).expect("responses serialize");
    assert!(!text.contains('\n'), "a response must stay one line");
    let again: Response = serde_json::from_str(&text).expect("a response parses back");
    assert_eq!(again.into_result(), resp.clone().into_result());
    let Ok(value) = resp.into_result() else {
        return;
    };
    if let Ok(ep) = serde_json::from_value::<Endpoint>(value.clone()) {
        let wire = serde_json::to_value(&ep).expect("endpoints serialize");
        let back: Endpoint = serde_json::from_value(wire).expect("an endpoint parses back");
        assert_eq!(back, ep, "the endpoint's wire form changed it");
    }
    let _ = serde_json::from_value::<Option<Endpoint>>(value.clone());
    let _ = serde_json::from_value::<Vec<Endpoint>>(value.clone());
    if let Ok(status) = serde_json::from_value::<Status>(value.clone()) {
        let back: Status =
            serde_json::from_value(serde_json::to_value(&status).expect("status serializes"))
                .expect("a status parses back");
        assert_eq!(back, status);
    }
    let _ = serde_json::from_value::<Stats>(value);
}

/// Where the fuzz directory of the workspace is.
fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// Runs `run` (what fuzz target `target` calls) on every file of `fuzz/regressions/<target>/`
/// and `fuzz/corpus/<target>/`, and fails naming every input that panics. Returns how many
/// inputs ran, so a test can insist there are some.
pub fn replay(target: &str, run: impl Fn(&[u8])) -> usize {
    let mut files = Vec::new();
    for dir in ["regressions", "corpus"] {
        let dir = fuzz_dir().join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        files.extend(
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.is_file()),
        );
    }
    files.sort();
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz target {target}: these inputs panic:\n{}",
        failed.join("\n")
    );
    files.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_label_inputs_replay() {
        assert!(replay("service_labels", service_labels) > 0);
    }

    #[test]
    fn api_response_inputs_replay() {
        assert!(replay("api_request", api_response) > 0);
    }
}
