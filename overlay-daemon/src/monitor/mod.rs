//! The drop monitor (`overlayctl monitor`): while at least one client is attached, the
//! datapath's drop events are on (`MONITOR` flag); one reader task per daemon drains the
//! events ring buffer and fans each event out, as a JSON line, to every client (none: the
//! line is dropped). The programs rate-limit events per CPU; what they could not send, and
//! what a slow client missed, is reported as `lost` lines. When the last client leaves,
//! events are turned off again.

pub mod client;
mod decode;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::json;
use tokio::{io::unix::AsyncFd, sync::broadcast};
use tracing::{info, warn};

use crate::maps::{open_events, MonitorMaps};

/// Events per second the whole node may send (shared out between its CPUs: each CPU's
/// bucket gets its part), so a flood costs the datapath and the reader no more than this
/// however many CPUs take it.
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

/// Turns events off: at daemon start, a flag a killed daemon left on (its pinned map
/// outlives it) would make every drop do event work nobody reads.
pub fn reset(maps_dir: &std::path::Path) {
    let (rate, burst) = per_cpu();
    if let Err(e) = MonitorMaps::open_pinned(maps_dir).and_then(|mut m| m.set(false, rate, burst)) {
        warn!("turning drop events off: {e}");
    }
}

pub struct Hub {
    maps_dir: PathBuf,
    vxlan_port: u16,
    tx: broadcast::Sender<Arc<str>>,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    clients: usize,
    /// The flag's map (turned on by the first client, off by the last, under the lock).
    maps: Option<MonitorMaps>,
    reader: Option<tokio::task::JoinHandle<()>>,
}

/// One attached client: its lines, until dropped.
pub struct Attached {
    pub rx: broadcast::Receiver<Arc<str>>,
    hub: Arc<Hub>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        self.hub.detach();
    }
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
    /// first) and turns events on for the first client.
    pub fn attach(self: &Arc<Self>) -> Result<Attached, String> {
        let mut inner = self.inner.lock().expect("monitor lock");
        if inner.reader.as_ref().is_none_or(|r| r.is_finished()) {
            let mut ring = open_events(&self.maps_dir).map_err(|e| e.to_string())?;
            while ring.next().is_some() {}
            // The ring buffer owns its descriptor for as long as the AsyncFd holds it.
            let ring = unsafe { AsyncFd::register(ring) }
                .map_err(|e| format!("events ring buffer: {}", e.into_parts().1))?;
            let counts = MonitorMaps::open_pinned(&self.maps_dir).map_err(|e| e.to_string())?;
            inner.reader = Some(tokio::spawn(read_events(
                ring,
                counts,
                self.tx.clone(),
                self.vxlan_port,
            )));
        }
        if inner.clients == 0 {
            let mut maps = MonitorMaps::open_pinned(&self.maps_dir).map_err(|e| e.to_string())?;
            let (rate, burst) = per_cpu();
            maps.set(true, rate, burst).map_err(|e| e.to_string())?;
            inner.maps = Some(maps);
            info!(rate, burst, "monitor attached: drop events on");
        }
        inner.clients += 1;
        Ok(Attached {
            rx: self.tx.subscribe(),
            hub: self.clone(),
        })
    }

    fn detach(&self) {
        let mut inner = self.inner.lock().expect("monitor lock");
        inner.clients = inner.clients.saturating_sub(1);
        if inner.clients == 0 {
            if let Some(mut maps) = inner.maps.take() {
                let (rate, burst) = per_cpu();
                if let Err(e) = maps.set(false, rate, burst) {
                    warn!("turning drop events off: {e}");
                }
            }
            info!("monitor detached: drop events off");
        }
    }
}

/// Drains the ring buffer for as long as the daemon runs (without clients no events come).
async fn read_events(
    mut ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    maps: MonitorMaps,
    tx: broadcast::Sender<Arc<str>>,
    vxlan_port: u16,
) {
    let mut names: HashMap<u32, Option<String>> = HashMap::new();
    let mut lost_seen = maps.lost().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Events the programs could not send (over the rate, or the buffer full).
                if let Ok(lost) = maps.lost() {
                    if lost > lost_seen && tx.receiver_count() > 0 {
                        let line = json!({"type": "lost", "count": lost - lost_seen, "where": "datapath"});
                        let _ = tx.send(line.to_string().into());
                    }
                    lost_seen = lost;
                }
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
                    let ifname = names
                        .entry(e.ifindex)
                        .or_insert_with(|| crate::netif::ifname(e.ifindex))
                        .clone();
                    let line = decode::event_json(&e, ifname, vxlan_port).to_string();
                    let _ = tx.send(line.into());
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
