//! The daemon side of the local API (`overlay-api`): one JSON request per line on
//! `<run-dir>/overlayd.sock` (mode 0600), one JSON response line back. Used by the CNI
//! plugin, overlayctl and tests.
//!
//! On shutdown the server stops accepting, lets requests in flight finish (an endpoint
//! request waits for the datapath, which keeps running meanwhile), and removes the socket.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use overlay_api::{error::one_line, ApiError, ErrorKind, Request, Response, Stats, Status};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{cluster::Cluster, maps::CounterMap};

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("overlayd.sock")
}

/// How long a stopping daemon waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds the socket (replacing a stale one) with mode 0600.
pub fn bind(run_dir: &Path) -> std::io::Result<UnixListener> {
    let path = socket_path(run_dir);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serves the API until `stop` is cancelled, then drains and removes the socket.
pub async fn serve(
    listener: UnixListener,
    cluster: Arc<Cluster>,
    maps_dir: PathBuf,
    monitor: Option<Arc<crate::monitor::Hub>>,
    stop: CancellationToken,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((conn, _)) => {
                    let (cluster, maps_dir, stop) = (cluster.clone(), maps_dir.clone(), stop.clone());
                    let monitor = monitor.clone();
                    conns.spawn(async move {
                        if let Err(e) = handle(conn, &cluster, &maps_dir, monitor.as_ref(), &stop).await {
                            debug!("API connection: {e}");
                        }
                    });
                }
                Err(e) => {
                    warn!("API socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    let _ = std::fs::remove_file(socket_path(cluster.run_dir()));
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = conns.len(),
            "API requests still running after {DRAIN_TIMEOUT:?}; abandoning them"
        );
        conns.shutdown().await;
    }
}

async fn handle(
    conn: UnixStream,
    cluster: &Cluster,
    maps_dir: &Path,
    monitor: Option<&Arc<crate::monitor::Hub>>,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    loop {
        // A request already sent is served; once the daemon stops, none is waited for.
        let line = tokio::select! {
            biased;
            line = lines.next_line() => match line? {
                Some(line) => line,
                None => return Ok(()),
            },
            _ = stop.cancelled() => return Ok(()),
        };
        let started = std::time::Instant::now();
        let parsed = parse_request(&line);
        if let Ok(Request::Monitor(req)) = parsed {
            // The connection becomes the event stream, until the client closes it.
            return stream_monitor(monitor, req, &mut lines, &mut write, stop).await;
        }
        let (op, result) = match parsed {
            Ok(req) => {
                let op = req.op();
                (op, dispatch(req, cluster, maps_dir).await)
            }
            Err(e) => ("bad_request", Err(e)),
        };
        let outcome = result
            .as_ref()
            .map_or_else(|e| kind_label(e.kind), |_| "ok");
        cluster
            .metrics
            .api_request(op, outcome, started.elapsed().as_secs_f64());
        let response = match result {
            Ok(v) => Response::success(v),
            Err(e) => Response::failure(&e),
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
}

/// Writes the monitor's lines to the client until it closes the connection (or sends
/// anything more) or the daemon stops.
async fn stream_monitor(
    monitor: Option<&Arc<crate::monitor::Hub>>,
    req: overlay_api::MonitorRequest,
    lines: &mut tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>,
    write: &mut tokio::net::unix::OwnedWriteHalf,
    stop: &CancellationToken,
) -> std::io::Result<()> {
    let send = |v: &serde_json::Value| {
        let mut out = serde_json::to_vec(v).unwrap_or_default();
        out.push(b'\n');
        out
    };
    let attached = match monitor {
        Some(hub) => hub.attach(req.clone()).map_err(|e| {
            use crate::monitor::AttachError;
            let kind = match e {
                AttachError::NoEvents | AttachError::BadSample => ErrorKind::Invalid,
                AttachError::Maps(_) | AttachError::Ring(_) => ErrorKind::Internal,
            };
            ApiError::new(kind, format!("attaching the monitor: {e}"))
        }),
        None => Err(ApiError::new(
            ErrorKind::Invalid,
            "this node has no datapath to monitor (control-plane-only)",
        )),
    };
    let mut attached = match attached {
        Ok(a) => a,
        Err(e) => {
            let r = serde_json::to_value(Response::failure(&e)).unwrap_or_default();
            return write.write_all(&send(&r)).await;
        }
    };
    let ok = Response::success(serde_json::json!({
        "monitoring": req.events,
        "sample": req.sample,
    }));
    write
        .write_all(&send(&serde_json::to_value(ok).unwrap_or_default()))
        .await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            more = lines.next_line() => {
                // The client closed (or broke the protocol): the stream ends.
                let _ = more;
                return Ok(());
            }
            line = attached.rx.recv() => match line {
                Ok(line) => {
                    if attached.wants(line.kind) {
                        write.write_all(line.text.as_bytes()).await?;
                        write.write_all(b"\n").await?;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let lost = serde_json::json!({"type": "lost", "count": n, "where": "daemon"});
                    write.write_all(&send(&lost)).await?;
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// A metrics label for an error kind.
fn kind_label(kind: ErrorKind) -> &'static str {
    match kind {
        ErrorKind::NotFound => "not_found",
        ErrorKind::Invalid => "invalid",
        ErrorKind::Conflict => "conflict",
        ErrorKind::Exhausted => "exhausted",
        ErrorKind::Unavailable => "unavailable",
        ErrorKind::Internal => "internal",
    }
}

/// One request line, decoded; what does not decode is `invalid` with the reason.
pub fn parse_request(line: &str) -> Result<Request, ApiError> {
    serde_json::from_str(line)
        .map_err(|e| ApiError::new(ErrorKind::Invalid, format!("bad request: {}", one_line(e))))
}

fn json(v: impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

async fn dispatch(
    req: Request,
    cluster: &Cluster,
    maps_dir: &Path,
) -> Result<serde_json::Value, ApiError> {
    let api = |e: crate::cluster::ClusterError| e.to_api();
    match req {
        Request::CreateEndpoint(r) => cluster.create_endpoint(r).await.map(json).map_err(api),
        Request::DeleteEndpoint {
            container_id,
            ifname,
        } => cluster
            .delete_endpoint(&container_id, &ifname)
            .await
            .map(json)
            .map_err(api),
        Request::GetEndpoint {
            container_id,
            ifname,
        } => cluster
            .local_endpoint(&container_id, &ifname)
            .map(json)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorKind::NotFound,
                    format!("no endpoint {container_id}/{ifname} on this node"),
                )
            }),
        Request::CheckEndpoint {
            container_id,
            ifname,
            netns,
        } => cluster
            .check_endpoint(&container_id, &ifname, &netns)
            .await
            .map(json)
            .map_err(api),
        Request::ListEndpoints => Ok(json(cluster.local_endpoints())),
        Request::Status => {
            let view = cluster.view.lock().await;
            let report = cluster.applied.last_report();
            // What this node's datapath left out (a superset of what the view refused).
            let rejected: Vec<String> = report.rejected.iter().map(|r| r.to_string()).collect();
            Ok(json(Status {
                node: cluster.cfg.node_name.clone(),
                vtep_ip: cluster.vtep().v4,
                vtep_ip6: cluster.vtep().v6,
                lease: cluster.lease(),
                networks: view.networks().count(),
                nodes: view.nodes().count(),
                endpoints: view.endpoints().count(),
                local_endpoints: cluster.local_endpoints().len(),
                rejected_entries: view.rejected.len().max(rejected.len()),
                rejected,
                generation: cluster.applied.wanted(),
                applied_generation: cluster.applied.applied(),
                uptime_secs: cluster.started.elapsed().as_secs(),
                api_version: overlay_api::API_VERSION,
                release: Some(crate::RELEASE.to_owned()),
                datapath_layout: Some(overlay_common::maps::DATAPATH_LAYOUT),
            }))
        }
        // Served as a stream by `handle`.
        Request::Monitor(_) => Err(ApiError::new(
            ErrorKind::Invalid,
            "monitor is a stream: send it alone on its connection",
        )),
        Request::Stats => CounterMap::open_pinned(maps_dir)
            .and_then(|c| c.snapshot())
            .map(|s| json(Stats::from(s)))
            .map_err(|e| {
                warn!("stats: {e}");
                ApiError::new(ErrorKind::Internal, e.to_string())
            }),
    }
}
