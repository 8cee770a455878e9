//! The apply handshake: whoever changes the cluster view bumps the wanted generation; the
//! daemon loop, the one owner of the datapath, reconciles and publishes the outcome of each
//! pass. An endpoint request waits for a pass that includes its change and installed it.

use std::{net::IpAddr, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::reconcile::Report;

pub struct ApplyHandshake {
    wanted: watch::Sender<u64>,
    /// The last pass that succeeded (a failed one never hides it from a waiter).
    success: watch::Sender<(u64, Arc<Report>)>,
    /// The last failure, for the reason a wait gives up with.
    failure: watch::Sender<Option<(u64, String)>>,
}

/// Why a wait ended without the change installed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotApplied {
    /// No successful pass included the change in time; the last failure, if any.
    Timeout(Option<String>),
    /// A pass included the change but left this endpoint out, for this reason.
    NotInstalled(String),
}

impl Default for ApplyHandshake {
    fn default() -> Self {
        Self {
            wanted: watch::channel(0).0,
            success: watch::channel((0, Arc::new(Report::default()))).0,
            failure: watch::channel(None).0,
        }
    }
}

impl ApplyHandshake {
    /// Records a change of the view; returns the generation that holds it.
    pub fn bump(&self) -> u64 {
        let mut g = 0;
        self.wanted.send_modify(|w| {
            *w += 1;
            g = *w;
        });
        g
    }

    pub fn wanted(&self) -> u64 {
        *self.wanted.borrow()
    }

    pub fn applied(&self) -> u64 {
        self.success.borrow().0
    }

    /// The last successful pass's report.
    pub fn last_report(&self) -> Arc<Report> {
        self.success.borrow().1.clone()
    }

    /// The daemon loop's view of the changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wanted.subscribe()
    }

    /// Publishes the outcome of a pass that covered everything up to `generation`.
    pub fn finished(&self, generation: u64, result: Result<Arc<Report>, String>) {
        match result {
            Ok(report) => {
                self.success.send_replace((generation, report));
            }
            Err(e) => {
                self.failure.send_replace(Some((generation, e)));
            }
        }
    }

    /// Waits until a pass covering `generation` succeeded, and (for `endpoint` = (network,
    /// IP)) installed that endpoint. Failed passes and passes that left the endpoint out are
    /// waited past until `timeout`: the loop retries them.
    pub async fn wait(
        &self,
        generation: u64,
        endpoint: Option<(&str, IpAddr)>,
        timeout: Duration,
    ) -> Result<(), NotApplied> {
        let mut rx = self.success.subscribe();
        // A pass may leave the endpoint out for a moment (the view replaced by a listing
        // that started before the node's own writes, until the watch brings them back):
        // only the last word before the deadline counts.
        let mut left_out = None;
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let (applied, report) = rx.borrow_and_update().clone();
                if applied >= generation {
                    match endpoint.and_then(|(n, ip)| report.not_installed(n, ip)) {
                        None => return,
                        Some(reason) => left_out = Some(reason),
                    }
                }
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        })
        .await;
        if waited.is_ok() {
            return Ok(());
        }
        if let Some(reason) = left_out {
            return Err(NotApplied::NotInstalled(reason));
        }
        Err(NotApplied::Timeout(
            self.failure
                .borrow()
                .clone()
                .filter(|(g, _)| *g >= generation)
                .map(|(_, e)| e),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{Rejection, Subject};

    #[tokio::test]
    async fn waits_end_with_the_pass_that_covers_the_change() {
        let h = Arc::new(ApplyHandshake::default());
        let g = h.bump();
        let h2 = h.clone();
        let waiter = tokio::spawn(async move { h2.wait(g, None, Duration::from_secs(5)).await });
        h.finished(g - 1, Ok(Arc::new(Report::default())));
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        h.finished(g, Err("map full".into()));
        h.finished(g, Ok(Arc::new(Report::default())));
        assert_eq!(waiter.await.unwrap(), Ok(()));
        assert_eq!(h.applied(), g);
    }

    #[tokio::test]
    async fn a_timeout_reports_the_last_failure_or_why_the_endpoint_was_left_out() {
        let h = ApplyHandshake::default();
        let g = h.bump();
        h.finished(g, Err("attaching: gone".into()));
        assert_eq!(
            h.wait(g, None, Duration::from_millis(50)).await,
            Err(NotApplied::Timeout(Some("attaching: gone".into())))
        );
        let ip: IpAddr = "198.19.1.9".parse().unwrap();
        let report = Report {
            rejected: vec![Rejection::new(
                Subject::Endpoint {
                    network: "red".into(),
                    ip,
                },
                "table full",
            )],
            ..Default::default()
        };
        h.finished(g, Ok(Arc::new(report)));
        assert_eq!(
            h.wait(g, Some(("red", ip)), Duration::from_millis(50))
                .await,
            Err(NotApplied::NotInstalled("table full".into()))
        );
        assert_eq!(
            h.wait(g, Some(("blue", ip)), Duration::from_secs(5)).await,
            Ok(())
        );
    }

    #[tokio::test]
    async fn an_endpoint_left_out_for_a_moment_is_waited_for() {
        let h = Arc::new(ApplyHandshake::default());
        let g = h.bump();
        let ip: IpAddr = "198.19.1.9".parse().unwrap();
        let left_out = Report {
            rejected: vec![Rejection::new(
                Subject::Endpoint {
                    network: "red".into(),
                    ip,
                },
                "node \"h1\" is not known",
            )],
            ..Default::default()
        };
        h.finished(g, Ok(Arc::new(left_out)));
        let h2 = h.clone();
        let waiter =
            tokio::spawn(
                async move { h2.wait(g, Some(("red", ip)), Duration::from_secs(5)).await },
            );
        tokio::time::sleep(Duration::from_millis(20)).await;
        h.finished(g + 1, Ok(Arc::new(Report::default())));
        assert_eq!(waiter.await.unwrap(), Ok(()));
    }
}
