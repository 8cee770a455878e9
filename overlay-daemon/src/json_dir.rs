//! One JSON file per id under a directory: what the daemon remembers across restarts (its
//! endpoints, the Docker driver's bindings). A file is written whole or not at all (written
//! aside, then renamed); a write a crash interrupted leaves only its `.tmp`, which nothing
//! reads and the next start discards.

use std::path::{Path, PathBuf};

use serde::{de::DeserializeOwned, Serialize};

pub struct JsonDir {
    dir: PathBuf,
}

impl JsonDir {
    /// The directory's files, after discarding the partial writes of an earlier run (called
    /// once per directory at start, before any request can write).
    pub fn open(dir: &Path) -> Self {
        let this = Self {
            dir: dir.to_owned(),
        };
        this.discard_partial_writes();
        this
    }

    /// Where `id`'s file is.
    pub fn path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn partial(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.tmp"))
    }

    pub fn load<T: DeserializeOwned>(&self, id: &str) -> Option<T> {
        serde_json::from_slice(&std::fs::read(self.path(id)).ok()?).ok()
    }

    /// Writes `id`'s file whole; the directory is made if missing. The error names no path:
    /// the caller knows what it was saving.
    pub fn save<T: Serialize>(&self, id: &str, value: &T) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let tmp = self.partial(id);
        std::fs::write(
            &tmp,
            serde_json::to_vec_pretty(value).expect("serializable"),
        )?;
        std::fs::rename(tmp, self.path(id))
    }

    /// Every entry that parses, in no particular order.
    pub fn all<T: DeserializeOwned>(&self) -> Vec<T> {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        dir.flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// How long ago `id`'s file last changed.
    pub fn age(&self, id: &str) -> Option<std::time::Duration> {
        std::fs::metadata(self.path(id))
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
    }

    /// Removes `id`'s file and any partial write of it.
    pub fn remove(&self, id: &str) {
        let _ = std::fs::remove_file(self.path(id));
        let _ = std::fs::remove_file(self.partial(id));
    }

    fn discard_partial_writes(&self) {
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in dir.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|x| x == "tmp") {
                tracing::info!(path = %path.display(), "discarding a write an earlier run did not finish");
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_a_crash_interrupted_is_gone_at_the_next_start() {
        let dir = std::env::temp_dir().join(format!("json-dir-{}", std::process::id()));
        let files = JsonDir::open(&dir);
        files.save("a", &1u32).unwrap();
        std::fs::write(dir.join("b.tmp"), b"{\"trunc").unwrap();
        assert_eq!(files.all::<u32>(), vec![1], "a partial write is never read");
        let files = JsonDir::open(&dir);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["a.json"]);
        files.remove("a");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir(&dir).unwrap();
    }
}
