//! The Docker libnetwork remote driver (CNM): HTTP/JSON on a unix socket that dockerd finds in
//! `/run/docker/plugins/`. One plugin is both the NetworkDriver and the IpamDriver, so Docker
//! containers on different hosts get addresses from the cluster IPAM and never collide.

mod driver;
mod endpoints;
mod protocol;
mod state;

use std::{convert::Infallible, path::Path, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::{net::UnixListener, task::JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

pub use driver::Driver;
pub use endpoints::{docker_address_id, DOCKER_IFNAME};
pub use protocol::{
    decode, AddressRequest, Call, EndpointCreate, NetworkCreate, PoolId, PoolRequest, Reply,
};
pub use state::valid_id;

/// The media type of Docker plugin requests and responses.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Serves the plugin socket at `path` until `stop` is cancelled; then lets the requests in
/// flight finish (connections close after their current request) and removes the socket.
pub async fn serve(
    path: &Path,
    driver: Arc<Driver>,
    stop: CancellationToken,
) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    info!(socket = %path.display(), "serving the Docker network and IPAM driver");
    let mut conns = JoinSet::new();
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Transient (EMFILE and the like): requests in flight carry on.
                    tracing::warn!("Docker plugin socket: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let (driver, stop) = (driver.clone(), stop.clone());
        conns.spawn(async move {
            let service = service_fn(move |req| {
                let driver = driver.clone();
                async move { Ok::<_, Infallible>(handle(&driver, req).await) }
            });
            let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                debug!("Docker plugin connection: {e}");
            }
        });
    }
    drop(listener);
    let _ = std::fs::remove_file(path);
    while conns.join_next().await.is_some() {}
    Ok(())
}

async fn handle(driver: &Driver, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.uri().path().to_owned();
    let reply = match req.into_body().collect().await {
        Ok(body) => driver.call(&method, &body.to_bytes()).await,
        Err(e) => Reply::bad_request(format!("reading the request body: {e}")),
    };
    let body = serde_json::to_vec(&reply.body).unwrap_or_default();
    Response::builder()
        .status(reply.status)
        .header("Content-Type", CONTENT_TYPE)
        .body(Full::new(Bytes::from(body)))
        .expect("valid response")
}
