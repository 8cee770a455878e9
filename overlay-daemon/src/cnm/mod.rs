//! The Docker libnetwork remote driver (CNM): HTTP/JSON on a unix socket that dockerd finds in
//! `/run/docker/plugins/`. One plugin is both the NetworkDriver and the IpamDriver, so Docker
//! containers on different hosts get addresses from the cluster IPAM and never collide.

mod driver;
mod state;

use std::{convert::Infallible, path::Path, sync::Arc};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{body::Incoming, server::conn::http1, service::service_fn, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::UnixListener;
use tracing::{debug, info};

pub use driver::{Driver, Reply};

/// The media type of Docker plugin requests and responses.
const CONTENT_TYPE: &str = "application/vnd.docker.plugins.v1.2+json";

/// Serves the plugin socket at `path` until the task is dropped.
pub async fn serve(path: &Path, driver: Arc<Driver>) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    info!(socket = %path.display(), "serving the Docker network and IPAM driver");
    loop {
        let (stream, _) = listener.accept().await?;
        let driver = driver.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let driver = driver.clone();
                async move { Ok::<_, Infallible>(handle(&driver, req).await) }
            });
            if let Err(e) = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!("Docker plugin connection: {e}");
            }
        });
    }
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
