//! overlayd's local API, as a small crate of its own: what a front end (the CNI plugin, a
//! test, a future CRI shim) links to talk to the daemon, without linking the daemon.
//!
//! - [`protocol`]: one JSON request per line on `<run-dir>/overlayd.sock`, one JSON
//!   response line back; errors carry an [`ErrorKind`] a caller decides on.
//! - [`endpoint`]: the endpoint model (who owns an endpoint, where its interface lives, how
//!   it is attached), the same in the daemon's local state, the cluster view and etcd.
//! - [`client`]: a blocking client over the socket.

pub mod bandwidth;
pub mod client;
pub mod endpoint;
pub mod error;
#[cfg(any(test, feature = "fuzz"))]
#[doc(hidden)]
pub mod fuzz;
pub mod labels;
pub mod mac;
pub mod protocol;

pub use bandwidth::Bandwidth;
pub use client::{CallError, Client};
pub use endpoint::{
    Attachment, DefaultRoute, DefaultRoutes, Endpoint, EndpointDns, EndpointId, EndpointRequest,
    Ipv4Assignment, Ipv6Assignment, Owner, Pod, Sandbox,
};
pub use error::{ApiError, ErrorKind};
pub use mac::MacAddr;
pub use protocol::{
    Count, EventType, MonitorRequest, Request, Response, Stats, Status, API_VERSION,
};

/// Where overlayd serves its API by default (`--run-dir /run/overlay`).
pub const DEFAULT_SOCKET: &str = "/run/overlay/overlayd.sock";
