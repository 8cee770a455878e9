//! What goes wrong talking to etcd, sorted by what fixes it: another member (the store
//! fails over), a new auth token (re-authenticate), the operator's configuration (one line
//! saying what to change), or the request itself.

use std::{fmt, path::PathBuf};

use tonic::Code;

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
    #[error("reading {path}: {source}")]
    TlsFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(String),
}

impl StoreError {
    /// Whether trying again later can succeed without anybody changing the configuration.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Etcd { .. }
        )
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
    ConnectionLost,
    TimedOut,
    /// The member answered "unavailable": cut off from its leader (`require_leader`), in an
    /// election, the leader changed or the request timed out inside etcd.
    NoLeader,
    /// Anything else the transport or the member reported as unavailable.
    Other(String),
}

impl Unanswered {
    /// Whether the request may have reached etcd and been applied although no answer came:
    /// only a connection never made proves it was not.
    pub fn maybe_applied(&self) -> bool {
        !matches!(
            self,
            Unanswered::ConnectionRefused | Unanswered::Unreachable
        )
    }
}

impl fmt::Display for Unanswered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unanswered::ConnectionRefused => f.write_str("connection refused"),
            Unanswered::Unreachable => f.write_str("no route to the member"),
            Unanswered::ConnectionLost => f.write_str("connection lost"),
            Unanswered::TimedOut => f.write_str("timed out"),
            Unanswered::NoLeader => f.write_str("no leader (election or partition)"),
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
    /// The user (or the certificate's CN) lacks access to the overlay's keys.
    PermissionDenied {
        user: Option<String>,
        prefix: String,
    },
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

/// What a failed call means for the caller, decided from the error's kinds (gRPC code,
/// rustls error, I/O error kind), never from its text.
#[derive(Debug)]
pub(super) enum Fault {
    /// This member did not answer: try another.
    Member(Unanswered),
    /// The auth token is unknown to this member (it restarted, or the token expired there):
    /// authenticate again and retry.
    Token,
    /// The configuration is wrong; no member will answer differently.
    Refused(Refusal),
    /// etcd refused the request itself.
    Request,
}

/// The context a call ran in, which decides what an ambiguous code means.
pub(super) struct Context<'a> {
    pub user: Option<&'a str>,
    pub prefix: &'a str,
    /// The call was the authentication itself (in connect).
    pub authenticating: bool,
    /// TLS is configured, and whether with a client certificate.
    pub tls: Option<ClientCert>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientCert {
    Given,
    None,
}

pub(super) fn classify(e: &etcd_client::Error, cx: &Context<'_>) -> Fault {
    if let Some(refusal) = tls_refusal(e).or_else(|| tls_alert(e, cx.tls)) {
        return Fault::Refused(refusal);
    }
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            return Fault::Member(unanswered_io(e).unwrap_or(Unanswered::Other(e.to_string())));
        }
        _ => return Fault::Request,
    };
    match status.code() {
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled => {
            Fault::Member(unanswered_io(e).unwrap_or_else(|| unanswered_status(status)))
        }
        Code::Unknown if status_is_transport(status) => Fault::Member(
            unanswered_io(e).unwrap_or_else(|| Unanswered::Other(status.message().to_owned())),
        ),
        Code::Unauthenticated => Fault::Token,
        Code::InvalidArgument if cx.authenticating => Fault::Refused(Refusal::AuthFailed {
            user: cx.user.unwrap_or_default().to_owned(),
        }),
        // etcd's "user name is empty": a request without a token while auth is on.
        Code::InvalidArgument if cx.user.is_none() => Fault::Refused(Refusal::NoCredentials),
        Code::PermissionDenied => Fault::Refused(Refusal::PermissionDenied {
            user: cx.user.map(str::to_owned),
            prefix: cx.prefix.to_owned(),
        }),
        _ => Fault::Request,
    }
}

/// A status the client made up because the transport failed (no answer from etcd).
fn status_is_transport(status: &tonic::Status) -> bool {
    chain(status).any(|e| {
        e.is::<tonic::transport::Error>()
            || e.is::<tonic::ConnectError>()
            || e.is::<tonic::TimeoutExpired>()
            || e.is::<std::io::Error>()
    })
}

fn unanswered_status(status: &tonic::Status) -> Unanswered {
    match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => Unanswered::TimedOut,
        // etcd answers Unavailable for "no leader", "leader changed", "not capable", ...
        Code::Unavailable if !status_is_transport(status) => Unanswered::NoLeader,
        _ => Unanswered::Other(status.message().to_owned()),
    }
}

/// The I/O error kind (or tonic's timeout) behind a transport failure, if one says why.
fn unanswered_io(e: &etcd_client::Error) -> Option<Unanswered> {
    sources(e).find_map(|err| {
        if err.is::<tonic::TimeoutExpired>() {
            return Some(Unanswered::TimedOut);
        }
        let io = err.downcast_ref::<std::io::Error>()?;
        match io.kind() {
            std::io::ErrorKind::ConnectionRefused => Some(Unanswered::ConnectionRefused),
            std::io::ErrorKind::TimedOut => Some(Unanswered::TimedOut),
            std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => Some(Unanswered::ConnectionLost),
            std::io::ErrorKind::HostUnreachable | std::io::ErrorKind::NetworkUnreachable => {
                Some(Unanswered::Unreachable)
            }
            _ => None,
        }
    })
}

/// A TLS failure anywhere in the error's sources, as what the operator must change.
fn tls_refusal(e: &etcd_client::Error) -> Option<Refusal> {
    use rustls::{AlertDescription, CertificateError};
    let tls = sources(e).find_map(|err| {
        err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
    })?;
    Some(match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => Refusal::UnknownCa,
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName)
        | rustls::Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. }) => {
            Refusal::NameMismatch
        }
        rustls::Error::InvalidCertificate(other) => {
            Refusal::BadServerCertificate(format!("{other:?}"))
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            Refusal::ClientCertificateRequired
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateUnknown,
        ) => Refusal::ClientCertificateRejected,
        other => Refusal::Tls(other.to_string()),
    })
}

/// A TLS session the member ended with an alert. The alert's type does not survive h2 (it
/// keeps the I/O error's kind and text), but on a TLS connection an `InvalidData` I/O
/// error is exactly that; the server certificate's problems are caught typed before, so
/// what is left is the member refusing our side: no client certificate, or one it does not
/// trust.
fn tls_alert(e: &etcd_client::Error, tls: Option<ClientCert>) -> Option<Refusal> {
    let tls = tls?;
    sources(e)
        .filter_map(|err| err.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::InvalidData)
        .then_some(match tls {
            ClientCert::None => Refusal::ClientCertificateRequired,
            ClientCert::Given => Refusal::ClientCertificateRejected,
        })
}

/// etcd-client's error and its sources, outermost first (etcd_client::Error does not
/// report its variants' errors as sources).
fn sources(
    e: &etcd_client::Error,
) -> Box<dyn Iterator<Item = &(dyn std::error::Error + 'static)> + '_> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Box::new(chain(s)),
        etcd_client::Error::TransportError(t) => Box::new(chain(t)),
        etcd_client::Error::IoError(io) => Box::new(chain(io)),
        other => Box::new(chain(other)),
    }
}

/// An error and its sources, outermost first.
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx() -> Context<'static> {
        Context {
            user: None,
            prefix: "/overlay/",
            authenticating: false,
            tls: None,
        }
    }

    fn status(code: Code) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, "from etcd"))
    }

    #[test]
    fn server_side_unavailability_moves_to_another_member() {
        assert!(matches!(
            classify(&status(Code::Unavailable), &cx()),
            Fault::Member(Unanswered::NoLeader)
        ));
        assert!(matches!(
            classify(&status(Code::DeadlineExceeded), &cx()),
            Fault::Member(Unanswered::TimedOut)
        ));
    }

    #[test]
    fn refused_connections_are_named() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = etcd_client::Error::GRpcStatus(tonic::Status::from_error(Box::new(io)));
        assert!(matches!(
            classify(&e, &cx()),
            Fault::Member(Unanswered::ConnectionRefused)
        ));
    }

    #[test]
    fn auth_codes_depend_on_the_call() {
        assert!(matches!(
            classify(&status(Code::Unauthenticated), &cx()),
            Fault::Token
        ));
        assert!(matches!(
            classify(&status(Code::InvalidArgument), &cx()),
            Fault::Refused(Refusal::NoCredentials)
        ));
        let authenticating = Context {
            user: Some("ovl"),
            authenticating: true,
            ..cx()
        };
        assert!(matches!(
            classify(&status(Code::InvalidArgument), &authenticating),
            Fault::Refused(Refusal::AuthFailed { .. })
        ));
        assert!(matches!(
            classify(&status(Code::PermissionDenied), &cx()),
            Fault::Refused(Refusal::PermissionDenied { .. })
        ));
        // A bad request with credentials is the request's fault.
        let with_user = Context {
            user: Some("ovl"),
            ..cx()
        };
        assert!(matches!(
            classify(&status(Code::InvalidArgument), &with_user),
            Fault::Request
        ));
        assert!(matches!(
            classify(&status(Code::OutOfRange), &cx()),
            Fault::Request
        ));
    }

    #[test]
    fn tls_errors_say_what_to_fix() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let e = etcd_client::Error::IoError(io);
        assert!(matches!(
            classify(&e, &cx()),
            Fault::Refused(Refusal::UnknownCa)
        ));
        let text = StoreError::Refused {
            endpoint: "https://e1:2379".into(),
            refusal: Refusal::UnknownCa,
        }
        .to_string();
        assert!(text.contains("--etcd-cacert"), "{text}");
        assert!(!text.contains('\n'));
    }

    #[test]
    fn an_alert_on_a_tls_session_is_about_our_certificate() {
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, "received fatal alert");
        let e = etcd_client::Error::IoError(io);
        let without = Context {
            tls: Some(ClientCert::None),
            ..cx()
        };
        assert!(matches!(
            classify(&e, &without),
            Fault::Refused(Refusal::ClientCertificateRequired)
        ));
        let with = Context {
            tls: Some(ClientCert::Given),
            ..cx()
        };
        assert!(matches!(
            classify(&e, &with),
            Fault::Refused(Refusal::ClientCertificateRejected)
        ));
        // Without TLS the same error is the member's problem.
        assert!(matches!(classify(&e, &cx()), Fault::Member(_)));
    }
}
