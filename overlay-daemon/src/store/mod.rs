//! The cluster's shared state in etcd: the key layout, the records, the client, and the
//! cluster view that list + watch keep up to date.

pub mod client;
pub mod keys;
pub mod records;
pub mod view;

pub use client::{EtcdConfig, Store, StoreError};
pub use keys::{Key, Layout};
pub use view::ClusterView;
