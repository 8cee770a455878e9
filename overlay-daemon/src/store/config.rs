//! How to reach etcd: the `--etcd-*` flags, checked before anything is dialled, and the TLS
//! material they name.

use std::{os::unix::fs::PermissionsExt as _, path::PathBuf};

use tracing::warn;

use super::error::StoreError;

/// How to reach etcd (the `--etcd-*` flags).
#[derive(Clone, Debug)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub cacert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl EtcdConfig {
    pub fn local(prefix: &str) -> Self {
        Self {
            endpoints: vec!["http://127.0.0.1:2379".into()],
            prefix: prefix.into(),
            cacert: None,
            cert: None,
            key: None,
            user: None,
            password: None,
        }
    }

    /// Refuses endpoints that are not client URLs before anything is dialled.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.endpoints.is_empty() {
            return Err(StoreError::BadEndpoint {
                endpoint: String::new(),
            });
        }
        if let Some(bad) = self.endpoints.iter().find(|e| !is_client_url(e)) {
            return Err(StoreError::BadEndpoint {
                endpoint: bad.clone(),
            });
        }
        let tls = self.cacert.is_some() || self.cert.is_some();
        match self.endpoints.iter().find(|e| e.starts_with("http://")) {
            Some(plain) if tls => Err(StoreError::PlainWithTls {
                endpoint: plain.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The TLS options from the `--etcd-cacert/--etcd-cert/--etcd-key` files.
    pub(super) fn tls_options(&self) -> Result<etcd_client::TlsOptions, StoreError> {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|source| StoreError::TlsFile {
                path: p.clone(),
                source,
            })
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &self.cacert {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.cert, &self.key) {
            if let Ok(meta) = std::fs::metadata(key) {
                let mode = meta.permissions().mode();
                if exposed(mode) {
                    warn!(
                        "the etcd client key {} is readable by other users (mode {:o}): chmod 600 it",
                        key.display(),
                        mode & 0o777
                    );
                }
            }
            tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
        }
        Ok(tls)
    }
}

/// `http://HOST:PORT`, `https://HOST:PORT` or `HOST:PORT` (etcd-client's forms), HOST a
/// name, an IPv4 address or a bracketed IPv6 address.
fn is_client_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or(url)
        .trim_end_matches('/');
    let Some((host, port)) = rest.rsplit_once(':') else {
        return false;
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        }
    };
    host_ok && port.parse::<u16>().is_ok_and(|p| p > 0)
}

/// Whether a key file's mode lets anyone but its owner read it.
fn exposed(mode: u32) -> bool {
    mode & 0o077 != 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn client_urls_are_checked_before_dialling() {
        for good in [
            "http://10.0.0.1:2379",
            "https://etcd-1.example:2379",
            "198.18.0.1:2379",
            "http://[2001:2::1]:2379/",
        ] {
            assert!(super::is_client_url(good), "{good}");
        }
        for bad in [
            "",
            "ftp://x:1",
            "http://host",
            "http://:2379",
            "http://h:0",
            "h:port",
            "http://[zz]:1",
        ] {
            assert!(!super::is_client_url(bad), "{bad}");
        }
    }

    #[test]
    fn only_owner_only_keys_pass() {
        assert!(!super::exposed(0o100600));
        assert!(!super::exposed(0o100400));
        assert!(super::exposed(0o100640));
        assert!(super::exposed(0o100644));
    }
}
