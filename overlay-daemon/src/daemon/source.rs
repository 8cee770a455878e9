//! Where the tables come from: etcd (through the cluster view) or a static file. Either way
//! the daemon loop asks for the next pass the same way.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::SystemTime,
};

use tokio::sync::watch;
use tracing::warn;

use super::DaemonError;
use crate::{
    cluster::Cluster,
    datapath::DatapathError,
    reconcile::{Reconciler, Report, Target},
    tables::{ClusterTables, ValidTables},
};

/// The source of the cluster's tables.
pub enum TableSource {
    Etcd {
        cluster: Arc<Cluster>,
        changes: watch::Receiver<u64>,
    },
    File(TablesFile),
}

/// One reconciliation's outcome, for the handshake and the status file.
pub struct Pass {
    pub result: Result<Report, DatapathError>,
    /// The etcd revision the tables came from (0 for a file).
    pub revision: i64,
    /// The view generation the pass covered.
    pub generation: u64,
}

impl TableSource {
    /// Waits for the source to change (a file is polled on ticks instead).
    pub async fn changed(&mut self) -> bool {
        match self {
            TableSource::Etcd { changes, .. } => changes.changed().await.is_ok(),
            TableSource::File(_) => std::future::pending().await,
        }
    }

    /// Reconciles what changed. `retry` forces a full pass (a tick with local interfaces
    /// still missing, SIGHUP); `None` when nothing needed doing.
    pub async fn pass(
        &mut self,
        reconciler: &mut Reconciler,
        target: &mut Target,
        resolve: fn(&str) -> Option<u32>,
        retry: bool,
    ) -> Option<Pass> {
        match self {
            TableSource::File(file) => {
                let tables = file.poll(retry)?;
                Some(Pass {
                    result: reconciler.full(target, &tables, resolve),
                    revision: 0,
                    generation: 0,
                })
            }
            TableSource::Etcd { cluster, changes } => {
                let generation = *changes.borrow_and_update();
                let mut view = cluster.view.lock().await;
                if view.revision == 0 {
                    // Not listed yet (the daemon's first wake-up): an empty view would empty
                    // the datapath. The listing announces itself and brings the first pass.
                    return None;
                }
                let dirty = view.take_dirty();
                let revision = view.revision;
                let delta = if retry {
                    Ok(None)
                } else {
                    reconciler.delta(target, &view, &dirty, resolve)
                };
                let result = match delta {
                    Ok(Some(report)) => Ok(report),
                    Ok(None) => {
                        // Copy under the lock, validate and install without it.
                        let raw = view.cluster_tables();
                        drop(view);
                        reconciler.full(target, &raw.validate(), resolve)
                    }
                    Err(e) => Err(e),
                };
                Some(Pass {
                    result,
                    revision,
                    generation,
                })
            }
        }
    }

    /// Publishes what a pass did to whoever waits for it.
    pub fn finished(&self, pass: &Pass) {
        if let TableSource::Etcd { cluster, .. } = self {
            let outcome = match &pass.result {
                Ok(report) => Ok(Arc::new(report.clone())),
                Err(e) => Err(e.to_string()),
            };
            cluster.applied.finished(pass.generation, outcome);
        }
    }
}

/// Re-reads the tables file when its modification time changes (or when forced) and
/// validates it. A file that does not parse keeps the last good tables.
pub struct TablesFile {
    path: PathBuf,
    seen: Option<SystemTime>,
    current: ValidTables,
    first: bool,
}

impl TablesFile {
    pub fn new(path: PathBuf) -> Self {
        Self {
            path,
            seen: None,
            current: ValidTables::default(),
            first: true,
        }
    }

    fn poll(&mut self, forced: bool) -> Option<ValidTables> {
        let first = std::mem::take(&mut self.first);
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if !forced && !first && mtime == self.seen {
            return None;
        }
        self.seen = mtime;
        match load_tables(&self.path) {
            Ok(tables) => {
                for r in &tables.rejected {
                    warn!("tables: skipping {r}");
                }
                self.current = tables;
            }
            Err(e) => warn!("{e}; keeping the last good tables"),
        }
        Some(self.current.clone())
    }
}

pub fn load_tables(path: &Path) -> Result<ValidTables, DaemonError> {
    let text = std::fs::read_to_string(path).map_err(|e| DaemonError::Tables {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let tables = ClusterTables::from_json(&text).map_err(|reason| DaemonError::Tables {
        path: path.to_owned(),
        reason,
    })?;
    Ok(tables.validate())
}
