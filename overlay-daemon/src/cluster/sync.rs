//! The cluster view, kept equal to etcd by list + watch.

use std::{sync::Arc, time::Duration};

use tracing::{debug, warn};

use super::{Cluster, FailureLog, BACKOFF_MAX};
use crate::metrics::Relist;
use crate::store::{client::changes, ClusterView};

impl Cluster {
    /// List, then watch from the listed revision; re-list after a compaction, a cancelled
    /// watch or a lost connection, so the view always converges to etcd's state.
    pub(super) async fn sync_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        let mut failures = FailureLog::default();
        let mut connections = self.store_changes();
        loop {
            let store = self.store().await;
            connections.borrow_and_update();
            let root = store.layout.root().to_owned();
            // Listed into a fresh view, swapped in whole: the reconciler never sees half a
            // listing, and pages are digested as they arrive.
            let mut fresh = ClusterView::new(store.layout.clone());
            fresh.begin_listing();
            let revision = match store.list_pages(&root, |page| fresh.add_listed(page)).await {
                Ok(r) => r,
                Err(e) => {
                    self.metrics.set_etcd_up(false);
                    failures.failed("listing cluster state", &e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            fresh.end_listing();
            fresh.revision = revision;
            failures.recovered("listing cluster state");
            backoff = Duration::from_millis(100);
            self.view.lock().await.replace(fresh);
            self.applied.bump();
            debug!(revision, "cluster state listed");
            let (_watcher, mut stream) = match store.watch(&root, revision + 1).await {
                Ok(w) => {
                    self.metrics.set_etcd_up(true);
                    w
                }
                Err(e) => {
                    self.metrics.set_etcd_up(false);
                    self.metrics.relisted(Relist::WatchLost);
                    warn!("watching cluster state: {e}; re-listing");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            loop {
                let message = tokio::select! {
                    m = stream.message() => m,
                    _ = connections.changed() => {
                        debug!("etcd connection replaced; re-listing");
                        self.metrics.relisted(Relist::Reconnected);
                        break;
                    }
                };
                match message {
                    Ok(Some(resp)) => {
                        if resp.compact_revision() > 0 || resp.canceled() {
                            warn!(
                                compact_revision = resp.compact_revision(),
                                reason = resp.cancel_reason(),
                                "watch cancelled; re-listing"
                            );
                            self.metrics.relisted(Relist::Compacted);
                            break;
                        }
                        let events = changes(&resp);
                        if events.is_empty() {
                            continue;
                        }
                        let mut view = self.view.lock().await;
                        for ev in events {
                            view.apply(ev);
                        }
                        if let Some(h) = resp.header() {
                            view.revision = view.revision.max(h.revision());
                        }
                        drop(view);
                        self.applied.bump();
                    }
                    Ok(None) => {
                        warn!("watch stream ended; re-listing");
                        self.metrics.set_etcd_up(false);
                        self.metrics.relisted(Relist::WatchLost);
                        break;
                    }
                    Err(e) => {
                        warn!("watch: {e}; re-listing");
                        self.metrics.set_etcd_up(false);
                        self.metrics.relisted(Relist::WatchLost);
                        tokio::time::sleep(backoff).await;
                        break;
                    }
                }
            }
        }
    }
}
