//! The monitor (`overlayctl monitor`): while at least one client is attached, the datapath
//! sends the events its clients want (`MONITOR` flags: drops, sampled traces); one reader
//! task per daemon drains the events ring buffer and fans each event out, as a JSON line, to
//! every client that wants its kind (none: the line is dropped). The programs rate-limit
//! events per CPU and kind; what they could not send, and what a slow client missed, is
//! reported as `lost` lines. When the last client leaves, events are turned off again.

pub mod client;
mod decode;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use overlay_api::{EventType, MonitorRequest};
use overlay_common::monitor::{EVENT_DROP, EVENT_TRACE, MONITOR_F_DROP, MONITOR_F_TRACE};
use serde_json::json;
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::{info, warn};

use crate::maps::{open_events, MonitorMaps};

/// Events per second the whole node may send of each kind (shared out between its CPUs:
/// each CPU's bucket gets its part), so a flood costs the datapath and the reader no more
/// than this however many CPUs take it.
pub const RATE: u32 = 2000;
pub const BURST: u32 = 400;
/// Lines a client may fall behind before it misses some (and is told how many).
const BACKLOG: usize = 4096;
/// Events handled per wake-up of the reader before it lets other tasks run.
const BATCH: usize = 1024;

/// The per-CPU share of `RATE`/`BURST`.
pub fn per_cpu() -> (u32, u32) {
    let cpus = aya::util::nr_cpus().map_or(1, |n| n.max(1)) as u32;
    ((RATE / cpus).max(50), (BURST / cpus).max(10))
}

/// Turns events off: at daemon start, flags a killed daemon left on (its pinned map
/// outlives it) would make every drop do event work nobody reads.
pub fn reset(maps_dir: &std::path::Path) {
    let (rate, burst) = per_cpu();
    if let Err(e) = MonitorMaps::open_pinned(maps_dir).and_then(|mut m| m.set(0, rate, burst, 1)) {
        warn!("turning monitor events off: {e}");
    }
}

/// One line for clients, and the kind of event it is about.
#[derive(Clone, Debug)]
pub struct Line {
    pub kind: EventType,
    pub text: Arc<str>,
}

pub struct Hub {
    maps_dir: PathBuf,
    vxlan_port: u16,
    tx: broadcast::Sender<Line>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// What each attached client asked for.
    clients: HashMap<u64, MonitorRequest>,
    next_id: u64,
    /// The flags' map (set from what the clients want, under the lock).
    maps: Option<MonitorMaps>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

impl Inner {
    /// The flags and trace sampling every client's wishes need: the union of the kinds,
    /// and the densest sampling asked for (a client asking for less sees more).
    fn wanted(&self) -> (u32, u32) {
        let mut flags = 0;
        let mut sample = u32::MAX;
        for req in self.clients.values() {
            for kind in &req.events {
                match kind {
                    EventType::Drop => flags |= MONITOR_F_DROP,
                    EventType::Trace => {
                        flags |= MONITOR_F_TRACE;
                        sample = sample.min(req.sample.max(1));
                    }
                }
            }
        }
        (flags, if sample == u32::MAX { 1 } else { sample })
    }
}

/// One attached client: its lines, until dropped.
pub struct Attached {
    pub rx: broadcast::Receiver<Line>,
    events: Vec<EventType>,
    id: u64,
    hub: Arc<Hub>,
}

impl Attached {
    /// Whether this client asked for events of `kind`.
    pub fn wants(&self, kind: EventType) -> bool {
        self.events.contains(&kind)
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.hub.detach(self.id);
    }
}

/// Why a monitor could not attach.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("a monitor needs at least one event type")]
    NoEvents,
    #[error("the trace sample must be at least 1 (one packet in N)")]
    BadSample,
    #[error("{0}")]
    Maps(#[from] crate::maps::MapsError),
    #[error("events ring buffer: {0}")]
    Ring(std::io::Error),
}

impl Hub {
    pub fn new(maps_dir: PathBuf, vxlan_port: u16) -> Arc<Self> {
        Arc::new(Self {
            maps_dir,
            vxlan_port,
            tx: broadcast::channel(BACKLOG).0,
            inner: Mutex::default(),
        })
    }

    /// Attaches a client: starts the reader (once; it drains what an earlier daemon left
    /// first) and sets the flags for what the clients now want.
    pub fn attach(self: &Arc<Self>, req: MonitorRequest) -> Result<Attached, AttachError> {
        if req.events.is_empty() {
            return Err(AttachError::NoEvents);
        }
        if req.sample == 0 {
            return Err(AttachError::BadSample);
        }
        let mut inner = self.inner.lock().expect("monitor lock");
        if inner.reader.as_ref().is_none_or(|r| r.is_finished()) {
            let mut ring = open_events(&self.maps_dir)?;
            while ring.next().is_some() {}
            // The ring buffer owns its descriptor for as long as the AsyncFd holds it.
            let ring = unsafe { AsyncFd::register(ring) }
                .map_err(|e| AttachError::Ring(e.into_parts().1))?;
            let counts = MonitorMaps::open_pinned(&self.maps_dir)?;
            let vteps = crate::maps::VtepMap::open_pinned(&self.maps_dir)?;
            inner.reader = Some(tokio::spawn(read_events(
                ring,
                counts,
                VtepNames::new(vteps),
                self.tx.clone(),
                self.vxlan_port,
            )));
        }
        if inner.maps.is_none() {
            inner.maps = Some(MonitorMaps::open_pinned(&self.maps_dir)?);
        }
        let id = inner.next_id;
        inner.next_id += 1;
        let events = req.events.clone();
        inner.clients.insert(id, req);
        if let Err(e) = apply(&mut inner) {
            inner.clients.remove(&id);
            return Err(e.into());
        }
        Ok(Attached {
            rx: self.tx.subscribe(),
            events,
            id,
            hub: self.clone(),
        })
    }

    fn detach(&self, id: u64) {
        let mut inner = self.inner.lock().expect("monitor lock");
        inner.clients.remove(&id);
        if let Err(e) = apply(&mut inner) {
            warn!("setting monitor events: {e}");
        }
        if inner.clients.is_empty() {
            inner.maps = None;
        }
    }
}

/// Writes the flags the attached clients need.
fn apply(inner: &mut Inner) -> Result<(), crate::maps::MapsError> {
    let (flags, sample) = inner.wanted();
    let (rate, burst) = per_cpu();
    if let Some(maps) = inner.maps.as_mut() {
        maps.set(flags, rate, burst, sample)?;
        info!(
            clients = inner.clients.len(),
            drops = flags & MONITOR_F_DROP != 0,
            traces = flags & MONITOR_F_TRACE != 0,
            sample,
            "monitor events set"
        );
    }
    Ok(())
}

/// Drains the ring buffer for as long as the daemon runs (without clients no events come).
async fn read_events(
    mut ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    maps: MonitorMaps,
    mut vteps: VtepNames,
    tx: broadcast::Sender<Line>,
    vxlan_port: u16,
) {
    let mut names: HashMap<u32, Option<String>> = HashMap::new();
    let kinds = [
        (EVENT_DROP, EventType::Drop),
        (EVENT_TRACE, EventType::Trace),
    ];
    let mut lost_seen = kinds.map(|(k, _)| maps.lost(k).unwrap_or(0));
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Events the programs could not send (over the rate, or the buffer full).
                for (i, (k, kind)) in kinds.iter().enumerate() {
                    let Ok(lost) = maps.lost(*k) else { continue };
                    if lost > lost_seen[i] && tx.receiver_count() > 0 {
                        let text = json!({
                            "type": "lost",
                            "count": lost - lost_seen[i],
                            "where": "datapath",
                            "of": decode::kind_label(*kind),
                        });
                        let _ = tx.send(Line { kind: *kind, text: text.to_string().into() });
                    }
                    lost_seen[i] = lost;
                }
                // A node's address may move or change family: read again when next asked.
                vteps.clear();
                if tx.receiver_count() == 0 {
                    // Interfaces come and go between sessions.
                    names.clear();
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        warn!("monitor events: {e}");
                        return;
                    }
                };
                let ring = guard.get_inner_mut();
                let mut handled = 0;
                while handled < BATCH {
                    let Some(item) = ring.next() else { break };
                    handled += 1;
                    if item.len() < std::mem::size_of::<overlay_common::monitor::MonitorEvent>() {
                        continue;
                    }
                    // The ring buffer gives no alignment guarantee a Rust reference needs.
                    let e: overlay_common::monitor::MonitorEvent =
                        unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
                    let mut name = |ifindex: u32| {
                        names
                            .entry(ifindex)
                            .or_insert_with(|| crate::netif::ifname(ifindex))
                            .clone()
                    };
                    let ifnames = (name(e.ifindex), name(e.out_ifindex));
                    let kind = if e.kind == EVENT_TRACE { EventType::Trace } else { EventType::Drop };
                    let vtep = vteps.address(e.vtep_node);
                    let text = decode::event_json(&e, ifnames, vtep, vxlan_port).to_string();
                    let _ = tx.send(Line { kind, text: text.into() });
                }
                // A full batch leaves the fd ready: the next wake-up comes after other tasks.
                if handled < BATCH {
                    guard.clear_ready();
                }
            }
        }
        tokio::task::yield_now().await;
    }
}

/// The VTEP address of a node id (traces carry the id, which fits the packet's control
/// block whatever the VTEP's family), read from the VTEP table and cached.
struct VtepNames {
    map: crate::maps::VtepMap,
    cache: HashMap<u32, std::net::IpAddr>,
}

impl VtepNames {
    fn new(map: crate::maps::VtepMap) -> Self {
        Self {
            map,
            cache: HashMap::new(),
        }
    }

    fn address(&mut self, node_id: u32) -> Option<std::net::IpAddr> {
        if node_id == 0 {
            return None;
        }
        if !self.cache.contains_key(&node_id) {
            let entries = self.map.entries().unwrap_or_default();
            self.cache = entries.into_iter().map(|(ip, id, _)| (id, ip)).collect();
        }
        self.cache.get(&node_id).copied()
    }

    fn clear(&mut self) {
        self.cache.clear();
    }
}
