//! The CNI plugin (`overlay-cni`, spec 1.1.0; configs of 0.3.0 to 1.1.0): a thin adapter
//! that turns CNI operations into calls of the host's overlayd API. It links the API crate
//! and serde, nothing of the daemon: the runtime execs it as root for every pod.
//!
//! Results use the cniVersion of the config they answer (older runtimes cannot parse newer
//! results).

pub mod conf;
#[cfg(any(test, feature = "fuzz"))]
#[doc(hidden)]
pub mod fuzz;
pub mod ops;
pub mod results;
pub mod types;

pub use conf::{CniEnv, NetConf};
pub use ops::{decode, run, Invocation, Operation};
pub use types::{CniError, CniResult};

/// Every cniVersion this plugin reads and answers in.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
/// The version answered when a request names none (or cannot be read).
pub const LATEST_VERSION: &str = "1.1.0";
