//! A blocking client of the API socket: one connection per call, a bounded wait.

use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::de::DeserializeOwned;

use crate::{ApiError, Endpoint, EndpointRequest, ErrorKind, Request, Stats, Status};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Nothing listens on the socket (the daemon is not running, or another path).
    #[error("overlayd is not reachable at {}: {source}", socket.display())]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The connection broke or timed out after it was made (the daemon stopped meanwhile).
    #[error("overlayd at {}: {source}", socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The answer was not what this version of the protocol expects.
    #[error("overlayd at {}: unexpected answer: {reason}", socket.display())]
    Protocol { socket: PathBuf, reason: String },
    /// The daemon refused or failed the request.
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl CallError {
    /// The kind of failure, as a front end maps it to its protocol: a connection that broke
    /// mid-call counts as `unavailable` (the daemon is being replaced).
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::Unreachable { .. } => ErrorKind::Unavailable,
            CallError::Io { .. } => ErrorKind::Unavailable,
            CallError::Protocol { .. } => ErrorKind::Internal,
            CallError::Api(e) => e.kind,
        }
    }
}

/// The API at one socket path.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

/// Long enough for an endpoint to be allocated in etcd and installed (the daemon bounds
/// its own waits well below this).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

impl Client {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Sends one request and returns the result value.
    pub fn call(&self, req: &Request) -> Result<serde_json::Value, CallError> {
        let conn = UnixStream::connect(&self.socket).map_err(|source| CallError::Unreachable {
            socket: self.socket.clone(),
            source,
        })?;
        let io = |source| CallError::Io {
            socket: self.socket.clone(),
            source,
        };
        conn.set_read_timeout(Some(self.timeout)).map_err(io)?;
        conn.set_write_timeout(Some(self.timeout)).map_err(io)?;
        let mut line = serde_json::to_vec(req).expect("requests serialize");
        line.push(b'\n');
        (&conn).write_all(&line).map_err(io)?;
        conn.shutdown(std::net::Shutdown::Write).map_err(io)?;
        let mut answer = String::new();
        BufReader::new(&conn).read_line(&mut answer).map_err(io)?;
        if answer.is_empty() {
            return Err(io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the connection closed without an answer",
            )));
        }
        let resp: crate::Response =
            serde_json::from_str(&answer).map_err(|e| self.protocol(e.to_string()))?;
        Ok(resp.into_result()?)
    }

    fn typed<T: DeserializeOwned>(&self, req: &Request) -> Result<T, CallError> {
        let v = self.call(req)?;
        serde_json::from_value(v).map_err(|e| self.protocol(format!("{}: {e}", req.op())))
    }

    fn protocol(&self, reason: String) -> CallError {
        CallError::Protocol {
            socket: self.socket.clone(),
            reason,
        }
    }

    pub fn create_endpoint(&self, req: EndpointRequest) -> Result<Endpoint, CallError> {
        self.typed(&Request::CreateEndpoint(req))
    }

    /// The endpoint removed, if it existed.
    pub fn delete_endpoint(
        &self,
        container_id: &str,
        ifname: &str,
    ) -> Result<Option<Endpoint>, CallError> {
        self.typed(&Request::DeleteEndpoint {
            container_id: container_id.into(),
            ifname: ifname.into(),
        })
    }

    pub fn get_endpoint(&self, container_id: &str, ifname: &str) -> Result<Endpoint, CallError> {
        self.typed(&Request::GetEndpoint {
            container_id: container_id.into(),
            ifname: ifname.into(),
        })
    }

    pub fn check_endpoint(
        &self,
        container_id: &str,
        ifname: &str,
        netns: &Path,
    ) -> Result<Endpoint, CallError> {
        self.typed(&Request::CheckEndpoint {
            container_id: container_id.into(),
            ifname: ifname.into(),
            netns: netns.into(),
        })
    }

    pub fn list_endpoints(&self) -> Result<Vec<Endpoint>, CallError> {
        self.typed(&Request::ListEndpoints)
    }

    pub fn status(&self) -> Result<Status, CallError> {
        self.typed(&Request::Status)
    }

    pub fn stats(&self) -> Result<Stats, CallError> {
        self.typed(&Request::Stats)
    }
}
