//! A thin typed layer over etcd-client: connection options, leases, create-only
//! transactions, prefix listing and watching.

use std::{path::PathBuf, time::Duration};

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream, Watcher,
};

use super::{
    keys::{Key, Layout},
    records,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        #[source]
        source: etcd_client::Error,
    },
    #[error("reading {path}: {source}")]
    Tls {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Conflict(String),
}

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
}

/// One key-value pair as listed or watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    pub lease: i64,
}

/// A watch event: a put (with its value) or a delete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Put(Kv),
    Delete(String),
}

/// Largest etcd response read (gRPC's default is 4 MiB; etcd allows 1.5 MiB per request,
/// so a page of 5000 keys with a few maximal values needs more).
const MAX_MESSAGE: usize = 64 << 20;

#[derive(Clone)]
pub struct Store {
    client: Client,
    pub layout: Layout,
    endpoints: String,
}

impl Store {
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, StoreError> {
        let endpoints = cfg.endpoints.join(",");
        let err = |source| StoreError::Etcd {
            endpoints: endpoints.clone(),
            source,
        };
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(5), Duration::from_secs(3));
        if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
            opts = opts.with_user(user.clone(), password.clone());
        }
        if cfg.cacert.is_some() || cfg.cert.is_some() {
            opts = opts.with_tls(tls_options(cfg)?);
        }
        let client = Client::connect(&cfg.endpoints, Some(opts))
            .await
            .map_err(err)?;
        Ok(Self {
            client,
            layout: Layout::new(&cfg.prefix),
            endpoints,
        })
    }

    /// A KV client that takes responses up to `MAX_MESSAGE`: one page of a listing may hold
    /// a few oversized values (skipped afterwards), which must not stop the listing.
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(MAX_MESSAGE)
    }

    fn err(&self) -> impl Fn(etcd_client::Error) -> StoreError + '_ {
        |source| StoreError::Etcd {
            endpoints: self.endpoints.clone(),
            source,
        }
    }

    /// Every key under `prefix` and the revision the listing is consistent at.
    /// Read in pages so a large cluster never needs one response bigger than gRPC's limit
    /// (4 MiB); every page is read at the first page's revision, so the listing is one
    /// consistent snapshot.
    pub async fn list(&self, prefix: &str) -> Result<(Vec<Kv>, i64), StoreError> {
        let mut all = Vec::new();
        let revision = self.list_pages(prefix, |page| all.extend(page)).await?;
        Ok((all, revision))
    }

    /// Like `list`, handing each page to `each` as it arrives, so a caller that digests the
    /// pages never holds the whole listing. Returns the listing's revision.
    pub async fn list_pages(
        &self,
        prefix: &str,
        mut each: impl FnMut(Vec<Kv>),
    ) -> Result<i64, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let mut opts = GetOptions::new()
                .with_range(end.clone())
                .with_limit(LIST_PAGE);
            if revision > 0 {
                opts = opts.with_revision(revision);
            }
            let resp = self
                .kv()
                .get(start.clone(), Some(opts))
                .await
                .map_err(self.err())?;
            if revision == 0 {
                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
            }
            let next = match resp.kvs().last() {
                Some(last) if resp.more() => {
                    let mut k = last.key().to_vec();
                    k.push(0);
                    Some(k)
                }
                _ => None,
            };
            each(resp.kvs().iter().map(kv_of).collect());
            match next {
                Some(k) => start = k,
                None => return Ok(revision),
            }
        }
    }

    pub async fn get(&self, key: &str) -> Result<Option<Kv>, StoreError> {
        let (mut kvs, _) = self.range(key, None).await?;
        Ok(kvs.pop())
    }

    async fn range(
        &self,
        key: &str,
        opts: Option<GetOptions>,
    ) -> Result<(Vec<Kv>, i64), StoreError> {
        let mut kv = self.kv();
        let resp = kv.get(key, opts).await.map_err(self.err())?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let kvs = resp.kvs().iter().map(kv_of).collect();
        Ok((kvs, revision))
    }

    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<i64, StoreError> {
        let mut kv = self.kv();
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        let resp = kv.put(key, value, opts).await.map_err(self.err())?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Writes many keys, in transactions of etcd's default maximum of 128 operations.
    /// Returns the revision of the last one (bulk loads, tools, benchmarks).
    pub async fn put_many(&self, kvs: Vec<(String, Vec<u8>)>) -> Result<i64, StoreError> {
        let mut kv = self.kv();
        let mut revision = 0;
        for chunk in kvs.chunks(128) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
                .collect();
            let resp = kv.txn(Txn::new().and_then(ops)).await.map_err(self.err())?;
            revision = resp.header().map(|h| h.revision()).unwrap_or(revision);
        }
        Ok(revision)
    }

    /// Creates `key` only if it does not exist (one transaction). Returns whether it did.
    pub async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut kv = self.kv();
        let put = match lease {
            Some(l) => TxnOp::put(key, value, Some(PutOptions::new().with_lease(l))),
            None => TxnOp::put(key, value, None),
        };
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([put]);
        Ok(kv.txn(txn).await.map_err(self.err())?.succeeded())
    }

    /// Replaces `key` only if its value is still `expected` (one transaction).
    pub async fn replace(
        &self,
        key: &str,
        expected: Vec<u8>,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<bool, StoreError> {
        let mut kv = self.kv();
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(
                key,
                value,
                lease.map(|l| PutOptions::new().with_lease(l)),
            )]);
        Ok(kv.txn(txn).await.map_err(self.err())?.succeeded())
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let mut kv = self.kv();
        kv.delete(key, None).await.map_err(self.err())?;
        Ok(())
    }

    /// Deletes `key` only if its value is still `expected`.
    pub async fn delete_if(&self, key: &str, expected: Vec<u8>) -> Result<bool, StoreError> {
        let mut kv = self.kv();
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(kv.txn(txn).await.map_err(self.err())?.succeeded())
    }

    /// Deletes `key` if it is still attached to `lease` (an orphan of this node).
    pub async fn delete_if_lease(&self, key: &str, lease: i64) -> Result<bool, StoreError> {
        let mut kv = self.kv();
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)]);
        Ok(kv.txn(txn).await.map_err(self.err())?.succeeded())
    }

    /// Creates a network and reserves its VNI in one transaction: fails (false) if either
    /// the name or the VNI is taken.
    pub async fn create_network(
        &self,
        name: &str,
        vni: u32,
        value: Vec<u8>,
    ) -> Result<bool, StoreError> {
        let net_key = self.layout.key(&Key::Network(name.to_owned()));
        let vni_key = self.layout.key(&Key::Vni(vni));
        let mut kv = self.kv();
        let txn = Txn::new()
            .when([
                Compare::create_revision(net_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(vni_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(net_key, value, None),
                TxnOp::put(vni_key, name, None),
            ]);
        Ok(kv.txn(txn).await.map_err(self.err())?.succeeded())
    }

    /// Creates a service and reserves its VIP:port/proto in one transaction: false if the
    /// name or the VIP:port/proto is taken.
    pub async fn create_service(
        &self,
        name: &str,
        record: &records::ServiceRecord,
    ) -> Result<bool, StoreError> {
        let svc_key = self.layout.key(&Key::Service(name.to_owned()));
        let vip_key = self.layout.key(&Key::ServiceVip(record.vip_id()));
        let mut kv = self.kv();
        let txn = Txn::new()
            .when([
                Compare::create_revision(svc_key.clone(), CompareOp::Equal, 0),
                Compare::create_revision(vip_key.clone(), CompareOp::Equal, 0),
            ])
            .and_then([
                TxnOp::put(svc_key, records::encode(record), None),
                TxnOp::put(vip_key, name, None),
            ]);
        Ok(kv.txn(txn).await.map_err(self.err())?.succeeded())
    }

    /// Deletes a service and its VIP reservation. False if it is absent.
    pub async fn delete_service(&self, name: &str) -> Result<bool, StoreError> {
        let svc_key = self.layout.key(&Key::Service(name.to_owned()));
        let Some(kv) = self.get(&svc_key).await? else {
            return Ok(false);
        };
        let mut ops = vec![TxnOp::delete(svc_key.clone(), None)];
        if let Ok(record) = records::decode::<records::ServiceRecord>(&kv.value) {
            ops.push(TxnOp::delete(
                self.layout.key(&Key::ServiceVip(record.vip_id())),
                None,
            ));
        }
        let mut client = self.kv();
        let txn = Txn::new()
            .when([Compare::value(svc_key, CompareOp::Equal, kv.value)])
            .and_then(ops);
        Ok(client.txn(txn).await.map_err(self.err())?.succeeded())
    }

    /// Deletes a network, its VNI reservation and its address blocks. False if it is absent.
    pub async fn delete_network(&self, name: &str) -> Result<bool, StoreError> {
        let net_key = self.layout.key(&Key::Network(name.to_owned()));
        let Some(kv) = self.get(&net_key).await? else {
            return Ok(false);
        };
        let mut ops = vec![
            TxnOp::delete(net_key.clone(), None),
            TxnOp::delete(
                self.layout.blocks(name),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ];
        if let Ok(record) = records::decode::<records::NetworkRecord>(&kv.value) {
            ops.push(TxnOp::delete(self.layout.key(&Key::Vni(record.vni)), None));
        }
        let mut client = self.kv();
        let txn = Txn::new()
            .when([Compare::value(net_key, CompareOp::Equal, kv.value)])
            .and_then(ops);
        Ok(client.txn(txn).await.map_err(self.err())?.succeeded())
    }

    /// Seconds left on a lease (-1 if it is gone).
    pub async fn lease_time_left(&self, id: i64) -> Result<i64, StoreError> {
        let mut lease = self.client.lease_client();
        Ok(lease
            .time_to_live(id, None)
            .await
            .map_err(self.err())?
            .ttl())
    }

    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, StoreError> {
        let mut lease = self.client.lease_client();
        Ok(lease.grant(ttl, None).await.map_err(self.err())?.id())
    }

    /// Renews a lease once; returns the remaining TTL (0 or less: the lease is gone).
    pub async fn keep_alive_once(&self, id: i64) -> Result<i64, StoreError> {
        let mut lease = self.client.lease_client();
        let (mut keeper, mut stream) = lease.keep_alive(id).await.map_err(self.err())?;
        keeper.keep_alive().await.map_err(self.err())?;
        match stream.message().await.map_err(self.err())? {
            Some(resp) => Ok(resp.ttl()),
            None => Ok(0),
        }
    }

    pub async fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        let mut lease = self.client.lease_client();
        lease.revoke(id).await.map_err(self.err())?;
        Ok(())
    }

    /// Watches `prefix` from `revision` (inclusive).
    pub async fn watch(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<(Watcher, WatchStream), StoreError> {
        let mut watch = self
            .client
            .watch_client()
            .max_decoding_message_size(MAX_MESSAGE);
        watch
            .watch(
                prefix,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision)
                        .with_progress_notify(),
                ),
            )
            .await
            .map_err(self.err())
    }
}

/// Converts a watch response's events.
/// Keys per page of a listing: at ~300 bytes per endpoint record, about 1.5 MB.
const LIST_PAGE: i64 = 5000;

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        lease: kv.lease(),
    }
}

/// The end of the key range of everything that starts with `prefix` (etcd's convention:
/// the prefix with its last byte below 0xff incremented; `\0` means "to the end").
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

pub fn changes(resp: &etcd_client::WatchResponse) -> Vec<Change> {
    resp.events()
        .iter()
        .filter_map(|ev| {
            let kv = ev.kv()?;
            Some(match ev.event_type() {
                etcd_client::EventType::Put => Change::Put(kv_of(kv)),
                etcd_client::EventType::Delete => {
                    Change::Delete(String::from_utf8_lossy(kv.key()).into_owned())
                }
            })
        })
        .collect()
}

fn tls_options(cfg: &EtcdConfig) -> Result<etcd_client::TlsOptions, StoreError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|source| StoreError::Tls {
            path: p.clone(),
            source,
        })
    };
    let mut tls = etcd_client::TlsOptions::new();
    if let Some(ca) = &cfg.cacert {
        tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read(ca)?));
    }
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        tls = tls.identity(etcd_client::Identity::from_pem(read(cert)?, read(key)?));
    }
    Ok(tls)
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_end_covers_exactly_the_prefix() {
        assert_eq!(prefix_end(b"/overlay/"), b"/overlay0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
    }
}
