//! Whether a member that did not answer wants a client certificate we do not have.
//!
//! Over TLS 1.3 the client's side of the handshake is over before the server has checked the
//! client's certificate, so a member with `--client-cert-auth` refuses a client without one
//! by an alert on the first read. The gRPC channel reports that alert as often as it loses
//! it: the connection breaks, the channel reconnects, and the call ends "timed out", which
//! sends the operator after the network instead of the missing `--etcd-cert`. A client
//! with a CA but no certificate therefore asks such members itself, once a call has failed
//! on all of them: one handshake and one read of its own each, which either bring the alert
//! or not.

use std::{sync::Arc, time::Duration};

use rustls::{
    crypto::CryptoProvider,
    pki_types::{pem::PemObject, CertificateDer, ServerName},
    AlertDescription, ClientConfig, RootCertStore,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tokio_rustls::TlsConnector;

/// The whole probe's time: a member that does not answer it is reported as before.
const PROBE_TIME: Duration = Duration::from_secs(1);
/// What an HTTP/2 client sends first: something for the server to answer or refuse.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub(super) struct CertificateProbe {
    connector: TlsConnector,
}

impl CertificateProbe {
    /// A probe trusting the CA certificates in `ca_pem` (those the client trusts); None if
    /// none can be read from it (the client's own connection reports that).
    pub(super) fn new(ca_pem: &[u8]) -> Option<Self> {
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem) {
            roots.add(cert.ok()?).ok()?;
        }
        if roots.is_empty() {
            return None;
        }
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Some(Self {
            connector: TlsConnector::from(Arc::new(config)),
        })
    }

    /// Whether the member at `url` refuses clients without a certificate.
    pub(super) async fn demands_certificate(&self, url: &str) -> bool {
        let Some((host, port)) = host_port(url) else {
            return false;
        };
        tokio::time::timeout(PROBE_TIME, self.ask(host, port))
            .await
            .unwrap_or(false)
    }

    async fn ask(&self, host: &str, port: u16) -> bool {
        let Ok(name) = ServerName::try_from(host.to_owned()) else {
            return false;
        };
        let addr = (host, port);
        let Ok(tcp) = TcpStream::connect(addr).await else {
            return false;
        };
        let mut tls = match self.connector.connect(name, tcp).await {
            Ok(tls) => tls,
            // TLS 1.2: the server asks for the certificate within the handshake.
            Err(e) => return is_certificate_required(&e),
        };
        if tls.write_all(H2_PREFACE).await.is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        match tls.read(&mut buf).await {
            Err(e) => is_certificate_required(&e),
            Ok(_) => false,
        }
    }
}

fn is_certificate_required(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|tls| {
            // Having sent none, either alert means the same; etcd (Go) sends the second.
            matches!(
                tls,
                rustls::Error::AlertReceived(
                    AlertDescription::CertificateRequired | AlertDescription::BadCertificate
                )
            )
        })
}

/// The host (brackets stripped from an IPv6 address) and port of an endpoint URL, in any of
/// the forms `EtcdConfig::check` accepts.
fn host_port(url: &str) -> Option<(&str, u16)> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let (host, port) = rest.rsplit_once(':')?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    Some((host, port.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_forms() {
        assert_eq!(
            host_port("https://198.18.0.10:2379"),
            Some(("198.18.0.10", 2379))
        );
        assert_eq!(
            host_port("https://[2001:2::10]:2379/"),
            Some(("2001:2::10", 2379))
        );
        assert_eq!(host_port("etcd-0:2379"), Some(("etcd-0", 2379)));
        assert_eq!(host_port("https://etcd-0"), None);
    }

    #[test]
    fn no_probe_without_a_readable_ca() {
        assert!(CertificateProbe::new(b"not a certificate").is_none());
    }
}
