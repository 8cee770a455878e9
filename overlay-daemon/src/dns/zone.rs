//! The names the cluster's state gives, per network: services (`<service>.<network>.<domain>`
//! → VIP, SRV `_<port>._<proto>.<service>.<network>.<domain>`), containers whose runtime
//! named them (`<pod>.<namespace>.<network>.<domain>`, `<name>.<network>.<domain>`), and PTR
//! records for all of them. A network's containers are answered only from their own
//! network: another network's names are NXDOMAIN to them, as are its addresses' PTR records.
//!
//! Networks and services are few and rebuilt whole when they change; containers are many
//! and each change to one updates only its own names (`set_endpoint`): at 100k endpoints a
//! rebuild per change would cost every node tens of milliseconds.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use hickory_proto::{
    op::Query,
    rr::{
        rdata::{A, AAAA, PTR, SOA, SRV},
        DNSClass, Name, RData, Record, RecordType,
    },
};
use ipnet::IpNet;
use tracing::debug;

use super::containers::{Containers, NetId, Now};
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

/// What DNS knows of one endpoint: its addresses, the name its runtime gave it (relative
/// to its network) if any, and whether it is on this host (only those ask).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointDns {
    pub addrs: Vec<IpAddr>,
    pub name: Option<String>,
    pub local: bool,
}

/// Names to addresses and back, with the names above them (empty non-terminals) counted so
/// "does anything live below this name" is one lookup.
#[derive(Debug, Default)]
struct Names {
    /// Lowercase absolute name → addresses.
    addrs: HashMap<Name, Vec<IpAddr>>,
    /// Address → the names it has.
    ptr: HashMap<IpAddr, Vec<Name>>,
}

impl Names {
    /// Adds `addrs` to `name`; true if the name is new.
    fn add(&mut self, name: &Name, addrs: &[IpAddr]) -> bool {
        for a in addrs {
            let names = self.ptr.entry(*a).or_default();
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let new = !self.addrs.contains_key(name);
        let held = self.addrs.entry(name.clone()).or_default();
        for a in addrs {
            if !held.contains(a) {
                held.push(*a);
            }
        }
        new
    }
}

/// One network's names.
#[derive(Debug)]
struct NetZone {
    /// Its key among the containers.
    id: NetId,
    /// `<network>.<domain>`, lowercase: its containers' names are below it.
    origin: Name,
    services: Names,
    /// Lowercase absolute SRV owner name → (port, target).
    srv: HashMap<Name, Vec<(u16, Name)>>,
    /// Names with services' names below them (other than the domain), with how many.
    above: HashMap<Name, usize>,
}

impl NetZone {
    /// Counts the names above `name` up to (not including) `domain`.
    fn count_above(&mut self, name: &Name, domain: &Name, delta: isize) {
        let mut n = name.base_name();
        while n.num_labels() > domain.num_labels() {
            let count = self.above.entry(n.clone()).or_default();
            *count = count.saturating_add_signed(delta);
            if *count == 0 {
                self.above.remove(&n);
            }
            n = n.base_name();
        }
    }
}

/// Everything answered from the cluster's state.
#[derive(Debug)]
pub struct Zone {
    domain: Name,
    networks: HashMap<String, NetZone>,
    /// The endpoints: who may ask (networks may overlap), and the names runtimes gave.
    containers: Containers,
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
            containers: Containers::default(),
            subnets: Vec::new(),
        }
    }

    /// The zone of `tables`' networks and services, without endpoints (`set_endpoint`).
    pub fn new(domain: Name, tables: &ValidTables) -> Self {
        let mut zone = Self::empty(domain);
        for (id, net) in tables.networks.values().enumerate() {
            zone.subnets.extend(net.subnet.map(IpNet::V4));
            zone.subnets.extend(net.subnet6.map(IpNet::V6));
            // A network whose name is no DNS name has no names (`set_endpoint` and
            // `set_services` skip them): its containers still ask for other names.
            let origin = valid_labels(&net.name)
                .then(|| Name::from_ascii(&net.name).and_then(|n| n.append_domain(&zone.domain)))
                .and_then(Result::ok)
                .unwrap_or_else(Name::root);
            zone.networks.insert(
                net.name.clone(),
                NetZone {
                    id: NetId::try_from(id).unwrap_or(NetId::MAX),
                    origin: origin.to_lowercase(),
                    services: Names::default(),
                    srv: HashMap::new(),
                    above: HashMap::new(),
                },
            );
        }
        zone.set_services(tables);
        zone
    }

    /// The zone of these tables (for tests: the daemon adds endpoints one by one); `names`:
    /// the container names runtimes gave, by (network, the endpoint's key address).
    #[cfg(test)]
    pub fn build(
        domain: Name,
        tables: &ValidTables,
        names: &std::collections::BTreeMap<(String, IpAddr), String>,
    ) -> Self {
        let mut zone = Self::new(domain, tables);
        for ep in &tables.endpoints {
            let addrs = ep
                .ip
                .map(IpAddr::V4)
                .into_iter()
                .chain(ep.ip6.map(IpAddr::V6))
                .collect();
            let name = names.get(&(ep.network.clone(), ep.key_ip())).cloned();
            let dns = EndpointDns {
                addrs,
                name,
                local: true,
            };
            zone.set_endpoint(&ep.network, ep.key_ip(), Some(dns));
        }
        zone
    }

    /// Replaces every network's services with `tables`' services.
    pub fn set_services(&mut self, tables: &ValidTables) {
        let domain = self.domain.clone();
        for net in self.networks.values_mut() {
            let old: Vec<Name> = net
                .services
                .addrs
                .keys()
                .chain(net.srv.keys())
                .cloned()
                .collect();
            for name in old {
                net.count_above(&name, &domain, -1);
            }
            net.services = Names::default();
            net.srv.clear();
        }
        for svc in &tables.services {
            let Some(network) = tables.network_of_vni(svc.vni) else {
                continue;
            };
            let Some(name) = self.name_in(&network, &svc.name) else {
                debug!(%network, service = %svc.name, "not a DNS name: not served");
                continue;
            };
            let Some(net) = self.networks.get_mut(&network) else {
                continue;
            };
            let proto = match svc.proto {
                Proto::Tcp => "_tcp",
                Proto::Udp => "_udp",
            };
            if let Ok(srv) = Name::from_ascii(format!("_{}.{proto}", svc.port))
                .and_then(|n| n.append_domain(&name))
            {
                if !net.srv.contains_key(&srv) {
                    net.count_above(&srv, &domain, 1);
                }
                let targets = net.srv.entry(srv).or_default();
                if !targets.contains(&(svc.port, name.clone())) {
                    targets.push((svc.port, name.clone()));
                }
            }
            if net.services.add(&name, &[svc.vip]) {
                net.count_above(&name, &domain, 1);
            }
        }
    }

    /// The endpoint (`network`, `key_ip`) is now `dns` (None: gone). Endpoints of networks
    /// the zone does not have are not kept.
    pub fn set_endpoint(&mut self, network: &str, key_ip: IpAddr, dns: Option<EndpointDns>) {
        let Some(net) = self.networks.get(network) else {
            return;
        };
        let now = dns.map(|dns| {
            let v6 = dns.addrs.iter().find_map(|a| match a {
                IpAddr::V6(v6) if *a != key_ip => Some(*v6),
                _ => None,
            });
            let name = dns.name.and_then(|label| {
                let ok = valid_labels(&label) && valid_labels(network);
                if !ok {
                    debug!(%network, name = %label, "not a DNS name: not served");
                }
                ok.then(|| Arc::from(label.to_ascii_lowercase()))
            });
            Now {
                v6,
                name,
                local: dns.local,
            }
        });
        self.containers.set(net.id, key_ip, now);
    }

    /// How many names (services and containers) the zone holds.
    pub fn len(&self) -> usize {
        let services: usize = self.networks.values().map(|n| n.services.addrs.len()).sum();
        services + self.containers.len()
    }

    /// Whether it holds no names.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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

    /// Whether `source` is an endpoint of `network`: the only ones it answers.
    pub fn asks(&self, network: &str, source: IpAddr) -> bool {
        self.networks
            .get(network)
            .is_some_and(|n| self.containers.asks(n.id, source))
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
            return self.reverse(network, ip, &qname, query.query_type());
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
        // A container's name: the labels before the network's origin (`<network>.<domain>`,
        // itself maybe dotted), none of them holding a dot of its own.
        let inner = net.origin.zone_of(&qname).then(|| {
            let below = (qname.num_labels() - net.origin.num_labels()) as usize;
            let labels: Vec<&[u8]> = qname.iter().take(below).collect();
            match labels.iter().any(|l| l.contains(&b'.')) {
                true => None,
                false => Some(
                    labels
                        .iter()
                        .map(|l| String::from_utf8_lossy(l))
                        .collect::<Vec<_>>()
                        .join("."),
                ),
            }
        });
        let inner = inner.flatten();
        // A service's name is the service's: a container named alike does not take it over.
        let addrs = match net.services.addrs.get(&qname) {
            Some(addrs) => Some(addrs.clone()),
            None => inner
                .as_deref()
                .filter(|i| !i.is_empty())
                .map(|i| self.containers.lookup(net.id, i))
                .filter(|a| !a.is_empty()),
        };
        if let Some(addrs) = addrs {
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
            || net.above.contains_key(&qname)
            || inner.is_some_and(|i| self.containers.has_below(net.id, &i))
            || (qname.zone_of(&net.origin) && self.containers.has_below(net.id, ""));
        match (exists, qtype) {
            (true, RecordType::SOA) if qname == self.domain => {
                Answer::Records(vec![self.soa.clone()])
            }
            (true, _) => Answer::Records(Vec::new()),
            (false, _) => Answer::NxDomain,
        }
    }

    /// PTR answers for `ip`: the names it has in `net` (container names that are also a
    /// service's name are the service's, not the container's).
    fn reverse(&self, network: &str, ip: IpAddr, qname: &Name, qtype: RecordType) -> Answer {
        let mut names: Vec<Name> = Vec::new();
        if let Some(n) = self.networks.get(network) {
            names.extend(n.services.ptr.get(&ip).into_iter().flatten().cloned());
            let container = self
                .containers
                .name_of(n.id, ip)
                .and_then(|label| self.name_in(network, label))
                .filter(|c| !n.services.addrs.contains_key(c));
            names.extend(container);
        }
        if names.is_empty() {
            let ours = self.subnets.iter().any(|s| s.contains(&ip))
                || self
                    .networks
                    .values()
                    .any(|n| n.services.ptr.contains_key(&ip) || self.containers.holds(n.id, ip));
            return match ours {
                true => Answer::NxDomain,
                false => Answer::Elsewhere,
            };
        }
        Answer::Records(match qtype {
            RecordType::PTR | RecordType::ANY => names
                .into_iter()
                .map(|n| Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(n))))
                .collect(),
            _ => Vec::new(),
        })
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
