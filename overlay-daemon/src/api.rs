//! The daemon's local API: one JSON request per line on `<run-dir>/overlayd.sock` (mode
//! 0600), one JSON response line back. Used by the CNI plugin, the Docker driver and
//! overlayctl.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{debug, warn};

use crate::{
    cluster::{Cluster, ClusterError, EndpointRequest, LocalEndpoint},
    maps::CounterMap,
};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    CreateEndpoint(EndpointRequest),
    DeleteEndpoint {
        container_id: String,
        ifname: String,
    },
    GetEndpoint {
        container_id: String,
        ifname: String,
    },
    ListEndpoints,
    Status,
    Stats,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Retrying later may succeed (etcd unreachable, not registered yet).
    #[serde(default)]
    pub transient: bool,
}

impl Response {
    fn ok(v: impl Serialize) -> Self {
        Self {
            ok: true,
            result: Some(serde_json::to_value(v).unwrap_or_default()),
            error: None,
            transient: false,
        }
    }
    fn err(msg: String, transient: bool) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(msg),
            transient,
        }
    }
}

impl From<Result<serde_json::Value, ClusterError>> for Response {
    fn from(r: Result<serde_json::Value, ClusterError>) -> Self {
        match r {
            Ok(v) => Response::ok(v),
            Err(e) => Response::err(e.to_string(), e.is_transient()),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub node: String,
    pub vtep_ip: std::net::Ipv4Addr,
    pub lease: Option<i64>,
    pub networks: usize,
    pub nodes: usize,
    pub endpoints: usize,
    pub local_endpoints: usize,
    pub rejected_entries: usize,
    pub generation: u64,
    pub applied_generation: u64,
    pub uptime_secs: u64,
}

pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("overlayd.sock")
}

/// Serves the API until the task is dropped.
pub async fn serve(cluster: Arc<Cluster>, maps_dir: PathBuf) -> std::io::Result<()> {
    let path = socket_path(cluster.run_dir());
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    loop {
        let (conn, _) = listener.accept().await?;
        let (cluster, maps_dir) = (cluster.clone(), maps_dir.clone());
        tokio::spawn(async move {
            if let Err(e) = handle(conn, cluster, maps_dir).await {
                debug!("API connection: {e}");
            }
        });
    }
}

async fn handle(conn: UnixStream, cluster: Arc<Cluster>, maps_dir: PathBuf) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => dispatch(req, &cluster, &maps_dir).await,
            Err(e) => Response::err(format!("bad request: {e}"), false),
        };
        let mut out = serde_json::to_vec(&response).unwrap_or_default();
        out.push(b'\n');
        write.write_all(&out).await?;
    }
    Ok(())
}

fn json<T: Serialize>(v: T) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or_default()
}

async fn dispatch(req: Request, cluster: &Cluster, maps_dir: &Path) -> Response {
    match req {
        Request::CreateEndpoint(r) => cluster.create_endpoint(r).await.map(json).into(),
        Request::DeleteEndpoint {
            container_id,
            ifname,
        } => cluster
            .delete_endpoint(&container_id, &ifname)
            .await
            .map(json)
            .into(),
        Request::GetEndpoint {
            container_id,
            ifname,
        } => match cluster.local_endpoint(&container_id, &ifname) {
            Some(ep) => Response::ok(ep),
            None => Response::err(
                format!("no endpoint {container_id}/{ifname} on this node"),
                false,
            ),
        },
        Request::ListEndpoints => Response::ok(cluster.local_endpoints()),
        Request::Status => {
            let view = cluster.view.lock().await;
            Response::ok(Status {
                node: cluster.cfg.node_name.clone(),
                vtep_ip: cluster.cfg.vtep_ip,
                lease: cluster.lease(),
                networks: view.networks().count(),
                nodes: view.nodes().count(),
                endpoints: view.endpoints().count(),
                local_endpoints: cluster.local_endpoints().len(),
                rejected_entries: view.rejected.len(),
                generation: *cluster.generation.borrow(),
                applied_generation: *cluster.applied.borrow(),
                uptime_secs: cluster.started.elapsed().as_secs(),
            })
        }
        Request::Stats => match CounterMap::open_pinned(maps_dir).and_then(|c| c.snapshot()) {
            Ok(s) => Response::ok(s),
            Err(e) => {
                warn!("stats: {e}");
                Response::err(e.to_string(), false)
            }
        },
    }
}

/// A client for the API (used by overlayctl, the CNI plugin and tests).
pub async fn call(socket: &Path, req: &Request) -> std::io::Result<Response> {
    let conn = UnixStream::connect(socket).await?;
    let (read, mut write) = conn.into_split();
    let mut line = serde_json::to_vec(req).map_err(std::io::Error::other)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    write.shutdown().await?;
    let mut lines = BufReader::new(read).lines();
    let text = lines
        .next_line()
        .await?
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response"))?;
    serde_json::from_str(&text).map_err(std::io::Error::other)
}

/// Convenience for callers that only want the endpoint back.
pub fn endpoint(resp: Response) -> Result<LocalEndpoint, String> {
    match (resp.ok, resp.result) {
        (true, Some(v)) => serde_json::from_value(v).map_err(|e| e.to_string()),
        _ => Err(resp.error.unwrap_or_else(|| "unknown error".into())),
    }
}
