//! Pinned maps outlive the daemon, so a new release may find maps whose layout its programs
//! do not share (a value grew, a table changed type or size). Those are made anew for the
//! new programs, and the rest are reused as they are. A daemon migrates (`Datapath::load`):
//! the new maps are pinned apart (`maps-next/`) and filled by the first reconcile pass while
//! the old programs keep forwarding on the old ones; only then do the links switch to the
//! new programs, atomically, and the new pins take the old ones' places. The tables the
//! daemon owns are derived again from the cluster's state; what the datapath learned
//! (flows) in a map whose layout changed starts over.

use std::path::{Path, PathBuf};

use aya::maps::MapData;
use overlay_common::maps::names;
use tracing::warn;

use super::{DatapathError, EBPF_OBJECT};

/// A map's shape, as the object defines it or the kernel holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Shape {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    flags: u32,
}

/// Maps the operator sizes (`--max-endpoints`): a pinned one keeps its size.
fn sized_by_operator(name: &str) -> bool {
    name == names::ENDPOINTS_BY_IP
        || name == names::ENDPOINTS_BY_MAC
        || name == names::ENDPOINTS_BY_IP6
}

/// Removes every pin under `dir` whose map does not match the object's definition (a datapath
/// loaded without attaching: nothing forwards on them). Returns the names replaced.
pub(super) fn replace_incompatible(dir: &Path) -> Result<Vec<String>, DatapathError> {
    let replaced = incompatible(dir)?;
    for name in &replaced {
        let path = dir.join(name);
        std::fs::remove_file(&path).map_err(|source| DatapathError::Io {
            path: path.clone(),
            source,
        })?;
    }
    Ok(replaced)
}
/// The pins under `dir` whose map does not match the object's definition.
pub(super) fn incompatible(dir: &Path) -> Result<Vec<String>, DatapathError> {
    let object = aya_obj::Object::parse(EBPF_OBJECT)
        .map_err(|e| DatapathError::Bpffs(format!("parsing the embedded eBPF object: {e}")))?;
    let mut replaced = Vec::new();
    for (name, map) in &object.maps {
        let path = dir.join(name);
        if name.starts_with('.') || !path.exists() {
            continue;
        }
        let want = Shape {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: map.max_entries(),
            flags: map.map_flags(),
        };
        let have = MapData::from_pin(&path)
            .and_then(|m| m.info())
            .map(|i| Shape {
                map_type: i.map_type().map_or(u32::MAX, |t| t as u32),
                key_size: i.key_size(),
                value_size: i.value_size(),
                max_entries: i.max_entries(),
                flags: i.map_flags(),
            });
        let compatible = match &have {
            Ok(have) if sized_by_operator(name) => {
                Shape {
                    max_entries: want.max_entries,
                    ..*have
                } == want
            }
            Ok(have) => *have == want,
            Err(_) => false,
        };
        if compatible {
            continue;
        }
        warn!(map = %name, pinned = ?have.ok(), wanted = ?want, "pinned map has another layout; making it anew");
        replaced.push(name.clone());
    }
    Ok(replaced)
}

/// Prepares `staged` (absent) for a migration: a second pin of every compatible map of
/// `current`, so the loader reuses those and makes the incompatible ones anew there.
pub(super) fn stage(
    current: &Path,
    staged: &Path,
    replaced: &[String],
) -> Result<(), DatapathError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| DatapathError::Io { path, source }
    };
    std::fs::create_dir_all(staged).map_err(io(staged))?;
    for entry in std::fs::read_dir(current).map_err(io(current))? {
        let entry = entry.map_err(io(current))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if replaced.contains(&name) {
            continue;
        }
        let map = MapData::from_pin(entry.path())
            .map_err(|e| DatapathError::Bpffs(format!("{}: {e}", entry.path().display())))?;
        map.pin(staged.join(&name))
            .map_err(|source| DatapathError::Pin {
                path: staged.join(&name),
                source,
            })?;
    }
    Ok(())
}

/// After the links switched: every staged pin takes the place of the current one.
pub(super) fn promote(current: &Path, staged: &Path) -> Result<(), DatapathError> {
    let io = |path: PathBuf| move |source| DatapathError::Io { path, source };
    for entry in std::fs::read_dir(staged).map_err(io(staged.to_owned()))? {
        let entry = entry.map_err(io(staged.to_owned()))?;
        let target = current.join(entry.file_name());
        // rename(2) replaces the old pin in one step.
        std::fs::rename(entry.path(), &target).map_err(io(target))?;
    }
    std::fs::remove_dir(staged).map_err(io(staged.to_owned()))
}
