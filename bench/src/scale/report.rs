//! The scale grid as the report's table and as JSON.

use std::fmt::Write as _;

use super::Cell;

pub fn markdown(cells: &[Cell]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Control-plane scale\n");
    let _ = writeln!(
        s,
        "A real etcd and N `overlayd --control-plane-only` processes on this machine (they register, \
         list, watch and reconcile as on a real host; the tables go to memory instead of BPF maps), \
         with M endpoints in the cluster spread over the nodes. Propagation: an endpoint written to \
         etcd until every node has applied it (from each node's own timestamp), over every node and \
         sample; every endpoint is named, and name propagation is the same add until every node's \
         DNS zone holds its name. Full sync: a node joining the loaded cluster, from process start to complete tables; \
         its RSS half a second later and its peak RSS, and the time it then takes to serve `GET /metrics` \
         (20 scrapes, one connection each, connect to last byte). \
         CPU: all daemons' CPU time while the propagation samples ran, per change and per node. All N \
         daemons and etcd share the machine's cores.\n"
    );
    let _ = writeln!(
        s,
        "| nodes | endpoints | propagation p50 (ms) | p99 (ms) | max (ms) | name propagation p50 / p99 / max (ms) | full sync (s) | names synced (s) | joiner RSS / peak (MB) | RSS median / max (MB) | CPU per change per node (ms) | bulk load applied everywhere (s) | /metrics p50 / max (ms) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        let _ = writeln!(
            s,
            "| {} | {} | {:.1} | {:.1} | {:.1} | {} / {} / {} | {:.2} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {:.3} | {:.1} | {:.2} / {:.2} |",
            c.nodes,
            c.endpoints,
            c.prop_p50_ms,
            c.prop_p99_ms,
            c.prop_max_ms,
            shown(c.name_p50_ms, 1),
            shown(c.name_p99_ms, 1),
            shown(c.name_max_ms, 1),
            c.full_sync_s,
            shown(c.name_sync_s, 2),
            c.full_sync_rss_mb,
            c.full_sync_peak_mb,
            c.rss_median_mb,
            c.rss_max_mb,
            c.cpu_ms_per_change,
            c.load_s,
            c.scrape_p50_ms,
            c.scrape_max_ms
        );
    }
    let _ = writeln!(
        s,
        "\nTargets: propagation and name propagation p99 ≤ 100 ms at 100 nodes; full sync of 100k endpoints ≤ 2 s; RSS ≤ 50 MB \
         at 100k endpoints; /metrics ≤ 50 ms at 100k endpoints.\n\nProduced by `cargo xtask bench --scenario scale`."
    );
    s
}

pub fn json(cells: &[Cell]) -> String {
    let rows: Vec<serde_json::Value> = cells
        .iter()
        .map(|c| {
            serde_json::json!({
                "nodes": c.nodes, "endpoints": c.endpoints, "load_s": c.load_s,
                "full_sync_s": c.full_sync_s, "name_sync_s": c.name_sync_s, "full_sync_rss_mb": c.full_sync_rss_mb, "full_sync_peak_mb": c.full_sync_peak_mb,
                "prop_p50_ms": c.prop_p50_ms, "prop_p99_ms": c.prop_p99_ms,
                "prop_max_ms": c.prop_max_ms,
                "name_p50_ms": c.name_p50_ms, "name_p99_ms": c.name_p99_ms, "name_max_ms": c.name_max_ms, "rss_median_mb": c.rss_median_mb,
                "rss_max_mb": c.rss_max_mb, "cpu_ms_per_change": c.cpu_ms_per_change,
                "samples": c.samples, "scrape_p50_ms": c.scrape_p50_ms,
                "scrape_max_ms": c.scrape_max_ms, "scrape_bytes": c.scrape_bytes,
            })
        })
        .collect();
    serde_json::to_string_pretty(&rows).unwrap_or_default()
}

/// A figure with `digits` decimals, or "–" when it was not measured (NaN).
fn shown(v: f64, digits: usize) -> String {
    match v.is_nan() {
        true => "–".to_owned(),
        false => format!("{v:.digits$}"),
    }
}
