//! Endpoints with an operation in flight. An ADD or DEL holds its endpoint here for its whole
//! length but the shared `alloc` lock only while it changes etcd and the local state, so the
//! slow parts (making or deleting the veth, waiting for the datapath) of different endpoints
//! overlap. One operation per endpoint at a time; whoever judges endpoints by their
//! interface (the reaper, re-publishing after a lost lease) leaves held ones alone, since a
//! held endpoint may not have its interface yet.

use std::{collections::BTreeSet, sync::Mutex};

use overlay_api::EndpointId;
use tokio::sync::Notify;

#[derive(Default)]
pub(crate) struct Busy {
    held: Mutex<BTreeSet<EndpointId>>,
    released: Notify,
}

/// An endpoint held; released on drop.
pub(crate) struct Held<'a> {
    busy: &'a Busy,
    id: EndpointId,
}

impl Busy {
    /// Holds `id`, waiting while another operation holds it.
    pub(crate) async fn hold(&self, id: EndpointId) -> Held<'_> {
        loop {
            // Registered before the check: a release between the two is not missed.
            let released = self.released.notified();
            if let Some(held) = self.try_hold(&id) {
                return held;
            }
            released.await;
        }
    }

    /// Holds `id` if nothing else does.
    pub(crate) fn try_hold(&self, id: &EndpointId) -> Option<Held<'_>> {
        let fresh = self.held.lock().expect("not poisoned").insert(id.clone());
        fresh.then(|| Held {
            busy: self,
            id: id.clone(),
        })
    }

    /// Waits until no endpoint is held.
    pub(crate) async fn idle(&self) {
        loop {
            let released = self.released.notified();
            if self.is_idle() {
                return;
            }
            released.await;
        }
    }

    pub(crate) fn is_idle(&self) -> bool {
        self.held.lock().expect("not poisoned").is_empty()
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.busy
            .held
            .lock()
            .expect("not poisoned")
            .remove(&self.id);
        self.busy.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::{sync::Arc, time::Duration};

    use super::*;

    fn id(c: &str) -> EndpointId {
        EndpointId {
            container_id: c.into(),
            ifname: "eth0".into(),
        }
    }

    #[tokio::test]
    async fn one_operation_per_endpoint_and_idle_waits_for_all() {
        let busy = Arc::new(Busy::default());
        let a = busy.hold(id("a")).await;
        let _b = busy.hold(id("b")).await; // another endpoint: not blocked
        assert!(busy.try_hold(&id("a")).is_none());
        let waiter = {
            let busy = busy.clone();
            tokio::spawn(async move {
                let _again = busy.hold(id("a")).await;
            })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !waiter.is_finished(),
            "a second hold of a waits for the first"
        );
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .expect("released")
            .unwrap();
        assert!(!busy.is_idle(), "b is still held");
        let idle = {
            let busy = busy.clone();
            tokio::spawn(async move { busy.idle().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!idle.is_finished());
        drop(_b);
        tokio::time::timeout(Duration::from_secs(1), idle)
            .await
            .expect("idle once b is released")
            .unwrap();
    }
}
