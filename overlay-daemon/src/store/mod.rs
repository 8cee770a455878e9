//! The cluster's shared state in etcd: the key layout, the records, the client, and the
//! cluster view that list + watch keep up to date.

mod claims6;
mod classify;
pub mod client;
mod config;
pub mod error;
pub mod keys;
mod limits;
mod members;
mod names;
mod objects;
mod probe;
pub mod records;
pub mod view;

pub use claims6::carries_ipv6;
pub use client::{EtcdConfig, Refused, Store};
pub use error::{Refusal, StoreError};
pub use keys::{Key, Layout};
pub use objects::NetworkRemoval;
pub use view::ClusterView;
