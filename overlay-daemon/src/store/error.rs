//! What goes wrong talking to etcd, sorted by what fixes it: another member (the store
//! fails over), a new auth token (re-authenticate), the operator's configuration (one line
//! saying what to change), or the request itself.

use std::{fmt, path::PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No member answered; each one's reason, in the order they were tried.
    #[error("etcd unreachable: {}; check --etcd-endpoints and that a quorum of etcd members runs", join(.failures))]
    Unreachable { failures: Vec<MemberFailure> },
    /// etcd answered, but refuses this client until its configuration changes.
    #[error("etcd at {endpoint}: {refusal}")]
    Refused { endpoint: String, refusal: Refusal },
    /// etcd refused this request (not the member's nor the client's fault).
    #[error("etcd at {endpoint}: {source}")]
    Etcd {
        endpoint: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("--etcd-endpoints: {endpoint:?} is not an etcd client URL: use http://HOST:PORT or https://HOST:PORT, comma separated")]
    BadEndpoint { endpoint: String },
    #[error("--etcd-endpoints: {endpoint:?} is plain HTTP, but TLS files are given (--etcd-cacert/--etcd-cert): use https://")]
    PlainWithTls { endpoint: String },
    #[error("reading {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StoreError {
    /// Whether trying again later can succeed without anybody changing anything: etcd was
    /// out of reach (down, electing, cut off). A refusal or a rejected request is not.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unreachable { .. })
    }
}

/// One member's failure to answer.
#[derive(Clone, Debug)]
pub struct MemberFailure {
    pub endpoint: String,
    pub why: Unanswered,
}

impl fmt::Display for MemberFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.endpoint, self.why)
    }
}

fn join(failures: &[MemberFailure]) -> String {
    let parts: Vec<String> = failures.iter().map(ToString::to_string).collect();
    parts.join("; ")
}

/// Why a member did not answer: the next member may.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unanswered {
    ConnectionRefused,
    /// No route to the member's address.
    Unreachable,
    /// No connection could be made (connect timed out, TLS or name resolution failed).
    NotConnected(String),
    /// The member refused before proposing anything: no leader (an election, or it is cut
    /// off: `require_leader`), or too many requests.
    NotTaken(String),
    /// The connection broke with the request in flight.
    ConnectionLost,
    TimedOut,
    /// The member gave up on a request it may have proposed: the leader changed, or the
    /// request timed out inside etcd.
    Abandoned(String),
    /// Anything else the transport or the member reported as unavailable.
    Other(String),
}

impl Unanswered {
    /// Whether the request may have reached etcd and been applied although no answer came.
    pub fn maybe_applied(&self) -> bool {
        !matches!(
            self,
            Unanswered::ConnectionRefused
                | Unanswered::Unreachable
                | Unanswered::NotConnected(_)
                | Unanswered::NotTaken(_)
        )
    }
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unanswered::ConnectionRefused => f.write_str("connection refused"),
            Unanswered::Unreachable => f.write_str("no route to the member"),
            Unanswered::NotConnected(why) => write!(f, "not connected ({why})"),
            Unanswered::NotTaken(why) => f.write_str(why),
            Unanswered::ConnectionLost => f.write_str("connection lost"),
            Unanswered::TimedOut => f.write_str("timed out"),
            Unanswered::Abandoned(why) => f.write_str(why),
            Unanswered::Other(s) => f.write_str(s),
        }
    }
}

/// What the operator has to change before etcd accepts this client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The server's certificate does not chain to the CA we were given.
    UnknownCa,
    /// The server's certificate does not name the address we dialled.
    NameMismatch,
    /// The server's certificate is expired or otherwise unusable.
    BadServerCertificate(String),
    /// `--client-cert-auth` on the server and no client certificate here.
    ClientCertificateRequired,
    /// The server did not accept our client certificate.
    ClientCertificateRejected,
    /// Another TLS failure, described by rustls.
    Tls(String),
    /// Wrong user or password.
    AuthFailed { user: String },
    /// Authentication is on and this client gave no user (nor a certificate naming one).
    NoCredentials,
    /// A user and password were given, but etcd has authentication off.
    AuthNotEnabled,
    /// The user (or the certificate's CN) lacks access to the overlay's keys.
    PermissionDenied {
        user: Option<String>,
        prefix: String,
    },
}

impl Refusal {
    /// Whether it is about one member (its certificate, or its trust in ours), so another
    /// member may answer; credentials and roles are the cluster's.
    pub fn per_member(&self) -> bool {
        matches!(
            self,
            Refusal::UnknownCa
                | Refusal::NameMismatch
                | Refusal::BadServerCertificate(_)
                | Refusal::ClientCertificateRequired
                | Refusal::ClientCertificateRejected
                | Refusal::Tls(_)
        )
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::UnknownCa => f.write_str(
                "its certificate is not signed by a CA this client trusts: pass the CA that signed etcd's --cert-file with --etcd-cacert",
            ),
            Refusal::NameMismatch => f.write_str(
                "its certificate does not name this endpoint's host: add the address or name to the certificate's subject alternative names, or use an endpoint it names",
            ),
            Refusal::BadServerCertificate(why) => write!(
                f,
                "its certificate is not usable ({why}): renew etcd's --cert-file"
            ),
            Refusal::ClientCertificateRequired => f.write_str(
                "it requires a client certificate (--client-cert-auth): pass --etcd-cert and --etcd-key",
            ),
            Refusal::ClientCertificateRejected => f.write_str(
                "it rejected the client certificate: --etcd-cert must be signed by etcd's --trusted-ca-file and valid now",
            ),
            Refusal::Tls(why) => write!(f, "TLS failed: {why}"),
            Refusal::AuthFailed { user } => write!(
                f,
                "authentication failed for user {user:?}: check --etcd-user and --etcd-password"
            ),
            Refusal::NoCredentials => f.write_str(
                "authentication is enabled: pass --etcd-user and --etcd-password, or a client certificate (--etcd-cert) whose CN is an etcd user",
            ),
            Refusal::AuthNotEnabled => f.write_str(
                "authentication is not enabled there: drop --etcd-user and --etcd-password, or enable it (etcdctl auth enable)",
            ),
            Refusal::PermissionDenied { user, prefix } => {
                let who = match user {
                    Some(u) => format!("user {u:?}"),
                    None => "the client certificate's user (its CN)".to_owned(),
                };
                write!(
                    f,
                    "permission denied to {who} on {prefix}: grant its role the prefix (etcdctl role grant-permission ROLE readwrite {prefix} --prefix=true)"
                )
            }
        }
    }
}
