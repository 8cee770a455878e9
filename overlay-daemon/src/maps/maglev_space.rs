//! `LB_MAGLEV`: every service's Maglev table in one array, mapped into the daemon
//! (BPF_F_MMAPABLE), so a table is a plain memory write instead of thousands of syscalls.
//! Each service owns a range of it (`ServiceInfo::table_offset/table_size`); the free space
//! is handed out first-fit.

use std::{
    collections::BTreeMap,
    mem::size_of,
    ops::Range,
    os::fd::{AsFd, AsRawFd},
    ptr::NonNull,
};

use aya::maps::{Map, MapData, MapError};
use overlay_common::{
    lb::{MaglevSlot, MAGLEV_SLOTS},
    maps::names,
};

use super::MapsError;

/// The mapped array. Slots change one aligned u32 at a time, so the datapath sees every
/// slot either old or new, both naming live backends.
pub(super) struct MaglevArray {
    _map: MapData,
    base: NonNull<MaglevSlot>,
    entries: usize,
    bytes: usize,
}

// The mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for MaglevArray {}
unsafe impl Sync for MaglevArray {}

impl MaglevArray {
    pub(super) fn new(map: Map) -> Result<Self, MapsError> {
        let Map::Array(data) = map else {
            return Err(MapsError::Map {
                name: names::LB_MAGLEV,
                source: MapError::InvalidMapType { map_type: 0 },
            });
        };
        let entries = data
            .info()
            .map(|i| i.max_entries() as usize)
            .unwrap_or(MAGLEV_SLOTS as usize);
        let page = 4096;
        let bytes = (entries * size_of::<MaglevSlot>()).div_ceil(page) * page;
        // SAFETY: a shared mapping of the map's own fd, as long as the map; unmapped in Drop.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(MapsError::Mmap {
                name: names::LB_MAGLEV,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Self {
            _map: data,
            base: NonNull::new(ptr.cast()).expect("mmap succeeded"),
            entries,
            bytes,
        })
    }

    pub(super) fn len(&self) -> u32 {
        self.entries as u32
    }

    fn clamp(&self, range: Range<u32>) -> Range<usize> {
        (range.start as usize).min(self.entries)..(range.end as usize).min(self.entries)
    }

    /// Writes a table at `range`; returns how many slots changed.
    pub(super) fn write(&mut self, range: Range<u32>, table: &[u32]) -> usize {
        let mut changed = 0;
        for (i, &id) in self.clamp(range).zip(table) {
            // SAFETY: `i` is inside the mapping (clamped to `entries`).
            unsafe {
                let p = self.base.as_ptr().add(i);
                if p.read_volatile().backend_id != id {
                    p.write_volatile(MaglevSlot {
                        backend_id: id,
                        _pad: 0,
                    });
                    changed += 1;
                }
            }
        }
        changed
    }

    pub(super) fn read(&self, range: Range<u32>) -> Vec<u32> {
        // SAFETY: as in `write`.
        self.clamp(range)
            .map(|i| unsafe { self.base.as_ptr().add(i).read_volatile().backend_id })
            .collect()
    }
}

impl Drop for MaglevArray {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.bytes);
        }
    }
}

/// Which ranges of the array are taken: offset -> size.
#[derive(Debug, Default)]
pub(super) struct Space {
    used: BTreeMap<u32, u32>,
    len: u32,
}

impl Space {
    pub(super) fn new(len: u32) -> Self {
        Self {
            used: BTreeMap::new(),
            len,
        }
    }

    /// Marks a range a pinned service already holds. False if it overlaps another (a
    /// corrupt map): the caller gives that service a new range.
    pub(super) fn claim(&mut self, offset: u32, size: u32) -> bool {
        let end = offset as u64 + size as u64;
        if size == 0 || end > self.len as u64 {
            return false;
        }
        let before = self.used.range(..=offset).next_back();
        let after = self.used.range(offset..).next();
        let clash = before.is_some_and(|(&o, &s)| o as u64 + s as u64 > offset as u64)
            || after.is_some_and(|(&o, _)| (o as u64) < end);
        if clash {
            return false;
        }
        self.used.insert(offset, size);
        true
    }

    /// A free range of `size` slots, taken; the end of the used space first (cheap), then
    /// the first gap that fits.
    pub(super) fn alloc(&mut self, size: u32) -> Option<u32> {
        let end = self.used.iter().next_back().map_or(0, |(&o, &s)| o + s);
        if end as u64 + size as u64 <= self.len as u64 {
            self.used.insert(end, size);
            return Some(end);
        }
        let mut cursor = 0u32;
        let mut found = None;
        for (&o, &s) in &self.used {
            if o - cursor >= size {
                found = Some(cursor);
                break;
            }
            cursor = o + s;
        }
        let offset =
            found.or_else(|| (cursor as u64 + size as u64 <= self.len as u64).then_some(cursor))?;
        self.used.insert(offset, size);
        Some(offset)
    }

    pub(super) fn free(&mut self, offset: u32) {
        self.used.remove(&offset);
    }

    pub(super) fn free_slots(&self) -> u32 {
        self.len - self.used.values().sum::<u32>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_is_handed_out_first_fit_and_reused() {
        let mut s = Space::new(1000);
        assert_eq!(s.alloc(307), Some(0));
        assert_eq!(s.alloc(307), Some(307));
        assert_eq!(s.alloc(307), Some(614));
        assert_eq!(s.alloc(307), None, "79 slots left");
        s.free(307);
        assert_eq!(s.alloc(400), None, "the gap is 307");
        assert_eq!(s.alloc(300), Some(307));
        assert_eq!(s.free_slots(), 86);
        assert!(!s.claim(0, 10), "taken");
        assert!(s.claim(921, 79));
        assert!(!s.claim(990, 20), "past the end");
        assert_eq!(s.free_slots(), 7);
    }
}
