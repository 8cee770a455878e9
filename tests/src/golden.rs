//! Golden files: expected outputs kept in `tests/golden/`, compared line by line.
//! `UPDATE_GOLDEN=1` rewrites them from what the test produced (review the diff).

use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("golden")
        .join(format!("{name}.txt"))
}

/// Panics with the first differing lines unless `actual` is the golden file `name`.
pub fn assert_golden(name: &str, actual: &str) {
    let file = path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(file.parent().expect("dir")).expect("golden dir");
        std::fs::write(&file, actual).expect("write golden file");
        return;
    }
    let expected = std::fs::read_to_string(&file).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; run with UPDATE_GOLDEN=1 to write it from:\n{actual}",
            file.display()
        )
    });
    if expected == actual {
        return;
    }
    let mut diff = String::new();
    let (e, a): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    for i in 0..e.len().max(a.len()) {
        let (x, y) = (e.get(i), a.get(i));
        if x != y {
            diff.push_str(&format!(
                "line {}:\n  - {}\n  + {}\n",
                i + 1,
                x.unwrap_or(&"<none>"),
                y.unwrap_or(&"<none>")
            ));
        }
    }
    panic!(
        "{} differs (UPDATE_GOLDEN=1 rewrites it):\n{diff}\nwhole output:\n{actual}",
        file.display()
    );
}

/// Replaces each `(from, to)` in `text`, longest `from` first (so a value that contains
/// another is replaced whole).
pub fn normalize(text: &str, pairs: &[(String, String)]) -> String {
    let mut pairs: Vec<&(String, String)> = pairs.iter().filter(|(f, _)| !f.is_empty()).collect();
    pairs.sort_by_key(|(f, _)| std::cmp::Reverse(f.len()));
    pairs.iter().fold(text.to_owned(), |t, (from, to)| {
        t.replace(from.as_str(), to)
    })
}
