//! Failover between etcd members.
//!
//! etcd-client's own balanced channel fails a request whenever the endpoint it picked is
//! unreachable (etcd-client issue #39: failover is left to the application), so with one
//! member of three down every third call failed. Here each member gets its own client; a
//! call goes to the member that answered last, and on a failure that another member could
//! answer (unreachable, timed out, no leader) moves on to the next one. Members that failed
//! are tried last, oldest failure first, so a member that comes back is probed again as
//! soon as the others fail. Every call is safe to repeat (see `Store`'s writes), so a call
//! whose answer was lost is simply asked again elsewhere; each attempt is told whether an
//! earlier one may have been applied (`Retry`), which a conditional write needs to tell its
//! own earlier success from somebody else's equal value.

use std::{
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions};
use tracing::debug;

use super::{
    client::EtcdConfig,
    error::{classify, ClientCert, Context, Fault, MemberFailure, StoreError, Unanswered},
};

/// How long a call keeps trying the members when all of them fail: an election (a killed
/// leader) takes one to two seconds with etcd's defaults.
const RETRY_WINDOW: Duration = Duration::from_secs(6);
/// Pause between rounds over all members.
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// How long one attempt on one member may take (the channel's own request timeout).
pub(super) const ATTEMPT: Duration = Duration::from_secs(5);

/// What an attempt knows of the attempts of the same call before it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Retry {
    /// An earlier attempt got no answer after it may have reached etcd (its write may have
    /// been applied).
    pub maybe_applied: bool,
}

struct Member {
    url: String,
    /// Connected (and authenticated) client, made on first use.
    client: tokio::sync::Mutex<Option<Client>>,
    /// When it last failed, while it has not answered since.
    failed_at: Mutex<Option<Instant>>,
}

pub(super) struct Members {
    members: Vec<Member>,
    /// The member that answered last.
    current: AtomicUsize,
    options: ConnectOptions,
    user: Option<(String, String)>,
    prefix: String,
    tls: Option<ClientCert>,
}

impl Members {
    pub(super) fn new(cfg: &EtcdConfig, options: ConnectOptions) -> Self {
        Self {
            members: cfg
                .endpoints
                .iter()
                .map(|url| Member {
                    url: url.clone(),
                    client: tokio::sync::Mutex::new(None),
                    failed_at: Mutex::new(None),
                })
                .collect(),
            current: AtomicUsize::new(0),
            options,
            user: cfg.user.clone().zip(cfg.password.clone()),
            tls: (cfg.cacert.is_some() || cfg.cert.is_some()).then_some(if cfg.cert.is_some() {
                ClientCert::Given
            } else {
                ClientCert::None
            }),
            // What a role must be granted: the whole prefix, every layout version under it.
            prefix: format!("{}/", cfg.prefix.trim_end_matches('/')),
        }
    }

    /// The endpoints, comma separated (for messages).
    pub(super) fn endpoints(&self) -> String {
        let urls: Vec<&str> = self.members.iter().map(|m| m.url.as_str()).collect();
        urls.join(",")
    }

    fn context(&self, authenticating: bool) -> Context<'_> {
        Context {
            user: self.user.as_ref().map(|(u, _)| u.as_str()),
            prefix: &self.prefix,
            authenticating,
            tls: self.tls,
        }
    }

    /// The order to try members in: the current one, the others that have not failed, then
    /// those that failed, the longest ago first.
    fn order(&self) -> Vec<usize> {
        let n = self.members.len();
        let current = self.current.load(Ordering::Relaxed) % n.max(1);
        let mut healthy = Vec::new();
        let mut failed = Vec::new();
        for i in (0..n).map(|k| (current + k) % n) {
            match *self.members[i].failed_at.lock().expect("lock") {
                None => healthy.push(i),
                Some(at) => failed.push((at, i)),
            }
        }
        failed.sort();
        healthy.extend(failed.into_iter().map(|(_, i)| i));
        healthy
    }

    async fn client(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let mut slot = self.members[i].client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut opts = self.options.clone();
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        let client = Client::connect([&self.members[i].url], Some(opts)).await?;
        *slot = Some(client.clone());
        Ok(client)
    }

    /// Drops member `i`'s client: the next call connects and authenticates again.
    async fn forget(&self, i: usize) {
        *self.members[i].client.lock().await = None;
    }

    fn answered(&self, i: usize) {
        *self.members[i].failed_at.lock().expect("lock") = None;
        self.current.store(i, Ordering::Relaxed);
    }

    /// Member `i` did not answer: noted, and tried last from now on.
    fn unanswered(&self, i: usize, why: Unanswered, failures: &mut Vec<MemberFailure>) {
        let endpoint = &self.members[i].url;
        debug!(%endpoint, "etcd member did not answer: {why}; trying the next");
        let mut at = self.members[i].failed_at.lock().expect("lock");
        if at.is_none() {
            *at = Some(Instant::now());
        }
        failures.push(MemberFailure {
            endpoint: endpoint.clone(),
            why,
        });
    }

    /// Runs `call` against a member that answers, failing over as described above.
    pub(super) async fn run<T, F, Fut>(&self, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        self.run_within(ATTEMPT, |c, _| call(c)).await
    }

    /// `run`, giving each member at most `attempt` to answer (a lease renewal must move on
    /// from a member cut off the network well before the lease runs out).
    pub(super) async fn run_within<T, F, Fut>(
        &self,
        attempt: Duration,
        mut call: F,
    ) -> Result<T, StoreError>
    where
        F: FnMut(Client, Retry) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let mut failures: Vec<MemberFailure> = Vec::new();
        loop {
            'members: for i in self.order() {
                let endpoint = &self.members[i].url;
                let mut reauthenticated = false;
                loop {
                    let retry = Retry {
                        maybe_applied: failures.iter().any(|f| f.why.maybe_applied()),
                    };
                    let answer = tokio::time::timeout(attempt, async {
                        match self.client(i).await {
                            Ok(client) => (call(client, retry).await, false),
                            Err(e) => (Err(e), self.user.is_some()),
                        }
                    })
                    .await;
                    let (e, fault) = match answer {
                        Ok((Ok(v), _)) => {
                            self.answered(i);
                            return Ok(v);
                        }
                        Ok((Err(e), authenticating)) => {
                            let fault = classify(&e, &self.context(authenticating));
                            (e, fault)
                        }
                        Err(_) => {
                            self.unanswered(i, Unanswered::TimedOut, &mut failures);
                            continue 'members;
                        }
                    };
                    match fault {
                        Fault::Member(why) => self.unanswered(i, why, &mut failures),
                        Fault::Token if !reauthenticated && self.user.is_some() => {
                            debug!(%endpoint, "auth token refused; authenticating again");
                            self.forget(i).await;
                            reauthenticated = true;
                            continue;
                        }
                        Fault::Refused(refusal) => {
                            return Err(StoreError::Refused {
                                endpoint: endpoint.clone(),
                                refusal,
                            })
                        }
                        Fault::Token | Fault::Request => {
                            // The member answered: it is healthy.
                            self.answered(i);
                            return Err(StoreError::Etcd {
                                endpoint: endpoint.clone(),
                                source: e,
                            });
                        }
                    }
                    break;
                }
            }
            if started.elapsed() + ROUND_PAUSE >= RETRY_WINDOW {
                // The last failure of each member, in the order they were tried.
                let mut last: Vec<MemberFailure> = Vec::new();
                for f in failures.into_iter().rev() {
                    if !last.iter().any(|l| l.endpoint == f.endpoint) {
                        last.push(f);
                    }
                }
                last.reverse();
                return Err(StoreError::Unreachable { failures: last });
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}
