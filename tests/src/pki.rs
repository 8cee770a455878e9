//! Certificates for a TLS etcd, made per run with rcgen: a CA, a server certificate for the
//! members' addresses (also used between members), a client certificate per user (its CN
//! is the etcd user when etcd runs with `--client-cert-auth`), and a second, unrelated CA
//! for the "wrong CA" cases. Keys are written with mode 0600.

use std::{
    net::{IpAddr, Ipv4Addr},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

pub struct Pki {
    dir: PathBuf,
}

/// A client's certificate and key files.
#[derive(Clone, Debug)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write(path: &Path, text: &str, mode: u32) {
    use std::io::Write as _;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(mode)
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

fn ca(name: &str) -> (Certificate, KeyPair) {
    let key = KeyPair::generate().expect("CA key");
    let mut p = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.distinguished_name.push(DnType::CommonName, name);
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (p.self_signed(&key).expect("CA certificate"), key)
}

impl Pki {
    /// Makes everything in `dir`: a server certificate valid for `server_ips` (and
    /// localhost), and a client certificate for each of `users`.
    pub fn new(dir: &Path, server_ips: &[Ipv4Addr], users: &[&str]) -> Self {
        std::fs::create_dir_all(dir).expect("pki dir");
        let (ca_cert, ca_key) = ca("overlay test CA");
        write(&dir.join("ca.pem"), &ca_cert.pem(), 0o644);
        let (other, _) = ca("an unrelated CA");
        write(&dir.join("other-ca.pem"), &other.pem(), 0o644);

        let sign = |cn: &str, sans: Vec<SanType>, usages: Vec<ExtendedKeyUsagePurpose>| {
            let key = KeyPair::generate().expect("key");
            let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
            p.distinguished_name.push(DnType::CommonName, cn);
            p.subject_alt_names = sans;
            p.extended_key_usages = usages;
            p.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            let cert = p.signed_by(&key, &ca_cert, &ca_key).expect("certificate");
            (cert.pem(), key.serialize_pem())
        };
        let mut sans: Vec<SanType> = server_ips
            .iter()
            .map(|ip| SanType::IpAddress(IpAddr::V4(*ip)))
            .collect();
        sans.push(SanType::DnsName("localhost".try_into().expect("dns name")));
        // Members also dial each other with it (peer TLS), so it is a client certificate too.
        let (cert, key) = sign(
            "etcd",
            sans,
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        );
        write(&dir.join("server.pem"), &cert, 0o644);
        write(&dir.join("server-key.pem"), &key, 0o600);
        for user in users {
            let (cert, key) = sign(user, Vec::new(), vec![ExtendedKeyUsagePurpose::ClientAuth]);
            write(&dir.join(format!("{user}.pem")), &cert, 0o644);
            write(&dir.join(format!("{user}-key.pem")), &key, 0o600);
        }
        Self {
            dir: dir.to_owned(),
        }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A CA that signed none of these certificates.
    pub fn other_ca(&self) -> PathBuf {
        self.dir.join("other-ca.pem")
    }

    pub fn server(&self) -> ClientCert {
        ClientCert {
            cert: self.dir.join("server.pem"),
            key: self.dir.join("server-key.pem"),
        }
    }

    /// The client certificate whose CN is `user`.
    pub fn client(&self, user: &str) -> ClientCert {
        ClientCert {
            cert: self.dir.join(format!("{user}.pem")),
            key: self.dir.join(format!("{user}-key.pem")),
        }
    }
}
