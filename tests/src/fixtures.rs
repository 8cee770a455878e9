//! Helpers for JSON-fixture suites (CNI, CNM) and for commands whose output a test needs.

use std::{
    path::{Path, PathBuf},
    process::Output,
};

use serde_json::Value;

/// `expected` is a subset of `actual`: objects key by key, arrays element by element.
pub fn json_subset(expected: &Value, actual: &Value) -> bool {
    match (expected, actual) {
        (Value::Object(e), Value::Object(a)) => e
            .iter()
            .all(|(k, v)| a.get(k).is_some_and(|av| json_subset(v, av))),
        (Value::Array(e), Value::Array(a)) => {
            e.len() <= a.len() && e.iter().zip(a).all(|(ev, av)| json_subset(ev, av))
        }
        (e, a) => e == a,
    }
}

/// The fixtures of `tests/fixtures/<suite>/`, in file name order, as (file name, JSON).
pub fn load(suite: &str, at_least: usize) -> Vec<(String, Value)> {
    let dir: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(suite);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert!(
        files.len() >= at_least,
        "fixtures missing in {}",
        dir.display()
    );
    files
        .into_iter()
        .map(|path| {
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            let json = serde_json::from_slice(&std::fs::read(&path).unwrap())
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            (file, json)
        })
        .collect()
}

/// The stdout of a command that must have succeeded (its stderr in the panic otherwise).
pub fn stdout_ok(what: &str, out: Output) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `actual[field]` is a non-empty, one-line error message, containing `needle` if given.
pub fn assert_one_line_error(what: &str, actual: &Value, field: &str, needle: Option<&str>) {
    let msg = actual[field].as_str().unwrap_or_default();
    assert!(
        !msg.is_empty() && !msg.contains('\n'),
        "{what}: a one-line {field} expected: {actual}"
    );
    if let Some(needle) = needle {
        assert!(
            msg.contains(needle),
            "{what}: {field} lacks {needle:?}: {actual}"
        );
    }
}
