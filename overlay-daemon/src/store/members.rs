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
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Mutex,
    },
    time::{Duration, Instant},
};

use etcd_client::{Client, ConnectOptions};
use tracing::debug;

use super::{
    classify::{classify, Context, Fault, Transport},
    client::EtcdConfig,
    error::{MemberFailure, Refusal, StoreError, Unanswered},
    probe::CertificateProbe,
};

/// How long a call keeps trying the members when all of them fail: an election (a killed
/// leader) takes one to two seconds with etcd's defaults.
const RETRY_WINDOW: Duration = Duration::from_secs(6);
/// Pause between rounds over all members.
const ROUND_PAUSE: Duration = Duration::from_millis(250);
/// How long one attempt on one member may take (the channel's own request timeout).
pub(super) const ATTEMPT: Duration = Duration::from_secs(5);
/// The least an attempt is given, even at the end of the window.
const MIN_ATTEMPT: Duration = Duration::from_millis(500);

/// What an attempt knows of the attempts of the same call before it.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Retry {
    /// An earlier attempt got no answer after it may have reached etcd (its write may have
    /// been applied).
    pub maybe_applied: bool,
}

/// A member's connected (and authenticated) client, and which one it is.
#[derive(Clone)]
struct Connected {
    client: Client,
    generation: u64,
}

struct Member {
    url: String,
    /// Made on first use, again after the member refused its auth token.
    client: tokio::sync::Mutex<Option<Connected>>,
    generation: AtomicU64,
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
    transport: Transport,
    /// For a TLS client without a certificate: asks a member that did not answer whether it
    /// wants one (`probe`).
    probe: Option<CertificateProbe>,
}

/// How one attempt on one member ended.
enum Attempt<T> {
    Answered(T),
    /// No client: the request was never sent.
    NotConnected(Fault, Option<etcd_client::Error>),
    /// The call failed (the fault) or timed out (None).
    Failed(Option<(Fault, etcd_client::Error)>),
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
                    generation: AtomicU64::new(0),
                    failed_at: Mutex::new(None),
                })
                .collect(),
            current: AtomicUsize::new(0),
            options,
            user: cfg.user.clone().zip(cfg.password.clone()),
            transport: match (&cfg.cacert, &cfg.cert) {
                (_, Some(_)) => Transport::TlsWithCertificate,
                (Some(_), None) => Transport::Tls,
                (None, None) => Transport::Plain,
            },
            // What a role must be granted: the whole prefix, every layout version under it.
            prefix: format!("{}/", cfg.prefix.trim_end_matches('/')),
            probe: match (&cfg.cacert, &cfg.cert) {
                (Some(ca), None) => std::fs::read(ca)
                    .ok()
                    .and_then(|pem| CertificateProbe::new(&pem)),
                _ => None,
            },
        }
    }

    /// A member among `failures` (each member's last) whose failure was its refusal of a
    /// client without a certificate that the channel lost (see `probe`). Asked only once a
    /// call has failed on every member, all at once: failover never waits for a probe.
    async fn wanting_certificate(&self, failures: &[MemberFailure]) -> Option<String> {
        let probe = self.probe.as_ref()?;
        let lost = failures.iter().filter(|f| {
            matches!(
                f.why,
                Unanswered::TimedOut | Unanswered::ConnectionLost | Unanswered::NotConnected(_)
            )
        });
        let asks = lost.map(|f| async move {
            probe
                .demands_certificate(&f.endpoint)
                .await
                .then(|| f.endpoint.clone())
        });
        futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .next()
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
            transport: self.transport,
        }
    }

    /// The order to try members in: the current one, the others that have not failed, then
    /// those that failed, the one whose last failure is oldest first (a member that came back
    /// is probed before one that just failed again).
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

    async fn client(&self, i: usize) -> Result<Connected, etcd_client::Error> {
        let member = &self.members[i];
        let mut slot = member.client.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let mut opts = self.options.clone();
        if let Some((user, password)) = &self.user {
            opts = opts.with_user(user.clone(), password.clone());
        }
        let client = Client::connect([&member.url], Some(opts)).await?;
        let connected = Connected {
            client,
            generation: member.generation.fetch_add(1, Ordering::Relaxed) + 1,
        };
        *slot = Some(connected.clone());
        Ok(connected)
    }

    /// Drops member `i`'s client `generation` (not one a concurrent call made since): the
    /// next call connects and authenticates again.
    async fn forget(&self, i: usize, generation: u64) {
        let mut slot = self.members[i].client.lock().await;
        if slot.as_ref().is_some_and(|c| c.generation == generation) {
            *slot = None;
        }
    }

    fn answered(&self, i: usize) {
        *self.members[i].failed_at.lock().expect("lock") = None;
        self.current.store(i, Ordering::Relaxed);
    }

    /// Member `i` did not answer (or refused us): noted, and tried last from now on.
    fn failed(&self, i: usize) {
        *self.members[i].failed_at.lock().expect("lock") = Some(Instant::now());
    }

    /// One attempt on member `i`, within `limit`: the client first (a failure there sent
    /// nothing), then the call.
    async fn attempt<T, F, Fut>(
        &self,
        i: usize,
        limit: Duration,
        retry: Retry,
        call: &mut F,
    ) -> (Attempt<T>, Option<u64>)
    where
        F: FnMut(Client, Retry) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let started = Instant::now();
        let connected = match tokio::time::timeout(limit, self.client(i)).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => {
                let fault = classify(&e, &self.context(self.user.is_some()));
                let fault = match fault {
                    // Whatever the transport said, nothing was sent.
                    Fault::Member(why) if why.maybe_applied() => {
                        Fault::Member(Unanswered::NotConnected(why.to_string()))
                    }
                    other => other,
                };
                return (Attempt::NotConnected(fault, Some(e)), None);
            }
            Err(_) => {
                let why = Unanswered::NotConnected("connecting timed out".into());
                return (Attempt::NotConnected(Fault::Member(why), None), None);
            }
        };
        let left = limit.saturating_sub(started.elapsed()).max(MIN_ATTEMPT);
        let generation = Some(connected.generation);
        match tokio::time::timeout(left, call(connected.client, retry)).await {
            Ok(Ok(v)) => (Attempt::Answered(v), generation),
            Ok(Err(e)) => {
                let fault = classify(&e, &self.context(false));
                (Attempt::Failed(Some((fault, e))), generation)
            }
            Err(_) => (Attempt::Failed(None), generation),
        }
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
        // Refusals of single members (their certificates): reported if nobody answers.
        let mut refusals: Vec<(String, Refusal)> = Vec::new();
        loop {
            let order = self.order();
            let mut refused_all = true;
            for i in order {
                let endpoint = self.members[i].url.clone();
                let mut reauthenticated = false;
                loop {
                    let retry = Retry {
                        maybe_applied: failures.iter().any(|f| f.why.maybe_applied()),
                    };
                    let limit = attempt.min(RETRY_WINDOW.saturating_sub(started.elapsed()));
                    let (outcome, generation) = self
                        .attempt(i, limit.max(MIN_ATTEMPT), retry, &mut call)
                        .await;
                    let (fault, error) = match outcome {
                        Attempt::Answered(v) => {
                            self.answered(i);
                            return Ok(v);
                        }
                        Attempt::NotConnected(fault, e) => (fault, e),
                        Attempt::Failed(Some((fault, e))) => (fault, Some(e)),
                        Attempt::Failed(None) => (Fault::Member(Unanswered::TimedOut), None),
                    };
                    match fault {
                        Fault::Member(why) => {
                            refused_all = false;
                            debug!(%endpoint, "etcd member did not answer: {why}; trying the next");
                            self.failed(i);
                            failures.push(MemberFailure { endpoint, why });
                        }
                        Fault::Refused(refusal) if refusal.per_member() => {
                            debug!(%endpoint, "etcd member refused this client: {refusal}; trying the next");
                            self.failed(i);
                            refusals.push((endpoint, refusal));
                        }
                        Fault::Refused(refusal) => {
                            return Err(StoreError::Refused { endpoint, refusal })
                        }
                        Fault::Token if !reauthenticated && self.user.is_some() => {
                            debug!(%endpoint, "auth token refused; authenticating again");
                            if let Some(g) = generation {
                                self.forget(i, g).await;
                            }
                            reauthenticated = true;
                            continue;
                        }
                        Fault::Token | Fault::Request => {
                            // The member answered: it is healthy.
                            self.answered(i);
                            return Err(match error {
                                Some(source) => StoreError::Etcd { endpoint, source },
                                None => StoreError::Unreachable { failures },
                            });
                        }
                    }
                    break;
                }
            }
            // Every member refused us: no round will change that.
            if refused_all {
                if let Some((endpoint, refusal)) = refusals.first().cloned() {
                    return Err(StoreError::Refused { endpoint, refusal });
                }
            }
            if started.elapsed() + ROUND_PAUSE >= RETRY_WINDOW {
                if let Some((endpoint, refusal)) = refusals.first().cloned() {
                    return Err(StoreError::Refused { endpoint, refusal });
                }
                // The last failure of each member, in the order they were tried.
                let mut last: Vec<MemberFailure> = Vec::new();
                for f in failures.into_iter().rev() {
                    if !last.iter().any(|l| l.endpoint == f.endpoint) {
                        last.push(f);
                    }
                }
                last.reverse();
                if let Some(endpoint) = self.wanting_certificate(&last).await {
                    let refusal = Refusal::ClientCertificateRequired;
                    return Err(StoreError::Refused { endpoint, refusal });
                }
                return Err(StoreError::Unreachable { failures: last });
            }
            tokio::time::sleep(ROUND_PAUSE).await;
        }
    }
}
