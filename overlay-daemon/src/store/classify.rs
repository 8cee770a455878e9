//! What a failed etcd call means, decided from the error's kinds: the gRPC code, etcd's own
//! error identity (its `etcdserver: ...` descriptions, which etcd's clients compare too),
//! the rustls error and the I/O error kind. Never from our own messages.

use tonic::Code;

use super::error::{Refusal, Unanswered};

/// What a failed call means for the caller.
#[derive(Debug)]
pub(super) enum Fault {
    /// This member did not answer: try another.
    Member(Unanswered),
    /// The auth token is unknown to this member (it restarted, or the token expired there)
    /// or older than the auth store: authenticate again and retry.
    Token,
    /// The configuration is wrong (for this member, or for all: `Refusal::per_member`).
    Refused(Refusal),
    /// etcd refused the request itself.
    Request,
}

/// How the client talks to the members.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Transport {
    Plain,
    Tls,
    /// TLS with a client certificate of ours.
    TlsWithCertificate,
}

/// The context a call ran in, which decides what an ambiguous answer means.
pub(super) struct Context<'a> {
    pub user: Option<&'a str>,
    pub prefix: &'a str,
    /// The call was the authentication itself (in connect).
    pub authenticating: bool,
    pub transport: Transport,
}

/// etcd's error identities this client acts on (etcd's `rpctypes`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum EtcdError {
    NoLeader,
    NotCapable,
    TooManyRequests,
    LeaderChanged,
    RequestTimedOut,
    InvalidAuthToken,
    AuthOldRevision,
    UserEmpty,
    AuthFailed,
    AuthNotEnabled,
}

impl EtcdError {
    fn of(status: &tonic::Status) -> Option<Self> {
        let desc = status.message();
        Some(match desc {
            "etcdserver: no leader" => EtcdError::NoLeader,
            "etcdserver: not capable" => EtcdError::NotCapable,
            "etcdserver: too many requests" => EtcdError::TooManyRequests,
            "etcdserver: leader changed" => EtcdError::LeaderChanged,
            "etcdserver: invalid auth token" => EtcdError::InvalidAuthToken,
            "etcdserver: revision of auth store is old" => EtcdError::AuthOldRevision,
            "etcdserver: user name is empty" => EtcdError::UserEmpty,
            "etcdserver: authentication failed, invalid user ID or password" => {
                EtcdError::AuthFailed
            }
            "etcdserver: authentication is not enabled" => EtcdError::AuthNotEnabled,
            d if d.starts_with("etcdserver: request timed out") => EtcdError::RequestTimedOut,
            _ => return None,
        })
    }
}

pub(super) fn classify(e: &etcd_client::Error, cx: &Context<'_>) -> Fault {
    if let Some(refusal) = tls_refusal(e).or_else(|| tls_alert(e, cx.transport)) {
        return Fault::Refused(refusal);
    }
    let status = match e {
        etcd_client::Error::GRpcStatus(s) => s,
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => {
            return Fault::Member(
                unanswered_io(e).unwrap_or_else(|| Unanswered::NotConnected(e.to_string())),
            );
        }
        _ => return Fault::Request,
    };
    let etcd = EtcdError::of(status);
    let refused = |r| Fault::Refused(r);
    match (status.code(), etcd) {
        (_, Some(EtcdError::InvalidAuthToken | EtcdError::AuthOldRevision)) => Fault::Token,
        (_, Some(EtcdError::AuthFailed)) => refused(Refusal::AuthFailed {
            user: cx.user.unwrap_or_default().to_owned(),
        }),
        (_, Some(EtcdError::UserEmpty)) => refused(Refusal::NoCredentials),
        (_, Some(EtcdError::AuthNotEnabled)) => refused(Refusal::AuthNotEnabled),
        // Refused before anything was proposed: another member may take it.
        (
            _,
            Some(e @ (EtcdError::NoLeader | EtcdError::NotCapable | EtcdError::TooManyRequests)),
        ) => Fault::Member(Unanswered::NotTaken(match e {
            EtcdError::NoLeader => "no leader (election or partition)".into(),
            _ => status.message().to_owned(),
        })),
        (_, Some(EtcdError::LeaderChanged | EtcdError::RequestTimedOut)) => {
            Fault::Member(Unanswered::Abandoned(status.message().to_owned()))
        }
        (Code::Unauthenticated, _) => Fault::Token,
        (Code::InvalidArgument, _) if cx.authenticating => refused(Refusal::AuthFailed {
            user: cx.user.unwrap_or_default().to_owned(),
        }),
        (Code::PermissionDenied, _) => refused(Refusal::PermissionDenied {
            user: cx.user.map(str::to_owned),
            prefix: cx.prefix.to_owned(),
        }),
        // The transport failed, or the member's HTTP/2 stream broke (h2 errors surface as
        // Internal or Unknown): no answer.
        (Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled, _)
        | (Code::Unknown | Code::Internal, _)
            if status_is_transport(status)
                || matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                ) =>
        {
            Fault::Member(unanswered_io(e).unwrap_or_else(|| unanswered_status(status)))
        }
        (Code::Internal, _) => Fault::Member(Unanswered::Other(status.message().to_owned())),
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
        _ => Unanswered::Other(status.message().to_owned()),
    }
}

/// Why the transport failed, from the I/O error kind (or tonic's timeout); a failure to
/// connect (tonic's `ConnectError`) never sent the request.
fn unanswered_io(e: &etcd_client::Error) -> Option<Unanswered> {
    let connecting = sources(e).any(|err| err.is::<tonic::ConnectError>());
    let why = sources(e).find_map(|err| {
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
    });
    match (connecting, why) {
        (true, Some(w @ (Unanswered::ConnectionRefused | Unanswered::Unreachable))) => Some(w),
        (true, Some(w)) => Some(Unanswered::NotConnected(w.to_string())),
        (true, None) => Some(Unanswered::NotConnected("connect failed".into())),
        (false, w) => w,
    }
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
/// trust. It is that member's refusal: another one may accept us.
fn tls_alert(e: &etcd_client::Error, transport: Transport) -> Option<Refusal> {
    let refusal = match transport {
        Transport::Plain => return None,
        Transport::Tls => Refusal::ClientCertificateRequired,
        Transport::TlsWithCertificate => Refusal::ClientCertificateRejected,
    };
    sources(e)
        .filter_map(|err| err.downcast_ref::<std::io::Error>())
        .any(|io| io.kind() == std::io::ErrorKind::InvalidData)
        .then_some(refusal)
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
            transport: Transport::Plain,
        }
    }

    fn status(code: Code, msg: &str) -> etcd_client::Error {
        etcd_client::Error::GRpcStatus(tonic::Status::new(code, msg))
    }

    fn member(f: Fault) -> Unanswered {
        match f {
            Fault::Member(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn what_etcd_never_proposed_is_not_applied_and_what_it_dropped_may_be() {
        let no_leader = member(classify(
            &status(Code::Unavailable, "etcdserver: no leader"),
            &cx(),
        ));
        assert!(!no_leader.maybe_applied());
        let busy = member(classify(
            &status(Code::ResourceExhausted, "etcdserver: too many requests"),
            &cx(),
        ));
        assert!(!busy.maybe_applied());
        for msg in [
            "etcdserver: leader changed",
            "etcdserver: request timed out",
            "etcdserver: request timed out, possibly due to previous leader failure",
        ] {
            assert!(
                member(classify(&status(Code::Unavailable, msg), &cx())).maybe_applied(),
                "{msg}"
            );
        }
        assert!(member(classify(&status(Code::DeadlineExceeded, "x"), &cx())).maybe_applied());
    }

    #[test]
    fn a_connection_never_made_sent_nothing() {
        let io = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let e = etcd_client::Error::GRpcStatus(tonic::Status::from_error(Box::new(io)));
        assert_eq!(member(classify(&e, &cx())), Unanswered::ConnectionRefused);
        let lost = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = etcd_client::Error::GRpcStatus(tonic::Status::from_error(Box::new(lost)));
        assert!(member(classify(&e, &cx())).maybe_applied());
    }

    #[test]
    fn auth_answers_by_etcd_identity() {
        let with_user = Context {
            user: Some("ovl"),
            ..cx()
        };
        for msg in [
            "etcdserver: invalid auth token",
            "etcdserver: revision of auth store is old",
        ] {
            let code = if msg.ends_with("old") {
                Code::InvalidArgument
            } else {
                Code::Unauthenticated
            };
            assert!(
                matches!(classify(&status(code, msg), &with_user), Fault::Token),
                "{msg}"
            );
        }
        assert!(matches!(
            classify(
                &status(Code::InvalidArgument, "etcdserver: user name is empty"),
                &cx()
            ),
            Fault::Refused(Refusal::NoCredentials)
        ));
        assert!(matches!(
            classify(
                &status(
                    Code::InvalidArgument,
                    "etcdserver: authentication failed, invalid user ID or password"
                ),
                &with_user
            ),
            Fault::Refused(Refusal::AuthFailed { .. })
        ));
        assert!(matches!(
            classify(
                &status(
                    Code::FailedPrecondition,
                    "etcdserver: authentication is not enabled"
                ),
                &with_user
            ),
            Fault::Refused(Refusal::AuthNotEnabled)
        ));
        assert!(matches!(
            classify(
                &status(Code::PermissionDenied, "etcdserver: permission denied"),
                &cx()
            ),
            Fault::Refused(Refusal::PermissionDenied { .. })
        ));
        // Other bad requests are the request's, with or without auth.
        for c in [&cx(), &with_user] {
            assert!(matches!(
                classify(
                    &status(Code::InvalidArgument, "etcdserver: request is too large"),
                    c
                ),
                Fault::Request
            ));
        }
        assert!(matches!(
            classify(
                &status(
                    Code::OutOfRange,
                    "etcdserver: mvcc: required revision has been compacted"
                ),
                &cx()
            ),
            Fault::Request
        ));
    }

    #[test]
    fn tls_errors_say_what_to_fix_and_are_the_members() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        match classify(&etcd_client::Error::IoError(io), &cx()) {
            Fault::Refused(r) => {
                assert_eq!(r, Refusal::UnknownCa);
                assert!(r.per_member());
                assert!(r.to_string().contains("--etcd-cacert"));
            }
            other => panic!("{other:?}"),
        }
        let alert = || {
            etcd_client::Error::IoError(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "received fatal alert",
            ))
        };
        let tls = |transport| Context { transport, ..cx() };
        assert!(matches!(
            classify(&alert(), &tls(Transport::Tls)),
            Fault::Refused(Refusal::ClientCertificateRequired)
        ));
        assert!(matches!(
            classify(&alert(), &tls(Transport::TlsWithCertificate)),
            Fault::Refused(Refusal::ClientCertificateRejected)
        ));
        assert!(matches!(classify(&alert(), &cx()), Fault::Member(_)));
        assert!(!Refusal::PermissionDenied {
            user: None,
            prefix: "/o/".into()
        }
        .per_member());
    }
}
