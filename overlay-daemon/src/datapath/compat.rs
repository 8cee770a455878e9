//! Pinned maps outlive the daemon, so a new release may find maps whose layout its programs
//! do not share (a value grew, a table changed type or size). Those pins are replaced before
//! loading (the daemon refills the tables it owns; flows the datapath learned start over),
//! and the rest are reused as they are.

use std::path::Path;

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
    name == names::ENDPOINTS_BY_IP || name == names::ENDPOINTS_BY_MAC
}

/// Removes every pin under `dir` whose map does not match the object's definition. Returns
/// the names replaced.
pub(super) fn replace_incompatible(dir: &Path) -> Result<Vec<String>, DatapathError> {
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
        warn!(map = %name, pinned = ?have.ok(), wanted = ?want, "pinned map has another layout; replacing it");
        std::fs::remove_file(&path).map_err(|source| DatapathError::Io {
            path: path.clone(),
            source,
        })?;
        replaced.push(name.clone());
    }
    Ok(replaced)
}
