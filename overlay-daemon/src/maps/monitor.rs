//! The monitor's maps, opened from the pins while a monitor is attached: its settings
//! (`MONITOR`: the flag the programs check), the per-CPU count of events not sent, and the
//! events ring buffer.

use std::path::Path;

use aya::maps::{Array, Map, MapData, PerCpuArray, RingBuf};
use overlay_common::{maps::names, monitor::MonitorConfig};

use super::{map_err, open_pinned, MapsError};

pub struct MonitorMaps {
    config: Array<MapData, MonitorConfig>,
    lost: PerCpuArray<MapData, u64>,
}

impl MonitorMaps {
    pub fn open_pinned(dir: &Path) -> Result<Self, MapsError> {
        let config = Map::Array(open_pinned(dir, names::MONITOR)?);
        let lost = Map::PerCpuArray(open_pinned(dir, names::MONITOR_LOST)?);
        Ok(Self {
            config: Array::try_from(config).map_err(map_err(names::MONITOR))?,
            lost: PerCpuArray::try_from(lost).map_err(map_err(names::MONITOR_LOST))?,
        })
    }

    /// Sets which events the programs send (`MONITOR_F_*`; 0: none), at `rate` per second
    /// and CPU and kind (`burst` at once), traces for one packet in `sample`.
    pub fn set(&mut self, flags: u32, rate: u32, burst: u32, sample: u32) -> Result<(), MapsError> {
        let cfg = MonitorConfig {
            flags,
            rate,
            burst,
            sample,
        };
        self.config.set(0, cfg, 0).map_err(map_err(names::MONITOR))
    }

    /// Events of `kind` (`EVENT_*`) not sent since the datapath was loaded, over all CPUs.
    pub fn lost(&self, kind: u8) -> Result<u64, MapsError> {
        let per_cpu = self
            .lost
            .get(&(kind as u32), 0)
            .map_err(map_err(names::MONITOR_LOST))?;
        Ok(per_cpu.iter().sum())
    }
}

/// The events ring buffer of a running datapath.
pub fn open_events(dir: &Path) -> Result<RingBuf<MapData>, MapsError> {
    let map = Map::RingBuf(open_pinned(dir, names::EVENTS)?);
    RingBuf::try_from(map).map_err(map_err(names::EVENTS))
}
