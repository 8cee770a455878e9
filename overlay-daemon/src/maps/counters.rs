use std::path::Path;

use aya::maps::{Map, MapData, PerCpuArray};
use overlay_common::{maps::names, Direction, DropReason, PacketCounter};

use super::{map_err, open_pinned, MapsError};

/// Per-CPU traffic counters per direction and drop counters per reason.
pub struct CounterMap {
    traffic: PerCpuArray<MapData, PacketCounter>,
    drops: PerCpuArray<MapData, PacketCounter>,
}

/// Packets and bytes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// Counters summed over CPUs, labelled with the stable names from overlay-common.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    pub traffic: Vec<(&'static str, Count)>,
    pub drops: Vec<(&'static str, Count)>,
}

impl CounterSnapshot {
    pub fn traffic(&self, direction: Direction) -> Count {
        self.traffic
            .iter()
            .find(|(label, _)| *label == direction.label())
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }

    pub fn drops(&self, reason: DropReason) -> Count {
        self.drops
            .iter()
            .find(|(label, _)| *label == reason.label())
            .map(|(_, c)| *c)
            .unwrap_or_default()
    }
}

impl From<CounterSnapshot> for overlay_api::Stats {
    fn from(s: CounterSnapshot) -> Self {
        let owned = |v: Vec<(&'static str, Count)>| {
            v.into_iter()
                .map(|(l, c)| {
                    (
                        l.to_owned(),
                        overlay_api::Count {
                            packets: c.packets,
                            bytes: c.bytes,
                        },
                    )
                })
                .collect()
        };
        Self {
            traffic: owned(s.traffic),
            drops: owned(s.drops),
        }
    }
}

impl CounterMap {
    pub(super) fn new(traffic: Map, drops: Map) -> Result<Self, MapsError> {
        Ok(Self {
            traffic: PerCpuArray::try_from(traffic).map_err(map_err(names::TRAFFIC))?,
            drops: PerCpuArray::try_from(drops).map_err(map_err(names::DROPS))?,
        })
    }

    /// Opens the counters of a running datapath from its pins.
    pub fn open_pinned(map_dir: &Path) -> Result<Self, MapsError> {
        let traffic = Map::PerCpuArray(open_pinned(map_dir, names::TRAFFIC)?);
        let drops = Map::PerCpuArray(open_pinned(map_dir, names::DROPS)?);
        Self::new(traffic, drops)
    }

    pub fn snapshot(&self) -> Result<CounterSnapshot, MapsError> {
        let sum = |map: &PerCpuArray<MapData, PacketCounter>, index: u32, name| {
            let per_cpu = map.get(&index, 0).map_err(map_err(name))?;
            Ok::<_, MapsError>(per_cpu.iter().fold(Count::default(), |acc, c| Count {
                packets: acc.packets + c.packets,
                bytes: acc.bytes + c.bytes,
            }))
        };
        let mut snap = CounterSnapshot::default();
        for d in Direction::ALL {
            snap.traffic
                .push((d.label(), sum(&self.traffic, *d as u32, names::TRAFFIC)?));
        }
        for r in DropReason::ALL {
            snap.drops
                .push((r.label(), sum(&self.drops, *r as u32, names::DROPS)?));
        }
        Ok(snap)
    }
}
