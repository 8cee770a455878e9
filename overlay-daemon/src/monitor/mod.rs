//! The drop monitor (`overlayctl monitor`): while at least one client is attached, the
//! datapath's drop events are on (`MONITOR` flag), one task reads the events ring buffer and
//! fans each event out, as a JSON line, to every client. The programs rate-limit events per
//! CPU; what they could not send, and what a slow client missed, is reported as `lost`
//! lines. When the last client leaves, events are turned off again.

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
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::maps::{open_events, MonitorMaps};

/// Events per second each CPU may send, and at once (a flood of bad packets costs the
/// datapath no more than this, whatever its rate).
pub const RATE: u32 = 1000;
pub const BURST: u32 = 200;
/// Lines a client may fall behind before it misses some (and is told how many).
const BACKLOG: usize = 4096;

pub struct Hub {
    maps_dir: PathBuf,
    vxlan_port: u16,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    clients: usize,
    tx: Option<broadcast::Sender<Arc<str>>>,
    stop: Option<CancellationToken>,
    /// Turns events off when the last client leaves (here, under the lock, so a client
    /// attaching at that moment never finds them turned off after it turned them on).
    maps: Option<MonitorMaps>,
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
            inner: Mutex::default(),
        })
    }

    /// Attaches a client, turning events on and starting the reader for the first one.
    pub fn attach(self: &Arc<Self>) -> Result<Attached, String> {
        let mut inner = self.inner.lock().expect("monitor lock");
        if inner.clients == 0 {
            let mut maps = MonitorMaps::open_pinned(&self.maps_dir).map_err(|e| e.to_string())?;
            let ring = open_events(&self.maps_dir).map_err(|e| e.to_string())?;
            // The ring buffer owns its descriptor for as long as the AsyncFd holds it.
            let ring = unsafe { AsyncFd::register(ring) }
                .map_err(|e| format!("events ring buffer: {}", e.into_parts().1))?;
            let counts = MonitorMaps::open_pinned(&self.maps_dir).map_err(|e| e.to_string())?;
            maps.set(true, RATE, BURST).map_err(|e| e.to_string())?;
            let (tx, _) = broadcast::channel(BACKLOG);
            let stop = CancellationToken::new();
            tokio::spawn(read_events(
                ring,
                counts,
                tx.clone(),
                stop.clone(),
                self.vxlan_port,
            ));
            inner.maps = Some(maps);
            info!("monitor attached: drop events on");
            inner.tx = Some(tx);
            inner.stop = Some(stop);
        }
        inner.clients += 1;
        let rx = inner.tx.as_ref().expect("set above").subscribe();
        Ok(Attached {
            rx,
            hub: self.clone(),
        })
    }

    fn detach(&self) {
        let mut inner = self.inner.lock().expect("monitor lock");
        inner.clients = inner.clients.saturating_sub(1);
        if inner.clients == 0 {
            if let Some(mut maps) = inner.maps.take() {
                if let Err(e) = maps.set(false, RATE, BURST) {
                    warn!("turning drop events off: {e}");
                }
            }
            if let Some(stop) = inner.stop.take() {
                stop.cancel();
            }
            inner.tx = None;
            info!("monitor detached");
        }
    }
}

async fn read_events(
    mut ring: AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>,
    maps: MonitorMaps,
    tx: broadcast::Sender<Arc<str>>,
    stop: CancellationToken,
    vxlan_port: u16,
) {
    let mut names: HashMap<u32, Option<String>> = HashMap::new();
    let mut lost_seen = maps.lost().unwrap_or(0);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                // Events the programs could not send (over the rate, or the buffer full).
                if let Ok(lost) = maps.lost() {
                    if lost > lost_seen {
                        let line = json!({"type": "lost", "count": lost - lost_seen, "where": "datapath"});
                        let _ = tx.send(line.to_string().into());
                        lost_seen = lost;
                    }
                }
            }
            guard = ring.readable_mut() => {
                let Ok(mut guard) = guard else { break };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
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
                guard.clear_ready();
            }
        }
    }
}
