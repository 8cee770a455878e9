//! A thin typed layer over etcd-client: connection options, leases, create-only
//! transactions, prefix listing and watching, each call failing over between the members
//! (`members`).
//!
//! Every call may be sent twice (its first answer lost with a member), so every write here
//! is safe to repeat: plain puts and deletes are; a conditional write also reads the key
//! when its condition fails and, if an earlier attempt of the same call may have been
//! applied, counts as done when the key already holds what it would have written (or, for
//! a delete, is gone). Without such an attempt an equal value is somebody else's: two
//! Docker reservations of one address write the same record, and the second must fail.

use std::{sync::Arc, time::Duration};

use etcd_client::{
    Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnOpResponse, TxnResponse, WatchOptions, WatchStream, Watcher,
};

pub use super::config::EtcdConfig;
use super::{
    error::StoreError,
    keys::Layout,
    members::{Members, Retry},
};

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
    members: Arc<Members>,
    pub layout: Layout,
}

fn kv(c: &etcd_client::Client) -> etcd_client::KvClient {
    c.kv_client().max_decoding_message_size(MAX_MESSAGE)
}

/// Why `create_all` created nothing.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// These keys (by index) exist.
    Taken(Vec<usize>),
    /// The guard key does not exist (the endpoint's network was removed).
    GuardGone,
}

/// What a failed conditional transaction read in its else branch (`TxnOp::get`s), in order.
pub(super) fn read_back_all(resp: &TxnResponse) -> Vec<Option<KeyValue>> {
    resp.op_responses()
        .into_iter()
        .filter_map(|op| match op {
            TxnOpResponse::Get(get) => Some(get.kvs().first().cloned()),
            _ => None,
        })
        .collect()
}

pub(super) fn read_back(resp: &TxnResponse) -> Option<KeyValue> {
    read_back_all(resp).into_iter().flatten().next()
}

/// Whether a failed conditional write finds its own value (and lease) already in place.
fn holds(resp: &TxnResponse, value: &[u8], lease: Option<i64>) -> bool {
    read_back(resp).is_some_and(|kv| kv.value() == value && kv.lease() == lease.unwrap_or(0))
}

fn put_op(key: &str, value: Vec<u8>, lease: Option<i64>) -> TxnOp {
    TxnOp::put(key, value, lease.map(|l| PutOptions::new().with_lease(l)))
}

impl Store {
    /// Sets up a client per member and waits until one of them answers a read of the
    /// overlay's prefix (which also proves the credentials and the role's access).
    pub async fn connect(cfg: &EtcdConfig) -> Result<Self, StoreError> {
        cfg.check()?;
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            // A watch on a member cut off the network (no RST ever comes) is noticed within
            // about 4 s and re-made on another member.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            // A member cut off from the leader refuses at once (and ends its watches)
            // instead of serving stale reads: the call moves to another member.
            .with_require_leader(true);
        if cfg.cacert.is_some() || cfg.cert.is_some() {
            opts = opts.with_tls(cfg.tls_options()?);
        }
        let store = Self {
            members: Arc::new(Members::new(cfg, opts)),
            layout: Layout::new(&cfg.prefix),
        };
        let root = store.layout.root().to_owned();
        store
            .members
            .run(|c| {
                let (root, end) = (root.clone(), prefix_end(root.as_bytes()));
                async move {
                    let opts = GetOptions::new().with_range(end).with_count_only();
                    kv(&c).get(root, Some(opts)).await.map(|_| ())
                }
            })
            .await?;
        Ok(store)
    }

    /// The members' client URLs, comma separated.
    pub fn endpoints(&self) -> String {
        self.members.endpoints()
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
    /// pages never holds the whole listing. Returns the listing's revision. A page may come
    /// from another member than the one before (read at the same revision).
    pub async fn list_pages(
        &self,
        prefix: &str,
        mut each: impl FnMut(Vec<Kv>),
    ) -> Result<i64, StoreError> {
        let end = prefix_end(prefix.as_bytes());
        let mut start = prefix.as_bytes().to_vec();
        let mut revision = 0;
        loop {
            let resp = self
                .members
                .run(|c| {
                    let (start, end) = (start.clone(), end.clone());
                    async move {
                        let mut opts = GetOptions::new().with_range(end).with_limit(LIST_PAGE);
                        if revision > 0 {
                            opts = opts.with_revision(revision);
                        }
                        kv(&c).get(start, Some(opts)).await
                    }
                })
                .await?;
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
        let resp = self
            .members
            .run(|c| {
                let key = key.to_owned();
                async move { kv(&c).get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().map(kv_of))
    }

    pub async fn put(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<i64, StoreError> {
        let resp = self
            .members
            .run(|c| {
                let (key, value) = (key.to_owned(), value.clone());
                let opts = lease.map(|l| PutOptions::new().with_lease(l));
                async move { kv(&c).put(key, value, opts).await }
            })
            .await?;
        Ok(resp.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// Writes many keys, in transactions of etcd's default maximum of 128 operations.
    /// Returns the revision of the last one (bulk loads, tools, benchmarks).
    pub async fn put_many(&self, kvs: Vec<(String, Vec<u8>)>) -> Result<i64, StoreError> {
        let mut revision = 0;
        for chunk in kvs.chunks(128) {
            let ops: Vec<TxnOp> = chunk
                .iter()
                .map(|(k, v)| TxnOp::put(k.as_str(), v.clone(), None))
                .collect();
            revision = self
                .txn(Txn::new().and_then(ops))
                .await?
                .header()
                .map(|h| h.revision())
                .unwrap_or(revision);
        }
        Ok(revision)
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, StoreError> {
        Ok(self.conditional(txn).await?.0)
    }

    /// A conditional transaction, and whether an earlier attempt of it may have been applied
    /// (then a failed condition may be its own doing).
    pub(super) async fn conditional(&self, txn: Txn) -> Result<(TxnResponse, Retry), StoreError> {
        self.members
            .run_within(super::members::ATTEMPT, |c, retry| {
                let txn = txn.clone();
                async move { kv(&c).txn(txn).await.map(|r| (r, retry)) }
            })
            .await
    }

    /// Creates `key` only if it does not exist (one transaction). Returns whether the key
    /// now holds `value` under `lease` because of this call.
    pub async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([put_op(key, value.clone(), lease)])
            .or_else([TxnOp::get(key, None)]);
        let (resp, retry) = self.conditional(txn).await?;
        Ok(resp.succeeded() || (retry.maybe_applied && holds(&resp, &value, lease)))
    }

    /// Creates every key of `kvs` under `lease` in one transaction, only if none exists and
    /// `guard` does (an endpoint's keys are created only while its network's record is
    /// there: `network rm` and an endpoint's creation cannot both succeed).
    pub async fn create_all(
        &self,
        kvs: &[(String, Vec<u8>)],
        lease: Option<i64>,
        guard: &str,
    ) -> Result<Result<(), Refused>, StoreError> {
        let mut when: Vec<Compare> = kvs
            .iter()
            .map(|(k, _)| Compare::create_revision(k.clone(), CompareOp::Equal, 0))
            .collect();
        when.push(Compare::create_revision(guard, CompareOp::Greater, 0));
        let mut or_else: Vec<TxnOp> = kvs
            .iter()
            .map(|(k, _)| TxnOp::get(k.clone(), None))
            .collect();
        or_else.push(TxnOp::get(guard, None));
        let txn = Txn::new()
            .when(when)
            .and_then(
                kvs.iter()
                    .map(|(k, v)| put_op(k, v.clone(), lease))
                    .collect::<Vec<_>>(),
            )
            .or_else(or_else);
        let (resp, retry) = self.conditional(txn).await?;
        if resp.succeeded() {
            return Ok(Ok(()));
        }
        let mut found = read_back_all(&resp);
        let guard_there = found.pop().flatten().is_some();
        let ours = |(kv, (_, v)): (&Option<KeyValue>, &(String, Vec<u8>))| {
            kv.as_ref()
                .is_some_and(|kv| kv.value() == v.as_slice() && kv.lease() == lease.unwrap_or(0))
        };
        // An earlier attempt that may have been applied finds all of its own values there.
        if retry.maybe_applied && found.iter().zip(kvs).all(ours) {
            return Ok(Ok(()));
        }
        if !guard_there {
            return Ok(Err(Refused::GuardGone));
        }
        Ok(Err(Refused::Taken(
            found
                .iter()
                .enumerate()
                .filter(|(_, kv)| kv.is_some())
                .map(|(i, _)| i)
                .collect(),
        )))
    }

    /// Replaces `key` only if its value is still `expected` (one transaction).
    pub async fn replace(
        &self,
        key: &str,
        expected: Vec<u8>,
        value: Vec<u8>,
        lease: Option<i64>,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([put_op(key, value.clone(), lease)])
            .or_else([TxnOp::get(key, None)]);
        let (resp, retry) = self.conditional(txn).await?;
        Ok(resp.succeeded() || (retry.maybe_applied && holds(&resp, &value, lease)))
    }

    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.members
            .run(|c| {
                let key = key.to_owned();
                async move { kv(&c).delete(key, None).await }
            })
            .await?;
        Ok(())
    }

    /// Deletes `key` only if its value is still `expected`. True when deleted (or gone after
    /// an attempt that may have deleted it).
    pub async fn delete_if(&self, key: &str, expected: Vec<u8>) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::value(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let (resp, retry) = self.conditional(txn).await?;
        Ok(resp.succeeded() || (retry.maybe_applied && read_back(&resp).is_none()))
    }

    /// Deletes every key of `kvs` in one transaction if each still holds its value. True when
    /// deleted (or all gone after an attempt that may have deleted them).
    pub async fn delete_all_if(&self, kvs: &[(String, Vec<u8>)]) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when(
                kvs.iter()
                    .map(|(k, v)| Compare::value(k.clone(), CompareOp::Equal, v.clone()))
                    .collect::<Vec<_>>(),
            )
            .and_then(
                kvs.iter()
                    .map(|(k, _)| TxnOp::delete(k.clone(), None))
                    .collect::<Vec<_>>(),
            )
            .or_else(
                kvs.iter()
                    .map(|(k, _)| TxnOp::get(k.clone(), None))
                    .collect::<Vec<_>>(),
            );
        let (resp, retry) = self.conditional(txn).await?;
        Ok(resp.succeeded()
            || (retry.maybe_applied && read_back_all(&resp).iter().all(Option::is_none)))
    }

    /// Deletes `key` if it is still attached to `lease` (an orphan of this node). True when
    /// deleted (or gone after an attempt that may have deleted it).
    pub async fn delete_if_lease(&self, key: &str, lease: i64) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::lease(key, CompareOp::Equal, lease)])
            .and_then([TxnOp::delete(key, None)])
            .or_else([TxnOp::get(key, None)]);
        let (resp, retry) = self.conditional(txn).await?;
        Ok(resp.succeeded() || (retry.maybe_applied && read_back(&resp).is_none()))
    }

    /// Seconds left on a lease (-1 if it is gone).
    pub async fn lease_time_left(&self, id: i64) -> Result<i64, StoreError> {
        let resp = self
            .members
            .run(|c| async move { c.lease_client().time_to_live(id, None).await })
            .await?;
        Ok(resp.ttl())
    }

    /// A new lease. Repeated after a lost answer, it grants a second one; the first
    /// expires unused.
    pub async fn grant_lease(&self, ttl: i64) -> Result<i64, StoreError> {
        let resp = self
            .members
            .run(|c| async move { c.lease_client().grant(ttl, None).await })
            .await?;
        Ok(resp.id())
    }

    /// Renews a lease once; returns the remaining TTL (0 or less: the lease is gone).
    pub async fn keep_alive_once(&self, id: i64) -> Result<i64, StoreError> {
        // A healthy member answers in milliseconds; one cut off is left after 2 s, so a
        // renewal every TTL/3 still lands before the lease runs out.
        self.members
            .run_within(Duration::from_secs(2), |c, _| async move {
                let (mut keeper, mut stream) = c.lease_client().keep_alive(id).await?;
                keeper.keep_alive().await?;
                Ok(stream.message().await?.map_or(0, |r| r.ttl()))
            })
            .await
    }

    /// Revokes a lease; one that is gone already (an earlier attempt revoked it, or it
    /// expired) is not an error.
    pub async fn revoke_lease(&self, id: i64) -> Result<(), StoreError> {
        self.members
            .run(|c| async move {
                match c.lease_client().revoke(id).await {
                    Err(etcd_client::Error::GRpcStatus(s)) if s.code() == tonic::Code::NotFound => {
                        Ok(())
                    }
                    other => other.map(|_| ()),
                }
            })
            .await
    }

    /// Watches `prefix` from `revision` (inclusive), on a member that answers.
    pub async fn watch(
        &self,
        prefix: &str,
        revision: i64,
    ) -> Result<(Watcher, WatchStream), StoreError> {
        self.members
            .run(|c| {
                let prefix = prefix.to_owned();
                async move {
                    let opts = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision)
                        .with_progress_notify();
                    c.watch_client()
                        .max_decoding_message_size(MAX_MESSAGE)
                        .watch(prefix, Some(opts))
                        .await
                }
            })
            .await
    }
}

/// Keys per page of a listing: at ~300 bytes per endpoint record, about 1.5 MB.
const LIST_PAGE: i64 = 5000;

/// One key and value, of a listing or a watch event.
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
