//! Networks and services: each created with its reservations (VNI; VIP:port/proto and an
//! allocated VIP's address) and removed with them (a network with its blocks), in one
//! transaction each, so two operators, or an operator and a node, cannot race past each
//! other's checks. A network's services outlive it (the daemons reject them, with the
//! reason, until they are removed or the network is created again).

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::{
    client::{read_back, read_back_all},
    keys::Key,
    records, Store, StoreError,
};

/// What `delete_network` did.
#[derive(Debug, PartialEq, Eq)]
pub enum NetworkRemoval {
    Removed,
    Absent,
    /// Refused: the network has this many endpoints.
    HasEndpoints(usize),
    /// Refused: the record changed since it was read.
    Changed,
}

impl Store {
    /// Creates `key` and each of `reserved` (holding `owner`) in one transaction, only if
    /// none exists and `guard` (if any) does: true when created (or found as this call
    /// made them after an attempt that may have applied).
    async fn create_reserved(
        &self,
        key: String,
        value: Vec<u8>,
        reserved: Vec<String>,
        owner: &str,
        guard: Option<String>,
    ) -> Result<bool, StoreError> {
        let mut when = vec![Compare::create_revision(key.clone(), CompareOp::Equal, 0)];
        when.extend(
            reserved
                .iter()
                .map(|r| Compare::create_revision(r.clone(), CompareOp::Equal, 0)),
        );
        when.extend(guard.map(|g| Compare::create_revision(g, CompareOp::Greater, 0)));
        let mut puts = vec![TxnOp::put(key.clone(), value.clone(), None)];
        puts.extend(reserved.iter().map(|r| TxnOp::put(r.clone(), owner, None)));
        let mut gets = vec![TxnOp::get(key, None)];
        gets.extend(reserved.iter().map(|r| TxnOp::get(r.clone(), None)));
        let txn = Txn::new().when(when).and_then(puts).or_else(gets);
        let (resp, retry) = self.conditional(txn).await?;
        if resp.succeeded() {
            return Ok(true);
        }
        if !retry.maybe_applied {
            return Ok(false);
        }
        let got: Vec<Option<Vec<u8>>> = read_back_all(&resp)
            .into_iter()
            .map(|kv| kv.map(|kv| kv.value().to_vec()))
            .collect();
        let mut wanted = vec![Some(value)];
        wanted.extend(reserved.iter().map(|_| Some(owner.as_bytes().to_vec())));
        Ok(got == wanted)
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
        self.create_reserved(net_key, value, vec![vni_key], name, None)
            .await
    }

    /// Creates a service and reserves its VIP:port/proto (and, for an allocated VIP, the
    /// address) in one transaction, while its network exists: false if the name or a
    /// reservation is taken, or the network is gone.
    pub async fn create_service(
        &self,
        name: &str,
        record: &records::ServiceRecord,
    ) -> Result<bool, StoreError> {
        let svc_key = self.layout.key(&Key::Service(name.to_owned()));
        let mut reserved = vec![self.layout.key(&Key::ServiceVip(record.vip_id()))];
        if record.allocated {
            reserved.push(self.layout.key(&Key::ServiceVip(record.vip_address_id())));
        }
        let net_key = self.layout.key(&Key::Network(record.network.clone()));
        self.create_reserved(
            svc_key,
            records::encode(record),
            reserved,
            name,
            Some(net_key),
        )
        .await
    }

    /// Deletes `key` (holding `value`) and the other keys of `ops` in one transaction, if
    /// `key` still holds `value`; true when deleted (or gone after an attempt that may have
    /// deleted it).
    async fn delete_with(
        &self,
        key: String,
        value: Vec<u8>,
        ops: Vec<TxnOp>,
    ) -> Result<bool, StoreError> {
        let txn = Txn::new()
            .when([Compare::value(key.clone(), CompareOp::Equal, value)])
            .and_then(ops)
            .or_else([TxnOp::get(key, None)]);
        let (resp, retry) = self.conditional(txn).await?;
        Ok(resp.succeeded() || (retry.maybe_applied && read_back(&resp).is_none()))
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
            if record.allocated {
                ops.push(TxnOp::delete(
                    self.layout.key(&Key::ServiceVip(record.vip_address_id())),
                    None,
                ));
            }
        }
        self.delete_with(svc_key, kv.value, ops).await
    }

    /// Deletes a network, its VNI reservation and its address blocks, in one transaction
    /// that holds only while the network has no endpoint: an endpoint created after any
    /// check the caller made refuses the removal here.
    pub async fn delete_network(&self, name: &str) -> Result<NetworkRemoval, StoreError> {
        let net_key = self.layout.key(&Key::Network(name.to_owned()));
        let Some(kv) = self.get(&net_key).await? else {
            return Ok(NetworkRemoval::Absent);
        };
        let endpoints = self.layout.endpoints(name);
        let mut ops = vec![
            TxnOp::delete(net_key.clone(), None),
            TxnOp::delete(
                self.layout.blocks(name),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
            // IPv6 claims a 0.2 node left behind (it does not know them).
            TxnOp::delete(
                self.layout.endpoints6(name),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            ),
        ];
        if let Ok(record) = records::decode::<records::NetworkRecord>(&kv.value) {
            ops.push(TxnOp::delete(self.layout.key(&Key::Vni(record.vni)), None));
        }
        // Over a range, etcd compares every key in it, and an empty range as one key that
        // does not exist: "no endpoint" is a creation revision of 0 over the prefix.
        let txn = Txn::new()
            .when([
                Compare::value(net_key.clone(), CompareOp::Equal, kv.value),
                Compare::create_revision(endpoints.clone(), CompareOp::Equal, 0).with_prefix(),
            ])
            .and_then(ops)
            .or_else([
                TxnOp::get(net_key, None),
                TxnOp::get(
                    endpoints,
                    Some(
                        etcd_client::GetOptions::new()
                            .with_prefix()
                            .with_count_only(),
                    ),
                ),
            ]);
        let (resp, retry) = self.conditional(txn).await?;
        if resp.succeeded() {
            return Ok(NetworkRemoval::Removed);
        }
        let responses = resp.op_responses();
        let (net, endpoints) = match responses.as_slice() {
            [TxnOpResponse::Get(net), TxnOpResponse::Get(eps)] => {
                (!net.kvs().is_empty(), eps.count())
            }
            _ => (true, 0),
        };
        Ok(match (net, endpoints) {
            (_, n) if n > 0 => NetworkRemoval::HasEndpoints(n as usize),
            // Gone: removed by an earlier attempt of this call, or by someone else.
            (false, _) if retry.maybe_applied => NetworkRemoval::Removed,
            (false, _) => NetworkRemoval::Absent,
            // Replaced by another record since read: read again.
            (true, _) => NetworkRemoval::Changed,
        })
    }
}
