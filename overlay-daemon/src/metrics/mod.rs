//! What a node tells Prometheus (`overlayd --metrics-listen`): the datapath's per-CPU
//! counters summed at scrape time (never on the packet path), what the node knows of the
//! cluster and holds in its maps, and how its control plane is doing (reconcile latency, etcd,
//! lease, watch re-lists, API requests). Names start with `overlay_`; counters end in
//! `_total`; labels are bounded sets (directions, drop reasons, maps, operations), never
//! per endpoint or per flow. `serve` answers `/metrics`, `/healthz` and `/readyz`.

mod serve;

use std::path::{Path, PathBuf};

use overlay_common::{maps::names, Direction, DropReason};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::{exponential_buckets, Histogram},
        MetricType,
    },
    registry::Registry,
};

pub use serve::{bind, serve, Health};

use crate::maps::{CounterMap, VtepMap};

/// One label: (name, value), both from a fixed set.
type Label = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];

/// Why the cluster view was listed again (`overlay_watch_relists_total{reason}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Relist {
    /// The watch was cancelled or compacted away.
    Compacted,
    /// The stream ended or failed.
    WatchLost,
    /// A new etcd connection (the underlay address moved).
    Reconnected,
}

impl Relist {
    fn label(self) -> &'static str {
        match self {
            Relist::Compacted => "compacted",
            Relist::WatchLost => "watch_lost",
            Relist::Reconnected => "reconnected",
        }
    }
}

/// The metrics a daemon updates as it works; the rest is read at scrape time.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Seconds from a change reaching the daemon loop to the datapath's maps holding it.
    reconcile: Histogram,
    reconcile_failures: Counter,
    lease_renewals: Counter,
    lease_failures: Counter,
    relists: Family<Label, Counter>,
    etcd_up: Gauge,
    api_requests: Family<Labels2, Counter>,
    api_seconds: Family<Label, Histogram>,
    // Read at scrape time (`refresh`).
    known: Family<Label, Gauge>,
    map_entries: Family<Label, Gauge>,
    map_capacity: Family<Label, Gauge>,
    next_hops: Family<Label, Gauge>,
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.0002, 2.0, 16))
}

impl Metrics {
    /// `maps_dir`: the pinned maps whose counters are read at scrape time (none for a
    /// control-plane-only node).
    pub fn new(maps_dir: Option<PathBuf>) -> Self {
        let mut registry = Registry::default();
        let m = Self {
            reconcile: latency(),
            reconcile_failures: Counter::default(),
            lease_renewals: Counter::default(),
            lease_failures: Counter::default(),
            relists: Family::default(),
            etcd_up: Gauge::default(),
            api_requests: Family::default(),
            api_seconds: Family::new_with_constructor(latency),
            known: Family::default(),
            map_entries: Family::default(),
            map_capacity: Family::default(),
            next_hops: Family::default(),
            registry: Registry::default(),
        };
        let r = &mut registry;
        r.register(
            "overlay_reconcile_seconds",
            "Time from a change reaching the daemon loop to the datapath's maps holding it",
            m.reconcile.clone(),
        );
        r.register(
            "overlay_reconcile_failures",
            "Reconcile passes that failed (retried)",
            m.reconcile_failures.clone(),
        );
        r.register(
            "overlay_lease_renewals",
            "Successful renewals of this node's etcd lease",
            m.lease_renewals.clone(),
        );
        r.register(
            "overlay_lease_failures",
            "Failed renewals of this node's etcd lease",
            m.lease_failures.clone(),
        );
        r.register(
            "overlay_watch_relists",
            "Times the cluster state was listed again, by reason",
            m.relists.clone(),
        );
        r.register(
            "overlay_etcd_up",
            "1 while the cluster state is listed and watched, 0 otherwise",
            m.etcd_up.clone(),
        );
        r.register(
            "overlay_api_requests",
            "Local API requests by operation and result",
            m.api_requests.clone(),
        );
        r.register(
            "overlay_api_request_seconds",
            "Local API request latency by operation",
            m.api_seconds.clone(),
        );
        r.register("overlay_known", "Cluster objects this node knows (nodes, networks, endpoints, services, rejected entries)", m.known.clone());
        r.register(
            "overlay_map_entries",
            "Entries of the BPF maps the daemon writes, as of its last successful pass",
            m.map_entries.clone(),
        );
        r.register(
            "overlay_map_capacity",
            "Capacity of each BPF map",
            m.map_capacity.clone(),
        );
        r.register(
            "overlay_next_hops",
            "VTEPs by whether their underlay next hop is pinned",
            m.next_hops.clone(),
        );
        if let Some(dir) = maps_dir {
            r.register_collector(Box::new(DatapathCounters { dir }));
        }
        Self { registry, ..m }
    }

    pub fn reconciled(&self, seconds: f64) {
        self.reconcile.observe(seconds);
    }

    pub fn reconcile_failed(&self) {
        self.reconcile_failures.inc();
    }

    pub fn lease_renewed(&self, ok: bool) {
        if ok {
            self.lease_renewals.inc();
        } else {
            self.lease_failures.inc();
        }
    }

    pub fn relisted(&self, why: Relist) {
        self.relists.get_or_create(&[("reason", why.label())]).inc();
    }

    pub fn set_etcd_up(&self, up: bool) {
        self.etcd_up.set(up as i64);
    }

    /// One API request: its operation, result (`ok` or the error kind) and duration.
    pub fn api_request(&self, op: &'static str, result: &'static str, seconds: f64) {
        self.api_requests
            .get_or_create(&[("op", op), ("result", result)])
            .inc();
        self.api_seconds
            .get_or_create(&[("op", op)])
            .observe(seconds);
    }

    /// Sets what is read at scrape time, then encodes everything.
    pub fn render(&self, state: &ScrapeState) -> String {
        for &(what, n) in &state.known {
            self.known.get_or_create(&[("what", what)]).set(n as i64);
        }
        for &(map, n) in &state.entries {
            self.map_entries
                .get_or_create(&[("map", map)])
                .set(n as i64);
        }
        if let Some(dir) = &state.maps_dir {
            for &name in names::ALL {
                if let Some(cap) = capacity(dir, name) {
                    self.map_capacity
                        .get_or_create(&[("map", name)])
                        .set(cap as i64);
                }
            }
            if let Ok(vteps) = VtepMap::open_pinned(dir).and_then(|m| m.entries()) {
                let pinned = vteps.iter().filter(|v| v.2.is_some()).count();
                self.next_hops
                    .get_or_create(&[("state", "pinned")])
                    .set(pinned as i64);
                let routed = (vteps.len() - pinned) as i64;
                self.next_hops
                    .get_or_create(&[("state", "routed")])
                    .set(routed);
            }
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// What a scrape reads from the daemon's state (gathered by the server).
#[derive(Clone, Debug, Default)]
pub struct ScrapeState {
    pub maps_dir: Option<PathBuf>,
    /// ("nodes" | "networks" | "endpoints_local" | "endpoints_remote" | "services" |
    /// "rejected", count).
    pub known: Vec<(&'static str, usize)>,
    /// (map name, entries).
    pub entries: Vec<(&'static str, usize)>,
}

fn capacity(dir: &Path, name: &'static str) -> Option<u32> {
    let map = aya::maps::MapData::from_pin(dir.join(name)).ok()?;
    map.info().ok().map(|i| i.max_entries())
}

/// A counter family read at scrape time: name, help, (label, value, count) per series.
type CounterFamily = (
    &'static str,
    &'static str,
    Vec<(&'static str, &'static str, u64)>,
);

/// The datapath's counters, read from the pinned per-CPU maps and summed at each scrape.
#[derive(Debug)]
struct DatapathCounters {
    dir: PathBuf,
}

impl Collector for DatapathCounters {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        // Opened per scrape: a migration replaces the pins.
        let snap = CounterMap::open_pinned(&self.dir).and_then(|c| c.snapshot());
        let mut up = encoder.encode_descriptor(
            "overlay_datapath_up",
            "1 when the datapath's counters could be read, 0 when not",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(snap.is_ok() as i64).encode(up.encode_family(&[("maps", "pinned")])?)?;
        let Ok(snap) = snap else {
            return Ok(());
        };
        let families: [CounterFamily; 4] = [
            (
                "overlay_datapath_packets",
                "Packets the datapath handled, by direction",
                Direction::ALL
                    .iter()
                    .map(|d| ("direction", d.label(), snap.traffic(*d).packets))
                    .collect(),
            ),
            (
                "overlay_datapath_bytes",
                "Bytes the datapath handled, by direction",
                Direction::ALL
                    .iter()
                    .map(|d| ("direction", d.label(), snap.traffic(*d).bytes))
                    .collect(),
            ),
            (
                "overlay_datapath_drops",
                "Packets the datapath dropped, by reason",
                DropReason::ALL
                    .iter()
                    .map(|r| ("reason", r.label(), snap.drops(*r).packets))
                    .collect(),
            ),
            (
                "overlay_datapath_dropped_bytes",
                "Bytes the datapath dropped, by reason",
                DropReason::ALL
                    .iter()
                    .map(|r| ("reason", r.label(), snap.drops(*r).bytes))
                    .collect(),
            ),
        ];
        for (name, help, samples) in &families {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (key, value, n) in samples {
                let labels = [(*key, *value)];
                ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_prefixed_and_counters_end_in_total() {
        let m = Metrics::new(None);
        m.api_request("status", "ok", 0.001);
        m.relisted(Relist::Compacted);
        m.lease_renewed(true);
        let text = m.render(&ScrapeState {
            known: vec![("nodes", 3)],
            ..Default::default()
        });
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            assert!(line.starts_with("overlay_"), "{line}");
        }
        assert!(text.contains("overlay_api_requests_total{op=\"status\",result=\"ok\"} 1"));
        assert!(text.contains("overlay_watch_relists_total{reason=\"compacted\"} 1"));
        assert!(text.contains("overlay_lease_renewals_total 1"));
        assert!(text.contains("overlay_known{what=\"nodes\"} 3"));
        assert!(text.contains("# TYPE overlay_reconcile_seconds histogram"));
    }

    /// Every metric the Grafana dashboard queries is one a node exports.
    #[test]
    fn the_dashboard_queries_exported_metrics() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../../deploy/grafana/overlay.json"))
                .expect("valid dashboard JSON");
        let m = Metrics::new(None);
        m.api_request("status", "ok", 0.0);
        m.relisted(Relist::Compacted);
        let state = ScrapeState {
            known: vec![("nodes", 1)],
            entries: vec![(names::VTEPS, 1)],
            ..Default::default()
        };
        let mut exported: Vec<String> = m
            .render(&state)
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .filter_map(|l| l.split_whitespace().next())
            .map(str::to_owned)
            .collect();
        // Read from the pinned maps at scrape time (none here).
        exported.extend(
            ["packets", "bytes", "drops", "dropped_bytes"].map(|n| format!("overlay_datapath_{n}")),
        );
        exported.extend(["overlay_map_capacity".into(), "overlay_next_hops".into()]);
        let text = dashboard.to_string();
        let mut queried = 0;
        for part in text.split("overlay_").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            if name == "ebpf" {
                continue; // the title and uid
            }
            let full = format!("overlay_{name}");
            let family = ["_total", "_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| full.strip_suffix(s))
                .unwrap_or(&full);
            assert!(
                exported.iter().any(|e| e == family),
                "{full} is not exported"
            );
            queried += 1;
        }
        assert!(queried >= 10);
    }
}
