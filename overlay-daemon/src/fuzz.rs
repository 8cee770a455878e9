//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) for what overlayd reads from
//! others: the API socket's request lines, the Docker plugin's calls, etcd's keys and values,
//! and the static tables file. Each runs the code the daemon runs on one input and panics
//! when an invariant breaks; plain `cargo test` replays the seed corpora and regression inputs
//! through the same functions. Not an API: hidden from docs.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Debug,
};

use overlay_api::{
    fuzz::{api_response, assert_one_line},
    labels::parse_service_label,
    ErrorKind, Response,
};
use serde::{de::DeserializeOwned, Serialize};

use crate::{
    api::parse_request,
    cnm::{self, Call, PoolId},
    store::{
        client::{Change, Kv},
        records::{
            self, BlockRecord, EndpointRecord, NetworkRecord, NodeRecord, ServiceRecord, Versioned,
            RECORD_VERSION,
        },
        ClusterView, Layout,
    },
    tables::{ClusterTables, EndpointIface, Subject, ValidTables},
};

/// Bytes of the API socket: every line as the daemon reads a request from it, and the whole
/// input as a client reads a response line.
pub fn api_request(data: &[u8]) {
    api_response(data);
    // The server reads lines of UTF-8 (anything else ends the connection).
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for line in text.split('\n') {
        let line = line.strip_suffix('\r').unwrap_or(line);
        match parse_request(line) {
            Ok(req) => {
                let again = serde_json::to_string(&req).expect("requests serialize");
                assert_eq!(parse_request(&again).as_ref(), Ok(&req), "{again}");
            }
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::Invalid);
                assert_one_line("API request", &e.message);
                let out = serde_json::to_string(&Response::failure(&e)).expect("serializes");
                assert!(!out.contains('\n'), "a response must be one line");
            }
        }
    }
}

/// A Docker plugin call: the request path on the first line, the body after it.
pub fn cnm_request(data: &[u8]) {
    let (method, body) = match data.iter().position(|b| *b == b'\n') {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &data[..0]),
    };
    let method = String::from_utf8_lossy(method);
    // The HTTP layer hands over only paths without spaces or control characters.
    if method.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return;
    }
    let call = match cnm::decode(&method, body) {
        Ok(call) => call,
        Err(reply) => {
            assert!([400, 404].contains(&reply.status), "{reply:?}");
            let msg = reply.body["Err"].as_str().expect("errors carry Err");
            assert_eq!(reply.body["Error"].as_str(), Some(msg));
            assert_one_line("Docker plugin reply", msg);
            return;
        }
    };
    assert_eq!(cnm::decode(&method, body).as_ref(), Ok(&call));
    let id = |id: &str| assert!(cnm::valid_id(id), "{id:?} passed as a Docker id");
    let pool = |p: &PoolId| assert_eq!(PoolId::parse(&p.to_string()).as_ref(), Ok(p));
    match &call {
        Call::Constant(v) => assert!(v.is_object()),
        Call::RequestPool(r) => {
            assert!(r.network.is_some() || r.subnet.is_some());
            assert!(r.subnet.is_none_or(|s| s == s.trunc()));
            assert!(r.network.as_ref().is_none_or(|n| !n.is_empty()));
        }
        Call::ReleasePool => {}
        Call::RequestAddress(r) => pool(&r.pool),
        Call::ReleaseAddress { pool: p, .. } => pool(p),
        Call::CreateNetwork(r) => id(&r.network_id),
        Call::DeleteNetwork { network_id } => id(network_id),
        Call::CreateEndpoint(r) => {
            id(&r.network_id);
            id(&r.endpoint_id);
            for l in &r.services {
                let (name, port) = parse_service_label(l).expect("only valid labels pass");
                assert_eq!(*l, format!("{name}:{port}"));
            }
        }
        Call::EndpointOperInfo { endpoint_id }
        | Call::DeleteEndpoint { endpoint_id }
        | Call::Leave { endpoint_id } => id(endpoint_id),
        Call::Join {
            network_id,
            endpoint_id,
            sandbox,
        } => {
            id(network_id);
            id(endpoint_id);
            assert!(sandbox.as_ref().is_none_or(|s| !s.as_os_str().is_empty()));
        }
    }
}

/// Decodes `data` as a record of kind `T`; what decodes has this daemon's version and is
/// written back as bytes that decode to the same record.
fn record<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + Versioned + PartialEq + Debug,
{
    match records::decode::<T>(data) {
        Ok(r) => {
            assert_eq!(r.version(), RECORD_VERSION);
            let again: T = records::decode(&records::encode(&r)).expect("written records decode");
            assert_eq!(again, r);
            Some(r)
        }
        Err(reason) => {
            assert!(!reason.is_empty());
            None
        }
    }
}

/// An etcd value, decoded as every kind of record the layout has.
pub fn etcd_record(data: &[u8]) {
    if let Some(n) = record::<NetworkRecord>(data) {
        let _ = n.gateway_ip();
    }
    record::<NodeRecord>(data);
    record::<BlockRecord>(data);
    record::<EndpointRecord>(data);
    if let Some(s) = record::<ServiceRecord>(data) {
        let _ = s.vip_id();
    }
}

/// The prefix the view fuzz target's keys live under.
const PREFIX: &str = "/overlay";

/// A watch history, one event per line: `P <key> <value>` (put), `D <key>` (delete), `L`
/// (list again: the view is rebuilt from what etcd holds), `T` (the reconciler takes the
/// changes). The view must skip what it cannot use, never panic, and end equal to a fresh
/// listing of what etcd holds then; its tables must validate.
pub fn etcd_view(data: &[u8]) {
    // Keys come from etcd as bytes, read lossily as the client does.
    let text = String::from_utf8_lossy(data);
    let layout = Layout::new(PREFIX);
    let mut view = ClusterView::new(layout.clone());
    let mut etcd: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let listing = |etcd: &BTreeMap<String, Vec<u8>>| -> Vec<Kv> {
        etcd.iter()
            .map(|(key, value)| Kv {
                key: key.clone(),
                value: value.clone(),
                lease: 7,
            })
            .collect()
    };
    view.reset(Vec::new());
    for line in text.lines() {
        let mut chars = line.chars();
        let op = chars.next();
        let rest = chars.as_str().strip_prefix(' ').unwrap_or(chars.as_str());
        match op {
            Some('P') => {
                let (key, value) = rest.split_once(' ').unwrap_or((rest, ""));
                etcd.insert(key.to_owned(), value.as_bytes().to_vec());
                view.apply(Change::Put(Kv {
                    key: key.to_owned(),
                    value: value.as_bytes().to_vec(),
                    lease: 7,
                }));
            }
            Some('D') => {
                etcd.remove(rest);
                view.apply(Change::Delete(rest.to_owned()));
            }
            Some('L') => view.reset(listing(&etcd)),
            Some('T') => {
                view.take_dirty();
            }
            _ => {}
        }
    }
    let mut fresh = ClusterView::new(layout);
    fresh.reset(listing(&etcd));
    assert_eq!(
        view.cluster_tables(),
        fresh.cluster_tables(),
        "the watched view differs from a fresh listing"
    );
    assert_eq!(view.rejected, fresh.rejected);
    for (key, reason) in &view.rejected {
        assert!(etcd.contains_key(key), "{key:?} rejected but not in etcd");
        assert!(!reason.is_empty());
    }
    assert_valid(&view.tables());
}

/// What validated tables promise the reconciler.
fn assert_valid(t: &ValidTables) {
    for r in &t.rejected {
        assert_one_line("rejection", &r.reason);
    }
    let mut vnis = BTreeSet::new();
    for (name, n) in &t.networks {
        assert_eq!(*name, n.name);
        assert!((1..=overlay_common::wire::VNI_MAX).contains(&n.vni));
        assert!(vnis.insert(n.vni), "VNI {} twice", n.vni);
        assert!(n.subnet.is_some() || n.subnet6.is_some());
        if let Some((subnet, gateway)) = n.subnet.zip(n.gateway_ip()) {
            assert!(subnet.contains(&gateway));
        }
    }
    let vteps: BTreeSet<_> = t.nodes.values().map(|n| n.vtep_ip).collect();
    assert_eq!(vteps.len(), t.nodes.len(), "a VTEP twice");
    let mut ips = BTreeSet::new();
    let mut macs = BTreeSet::new();
    for ep in &t.endpoints {
        let net = &t.networks[&ep.network];
        assert!(t.nodes.contains_key(&ep.node));
        match (ep.ip, net.subnet.zip(net.gateway_ip())) {
            (Some(ip), Some((subnet, gateway))) => assert!(subnet.contains(&ip) && ip != gateway),
            (None, None) => assert!(ep.ip6.is_some()),
            other => panic!("endpoint and network of different families: {other:?}"),
        }
        assert!(ep.mac().is_unicast());
        assert!(ips.insert((net.vni, ep.key_ip())) && macs.insert((net.vni, ep.mac())));
    }
    let mut names = BTreeSet::new();
    for s in &t.services {
        assert!(names.insert(&s.name));
        assert!(s.port != 0 && s.backends.iter().all(|b| b.port != 0 && b.weight >= 1));
        assert!(s
            .backends
            .windows(2)
            .all(|w| (w[0].ip, w[0].port) < (w[1].ip, w[1].port)));
        for b in &s.backends {
            assert!(t
                .endpoints
                .iter()
                .any(|e| (e.ip.map(std::net::IpAddr::V4) == Some(b.ip)
                    || e.ip6.map(std::net::IpAddr::V6) == Some(b.ip))
                    && e.iface != EndpointIface::Reserved));
        }
    }
}

/// The static tables file (`--tables`): parsed as the daemon loads it, written back and
/// parsed to the same tables, validated without losing an entry.
pub fn tables_file(data: &[u8]) {
    // The daemon reads the file as UTF-8 text: anything else fails there, with the path.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let tables = match ClusterTables::from_json(text) {
        Ok(t) => t,
        Err(e) => return assert_one_line("tables file", &e.to_string()),
    };
    let written = serde_json::to_string_pretty(&tables).expect("tables serialize");
    let again = ClusterTables::from_json(&written).expect("written tables parse");
    assert_eq!(again, tables);
    let counts = [
        tables.networks.len(),
        tables.nodes.len(),
        tables.endpoints.len(),
        tables.services.len(),
    ];
    let valid = tables.validate();
    assert_valid(&valid);
    let mut rejected = [0; 4];
    for r in &valid.rejected {
        rejected[match r.subject {
            Subject::Network(_) => 0,
            Subject::Node(_) => 1,
            Subject::Endpoint { .. } => 2,
            Subject::Service(_) => 3,
        }] += 1;
    }
    let kept = [
        valid.networks.len(),
        valid.nodes.len(),
        valid.endpoints.len(),
        valid.services.len(),
    ];
    for i in 0..4 {
        assert_eq!(kept[i] + rejected[i], counts[i], "an entry was lost");
    }
    // What passed passes again, unchanged.
    let kept_again = ClusterTables {
        networks: valid.networks.values().cloned().collect(),
        nodes: valid.nodes.values().cloned().collect(),
        endpoints: valid.endpoints.clone(),
        services: Vec::new(),
    }
    .validate();
    assert!(kept_again.rejected.is_empty(), "{:?}", kept_again.rejected);
    assert_eq!(kept_again.endpoints, valid.endpoints);
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_api::fuzz::replay;

    #[test]
    fn api_request_inputs_replay() {
        assert!(replay("api_request", api_request) > 0);
    }

    #[test]
    fn cnm_request_inputs_replay() {
        assert!(replay("cnm_request", cnm_request) > 0);
    }

    #[test]
    fn etcd_record_inputs_replay() {
        assert!(replay("etcd_record", etcd_record) > 0);
    }

    #[test]
    fn etcd_view_inputs_replay() {
        assert!(replay("etcd_view", etcd_view) > 0);
    }

    #[test]
    fn tables_file_inputs_replay() {
        assert!(replay("tables_file", tables_file) > 0);
    }
}
