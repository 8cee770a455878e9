//! The names the cluster's state gives, per network: services (`<service>.<network>.<domain>`
//! → VIP, SRV `_<port>._<proto>.<service>.<network>.<domain>`), containers whose runtime
//! named them (`<pod>.<namespace>.<network>.<domain>`, `<name>.<network>.<domain>`), and PTR
//! records for all of them. A network's containers are answered only from their own
//! network: another network's names are NXDOMAIN to them, as are its addresses' PTR records.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    net::IpAddr,
};

use hickory_proto::{
    op::Query,
    rr::{
        rdata::{A, AAAA, PTR, SOA, SRV},
        DNSClass, Name, RData, Record, RecordType,
    },
};
use ipnet::IpNet;
use tracing::debug;

use crate::tables::{Proto, ValidTables};

/// TTL of every answer from the cluster's state: a removed service must be forgotten by
/// clients that cache soon after the servers forget it.
pub const TTL: u32 = 5;

/// What the zone says to a question.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// The name exists: these records (none: it has no records of that type).
    Records(Vec<Record>),
    /// Under the domain (or an overlay address's reverse name) and unknown to this network.
    NxDomain,
    /// Not the zone's: for the upstream resolvers.
    Elsewhere,
    /// A class other than IN under the domain: not told, nor asked upstream.
    Refused,
}

/// One network's names.
#[derive(Debug, Default)]
struct NetZone {
    /// Lowercase absolute name → addresses.
    addrs: HashMap<Name, Vec<IpAddr>>,
    /// Lowercase absolute SRV owner name → (port, target).
    srv: HashMap<Name, Vec<(u16, Name)>>,
    /// Address → the names it has.
    ptr: HashMap<IpAddr, Vec<Name>>,
}

/// Everything answered from the cluster's state, built anew when it changes.
#[derive(Debug)]
pub struct Zone {
    domain: Name,
    networks: HashMap<String, NetZone>,
    /// Who may ask: every endpoint address with its networks (networks may overlap).
    sources: HashMap<IpAddr, Vec<String>>,
    /// The overlay's own address space: reverse names there are never asked upstream.
    subnets: Vec<IpNet>,
    soa: Record,
}

impl Zone {
    /// An empty zone for `domain` (an absolute name, e.g. `overlay.internal.`).
    pub fn empty(domain: Name) -> Self {
        let domain = domain.to_lowercase();
        let soa = SOA::new(
            Name::from_ascii("ns")
                .and_then(|n| n.append_domain(&domain))
                .unwrap_or_else(|_| domain.clone()),
            Name::from_ascii("hostmaster")
                .and_then(|n| n.append_domain(&domain))
                .unwrap_or_else(|_| domain.clone()),
            1,
            TTL as i32,
            TTL as i32,
            TTL as i32,
            TTL,
        );
        Self {
            soa: Record::from_rdata(domain.clone(), TTL, RData::SOA(soa)),
            domain,
            networks: HashMap::new(),
            sources: HashMap::new(),
            subnets: Vec::new(),
        }
    }

    /// The zone of these tables; `names`: the container names runtimes gave, by (network,
    /// the endpoint's key address), as dotted labels relative to the network.
    pub fn build(
        domain: Name,
        tables: &ValidTables,
        names: &BTreeMap<(String, IpAddr), String>,
    ) -> Self {
        let mut zone = Self::empty(domain);
        let mut by_vni = HashMap::new();
        for net in tables.networks.values() {
            by_vni.insert(net.vni, net.name.clone());
            zone.subnets.extend(net.subnet.map(IpNet::V4));
            zone.subnets.extend(net.subnet6.map(IpNet::V6));
            zone.networks.entry(net.name.clone()).or_default();
        }
        let mut services = HashSet::new();
        for svc in &tables.services {
            let Some(network) = by_vni.get(&svc.vni).cloned() else {
                continue;
            };
            let Some(name) = zone.name_in(&network, &svc.name) else {
                debug!(%network, service = %svc.name, "not a DNS name: not served");
                continue;
            };
            let proto = match svc.proto {
                Proto::Tcp => "_tcp",
                Proto::Udp => "_udp",
            };
            let srv = Name::from_ascii(format!("_{}.{proto}", svc.port))
                .and_then(|n| n.append_domain(&name));
            if let (Ok(srv), Some(net)) = (srv, zone.networks.get_mut(&network)) {
                let targets = net.srv.entry(srv).or_default();
                if !targets.contains(&(svc.port, name.clone())) {
                    targets.push((svc.port, name.clone()));
                }
            }
            services.insert(name.clone());
            zone.add_addrs(&network, name, &[svc.vip]);
        }
        for ep in &tables.endpoints {
            let addrs: Vec<IpAddr> = ep
                .ip
                .map(IpAddr::V4)
                .into_iter()
                .chain(ep.ip6.map(IpAddr::V6))
                .collect();
            for a in &addrs {
                zone.sources.entry(*a).or_default().push(ep.network.clone());
            }
            let Some(label) = names.get(&(ep.network.clone(), ep.key_ip())) else {
                continue;
            };
            match zone.name_in(&ep.network, label) {
                // A service's name is the service's: a container does not take it over.
                Some(name) if services.contains(&name) => {
                    debug!(network = %ep.network, %name, "a container named as a service: not served")
                }
                Some(name) => zone.add_addrs(&ep.network, name, &addrs),
                None => debug!(network = %ep.network, name = %label, "not a DNS name: not served"),
            }
        }
        zone
    }

    /// `<label>.<network>.<domain>`, lowercase, if that is a valid name.
    fn name_in(&self, network: &str, label: &str) -> Option<Name> {
        if !valid_labels(label) || !valid_labels(network) {
            return None;
        }
        Name::from_ascii(format!("{label}.{network}"))
            .and_then(|n| n.append_domain(&self.domain))
            .ok()
            .map(|n| n.to_lowercase())
    }

    fn add_addrs(&mut self, network: &str, name: Name, addrs: &[IpAddr]) {
        let net = self.networks.entry(network.to_owned()).or_default();
        for a in addrs {
            let names = net.ptr.entry(*a).or_default();
            if !names.contains(&name) {
                names.push(name.clone());
            }
        }
        let held = net.addrs.entry(name).or_default();
        for a in addrs {
            if !held.contains(a) {
                held.push(*a);
            }
        }
    }

    /// Whether `source` is an endpoint of `network`: the only ones it answers.
    pub fn asks(&self, network: &str, source: IpAddr) -> bool {
        self.sources
            .get(&source)
            .is_some_and(|nets| nets.iter().any(|n| n == network))
    }

    /// The answer to `query` for a container of `network`.
    pub fn answer(&self, network: &str, query: &Query) -> Answer {
        let qname = query.name().to_lowercase();
        if query.query_class() != DNSClass::IN {
            return match self.domain.zone_of(&qname) || reverse_address(&qname).is_some() {
                true => Answer::Refused,
                false => Answer::Elsewhere,
            };
        }
        let net = self.networks.get(network);
        if let Some(ip) = reverse_address(&qname) {
            let ours = self.subnets.iter().any(|s| s.contains(&ip))
                || self.networks.values().any(|n| n.ptr.contains_key(&ip));
            let names = net.and_then(|n| n.ptr.get(&ip));
            return match (names, ours) {
                (Some(names), _) => Answer::Records(match query.query_type() {
                    RecordType::PTR | RecordType::ANY => names
                        .iter()
                        .map(|n| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(n.clone()))))
                        .collect(),
                    _ => Vec::new(),
                }),
                (None, true) => Answer::NxDomain,
                (None, false) => Answer::Elsewhere,
            };
        }
        if !self.domain.zone_of(&qname) {
            return Answer::Elsewhere;
        }
        let Some(net) = net else {
            return Answer::NxDomain;
        };
        let qtype = query.query_type();
        if let Some(targets) = net.srv.get(&qname) {
            return Answer::Records(match qtype {
                RecordType::SRV | RecordType::ANY => targets
                    .iter()
                    .map(|(port, target)| {
                        let srv = SRV::new(0, 100, *port, target.clone());
                        Record::from_rdata(qname.clone(), TTL, RData::SRV(srv))
                    })
                    .collect(),
                _ => Vec::new(),
            });
        }
        if let Some(addrs) = net.addrs.get(&qname) {
            let records = addrs
                .iter()
                .filter_map(|a| match (a, qtype) {
                    (IpAddr::V4(ip), RecordType::A | RecordType::ANY) => Some(RData::A(A(*ip))),
                    (IpAddr::V6(ip), RecordType::AAAA | RecordType::ANY) => {
                        Some(RData::AAAA(AAAA(*ip)))
                    }
                    _ => None,
                })
                .map(|data| Record::from_rdata(qname.clone(), TTL, data))
                .collect();
            return Answer::Records(records);
        }
        // The domain itself and the names above a network's names exist (empty
        // non-terminals): NODATA, not NXDOMAIN, so resolvers keep searching below them.
        let exists = qname == self.domain
            || net
                .addrs
                .keys()
                .chain(net.srv.keys())
                .any(|n| qname.zone_of(n));
        match (exists, qtype) {
            (true, RecordType::SOA) if qname == self.domain => {
                Answer::Records(vec![self.soa.clone()])
            }
            (true, _) => Answer::Records(Vec::new()),
            (false, _) => Answer::NxDomain,
        }
    }

    /// The SOA record negative answers carry (its minimum is the negative TTL).
    pub fn soa(&self) -> &Record {
        &self.soa
    }
}

/// DNS labels as runtimes' names must be to be served: letters, digits, hyphens (and
/// underscores, which Docker and podman allow in names), 1–63 bytes each, dot-separated.
pub fn valid_labels(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The address a reverse name (`in-addr.arpa`, `ip6.arpa`) names, if it names a whole one.
fn reverse_address(name: &Name) -> Option<IpAddr> {
    let labels: Vec<String> = name
        .iter()
        .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
        .collect();
    let n = labels.len();
    if n == 6 && labels[4] == "in-addr" && labels[5] == "arpa" {
        let mut octets = [0u8; 4];
        for (i, l) in labels[..4].iter().rev().enumerate() {
            octets[i] = l.parse().ok()?;
        }
        return Some(IpAddr::from(octets));
    }
    if n == 34 && labels[32] == "ip6" && labels[33] == "arpa" {
        let mut value: u128 = 0;
        for l in labels[..32].iter().rev() {
            let d = u8::from_str_radix(l, 16).ok().filter(|_| l.len() == 1)?;
            value = (value << 4) | u128::from(d);
        }
        return Some(IpAddr::V6(value.into()));
    }
    None
}

#[cfg(test)]
#[path = "zone_tests.rs"]
mod tests;
