//! The metrics and health HTTP server: `GET /metrics` (Prometheus text), `GET /healthz`
//! (the process runs and its datapath is attached) and `GET /readyz` (registered in etcd,
//! the cluster state listed and installed), each answered with 200 or 503 and one line.

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use overlay_common::maps::names;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Metrics, ScrapeState};
use crate::cluster::Cluster;

/// What the health endpoints look at.
#[derive(Clone)]
pub struct Health {
    pub cluster: Option<Arc<Cluster>>,
    /// The underlay's pinned TC link: the datapath is attached while it exists (none on a
    /// control-plane-only node).
    pub underlay_link: Option<PathBuf>,
    pub maps_dir: Option<PathBuf>,
    /// Where the daemon writes `status.json` after each successful pass.
    pub run_dir: PathBuf,
}

pub const METRICS: &str = "/metrics";
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";

/// Connections served at once (more are closed at once: a scraper and two probes need three),
/// and how long one may last, so no client can hold the daemon's descriptors.
const MAX_CONNECTIONS: usize = 32;
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

/// How long `/readyz` waits for a change in flight to be installed before calling the node
/// not ready (every change makes the installed generation lag for a moment).
const CATCH_UP: Duration = Duration::from_secs(2);

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until `stop` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Health,
    stop: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving /metrics, /healthz and /readyz");
    }
    let mut conns = JoinSet::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((s, _)) => s,
                Err(e) => {
                    warn!("metrics listener: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            debug!("metrics listener: {MAX_CONNECTIONS} connections open, closing a new one");
            continue;
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        conns.spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let (metrics, health) = (metrics.clone(), health.clone());
                async move { Ok::<_, Infallible>(handle(&metrics, &health, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                Ok(Err(e)) => debug!("metrics connection: {e}"),
                Err(_) => debug!("metrics connection: closed after {CONNECTION_TIMEOUT:?}"),
                Ok(Ok(())) => {}
            }
        });
    }
    conns.shutdown().await;
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("Content-Type", content_type)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}

async fn handle(
    metrics: &Metrics,
    health: &Health,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    if req.method() != hyper::Method::GET {
        return reply(405, "text/plain", "only GET is served\n".into());
    }
    match req.uri().path() {
        METRICS => {
            let state = scrape_state(health).await;
            reply(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics.render(&state),
            )
        }
        HEALTHZ => match healthy(health) {
            Ok(()) => reply(200, "text/plain", "ok\n".into()),
            Err(why) => reply(503, "text/plain", format!("{why}\n")),
        },
        READYZ => match ready(health).await {
            Ok(()) => reply(200, "text/plain", "ready\n".into()),
            Err(why) => reply(503, "text/plain", format!("{why}\n")),
        },
        other => reply(
            404,
            "text/plain",
            format!("{other}: not found (try /metrics, /healthz or /readyz)\n"),
        ),
    }
}

fn healthy(health: &Health) -> Result<(), String> {
    match &health.underlay_link {
        Some(link) if !link.exists() => Err(format!(
            "the datapath is not attached to the underlay ({} is missing)",
            link.display()
        )),
        _ => Ok(()),
    }
}

async fn ready(health: &Health) -> Result<(), String> {
    healthy(health)?;
    let Some(c) = &health.cluster else {
        // A tables file: ready once a pass succeeded (it writes the status; none at start).
        return match health.run_dir.join("status.json").exists() {
            true => Ok(()),
            false => Err("the tables file has not been installed yet; see the daemon's log".into()),
        };
    };
    if !c.registered() {
        return Err("not registered in etcd: etcd unreachable for longer than the lease TTL, or registering".into());
    }
    if c.view.lock().await.revision == 0 {
        return Err("the cluster state has not been listed from etcd yet".into());
    }
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    loop {
        let (wanted, applied) = (c.applied.wanted(), c.applied.applied());
        if applied >= wanted {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "the datapath has not installed the latest cluster state (generation {applied} of {wanted}); see the daemon's log"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn scrape_state(health: &Health) -> ScrapeState {
    let mut state = ScrapeState {
        maps_dir: health.maps_dir.clone(),
        ..Default::default()
    };
    let Some(c) = &health.cluster else {
        return state;
    };
    let report = c.applied.last_report();
    {
        let view = c.view.lock().await;
        state.known = vec![
            ("nodes", view.nodes().count()),
            ("networks", view.networks().count()),
            ("services", view.services().count()),
            ("rejected", view.rejected.len().max(report.rejected.len())),
        ];
    }
    state.known.extend([
        ("endpoints_local", report.local_endpoints),
        (
            "endpoints_remote",
            report.endpoints.saturating_sub(report.local_endpoints),
        ),
    ]);
    if health.maps_dir.is_some() {
        state.entries = vec![
            (names::NETWORKS, report.networks),
            (names::VTEPS, report.vteps),
            (names::ENDPOINTS_BY_IP, report.endpoints),
            (names::ENDPOINTS_BY_MAC, report.endpoints),
            (names::LOCAL_IFACES, report.local_endpoints),
        ];
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The DaemonSet's probes and scrape annotation use the port it passes to
    /// `--metrics-listen` and the paths served here; the systemd unit serves them too.
    #[test]
    fn the_deploy_files_probe_what_is_served() {
        let ds = include_str!("../../../deploy/kubernetes/overlayd-daemonset.yaml");
        let port = ds
            .split("--metrics-listen=0.0.0.0:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("--metrics-listen in the DaemonSet");
        for path in [HEALTHZ, READYZ] {
            let probe = format!("httpGet: {{ path: {path}, port: {port} }}");
            assert!(ds.contains(&probe), "{probe}");
        }
        assert!(ds.contains(&format!("prometheus.io/port: \"{port}\"")));
        assert!(ds.contains(&format!("prometheus.io/path: {METRICS}")));
        let unit = include_str!("../../../deploy/systemd/overlayd.service");
        assert!(unit.contains(&format!("--metrics-listen 0.0.0.0:{port}")));
    }
}
