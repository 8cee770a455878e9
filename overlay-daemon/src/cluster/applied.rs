//! The apply handshake: whoever changes the cluster view bumps the wanted generation; the
//! daemon loop, the one owner of the datapath, reconciles and publishes the outcome of each
//! pass. An endpoint request waits for a pass that includes its change and installed it.

use std::{net::Ipv4Addr, sync::Arc, time::Duration};

use tokio::sync::watch;

use crate::reconcile::Report;

/// What the last pass did with everything up to `generation`.
#[derive(Clone, Debug)]
pub struct PassOutcome {
    pub generation: u64,
    pub result: Result<Arc<Report>, String>,
}

pub struct ApplyHandshake {
    wanted: watch::Sender<u64>,
    outcome: watch::Sender<PassOutcome>,
    /// The last generation a pass installed without error.
    applied: watch::Sender<u64>,
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
            outcome: watch::channel(PassOutcome {
                generation: 0,
                result: Ok(Arc::new(Report::default())),
            })
            .0,
            applied: watch::channel(0).0,
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
        *self.applied.borrow()
    }

    /// The daemon loop's view of the changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.wanted.subscribe()
    }

    /// Publishes the outcome of a pass that covered everything up to `generation`.
    pub fn finished(&self, generation: u64, result: Result<Arc<Report>, String>) {
        if result.is_ok() {
            self.applied.send_replace(generation);
        }
        self.outcome
            .send_replace(PassOutcome { generation, result });
    }

    /// Waits until a pass covering `generation` succeeded, and (for `endpoint` = (network,
    /// IP)) installed that endpoint. Failed passes are waited past: the loop retries them.
    pub async fn wait(
        &self,
        generation: u64,
        endpoint: Option<(&str, Ipv4Addr)>,
        timeout: Duration,
    ) -> Result<(), NotApplied> {
        let mut rx = self.outcome.subscribe();
        let mut last_error = None;
        let waited = tokio::time::timeout(timeout, async {
            loop {
                let outcome = rx.borrow_and_update().clone();
                if outcome.generation >= generation {
                    match &outcome.result {
                        Ok(report) => {
                            let missing = endpoint.and_then(|(n, ip)| report.not_installed(n, ip));
                            return match missing {
                                Some(reason) => Err(NotApplied::NotInstalled(reason)),
                                None => Ok(()),
                            };
                        }
                        Err(e) => last_error = Some(e.clone()),
                    }
                }
                if rx.changed().await.is_err() {
                    return Err(NotApplied::Timeout(last_error.clone()));
                }
            }
        })
        .await;
        match waited {
            Ok(r) => r,
            Err(_) => Err(NotApplied::Timeout(last_error)),
        }
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
    async fn a_timeout_reports_the_last_failure_and_rejections_end_at_once() {
        let h = ApplyHandshake::default();
        let g = h.bump();
        h.finished(g, Err("attaching: gone".into()));
        assert_eq!(
            h.wait(g, None, Duration::from_millis(50)).await,
            Err(NotApplied::Timeout(Some("attaching: gone".into())))
        );
        let ip: Ipv4Addr = "198.19.1.9".parse().unwrap();
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
            h.wait(g, Some(("red", ip)), Duration::from_secs(5)).await,
            Err(NotApplied::NotInstalled("table full".into()))
        );
        assert_eq!(
            h.wait(g, Some(("blue", ip)), Duration::from_secs(5)).await,
            Ok(())
        );
    }
}
