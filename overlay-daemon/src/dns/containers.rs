//! The containers' part of the zone, kept compact: every node holds every endpoint of the
//! cluster (its addresses are who may ask, its name what is answered), so at 100k endpoints
//! an endpoint must cost tens of bytes here. Names are kept relative to their network
//! (`web-0.shop`) and turned into DNS names only when answered.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

/// A network, by its place in the zone's list.
pub type NetId = u16;

/// What the zone is told of an endpoint.
#[derive(Debug)]
pub struct Now {
    /// The IPv6 address of a dual-stack endpoint (keyed by its IPv4 one).
    pub v6: Option<Ipv6Addr>,
    /// Its name relative to its network, lowercase.
    pub name: Option<Arc<str>>,
    /// Whether it is on this host: only those ask (the datapath hands over nothing else).
    pub local: bool,
}

/// The key addresses of the endpoints with one name: nearly always one, kept inline.
#[derive(Debug)]
enum Keys {
    One(IpAddr),
    Many(Vec<IpAddr>),
}

impl Keys {
    fn as_slice(&self) -> &[IpAddr] {
        match self {
            Keys::One(k) => std::slice::from_ref(k),
            Keys::Many(v) => v,
        }
    }
}

#[derive(Debug, Default)]
pub struct Containers {
    /// Local endpoints and named ones (an unnamed endpoint elsewhere costs nothing here).
    endpoints: HashMap<(NetId, IpAddr), Now>,
    /// Dual-stack endpoints' IPv6 addresses → their key address.
    v6: HashMap<(NetId, Ipv6Addr), IpAddr>,
    /// A name → the key addresses of the endpoints that have it (containers on two hosts
    /// may share a name).
    names: HashMap<(NetId, Arc<str>), Keys>,
    /// Names with names below them (`shop` for `web-0.shop`), with how many.
    above: HashMap<(NetId, Arc<str>), u32>,
    /// Names per network.
    named: HashMap<NetId, usize>,
}

impl Containers {
    /// The endpoint (`net`, `key`) now has these addresses beyond its key (an IPv6 one) and
    /// this name, or is gone (None).
    pub fn set(&mut self, net: NetId, key: IpAddr, now: Option<Now>) {
        if let Some(old) = self.endpoints.remove(&(net, key)) {
            // Unless another endpoint has claimed the address since.
            if let Some(v6) = old.v6.filter(|v6| self.v6.get(&(net, *v6)) == Some(&key)) {
                self.v6.remove(&(net, v6));
            }
            if let Some(name) = old.name {
                self.unname(net, key, name);
            }
        }
        let Some(now) = now.filter(|n| n.local || n.name.is_some()) else {
            return;
        };
        if let Some(v6) = now.v6 {
            self.v6.insert((net, v6), key);
        }
        if let Some(name) = &now.name {
            match self.names.get_mut(&(net, name.clone())) {
                Some(Keys::Many(keys)) => keys.push(key),
                Some(one @ Keys::One(_)) => {
                    let first = one.as_slice()[0];
                    *one = Keys::Many(vec![first, key]);
                }
                None => {
                    self.names.insert((net, name.clone()), Keys::One(key));
                    *self.named.entry(net).or_default() += 1;
                    for parent in parents(name) {
                        *self.above.entry((net, parent.into())).or_default() += 1;
                    }
                }
            }
        }
        self.endpoints.insert((net, key), now);
    }

    fn unname(&mut self, net: NetId, key: IpAddr, name: Arc<str>) {
        let id = (net, name);
        let rest: Vec<IpAddr> = match self.names.get(&id) {
            Some(keys) => keys
                .as_slice()
                .iter()
                .copied()
                .filter(|k| *k != key)
                .collect(),
            None => return,
        };
        match rest.as_slice() {
            [] => {}
            [one] => {
                self.names.insert(id, Keys::One(*one));
                return;
            }
            _ => {
                self.names.insert(id, Keys::Many(rest));
                return;
            }
        }
        self.names.remove(&id);
        if let Some(n) = self.named.get_mut(&net) {
            *n -= 1;
            if *n == 0 {
                self.named.remove(&net);
            }
        }
        for parent in parents(&id.1) {
            let pid = (net, Arc::from(parent));
            if let Some(c) = self.above.get_mut(&pid) {
                *c -= 1;
                if *c == 0 {
                    self.above.remove(&pid);
                }
            }
        }
    }

    /// Whether `src` is an address of an endpoint of `net` on this host.
    pub fn asks(&self, net: NetId, src: IpAddr) -> bool {
        self.key_of(net, src)
            .and_then(|k| self.endpoints.get(&(net, k)))
            .is_some_and(|e| e.local)
    }

    /// Whether `ip` is an address of a named or local endpoint of `net`.
    pub fn holds(&self, net: NetId, ip: IpAddr) -> bool {
        self.key_of(net, ip).is_some()
    }

    fn key_of(&self, net: NetId, ip: IpAddr) -> Option<IpAddr> {
        if self.endpoints.contains_key(&(net, ip)) {
            return Some(ip);
        }
        match ip {
            IpAddr::V6(v6) => self.v6.get(&(net, v6)).copied(),
            IpAddr::V4(_) => None,
        }
    }

    /// The addresses of the endpoints named `name` (relative, lowercase) in `net`.
    pub fn lookup(&self, net: NetId, name: &str) -> Vec<IpAddr> {
        let Some(keys) = self.names.get(&(net, Arc::from(name))) else {
            return Vec::new();
        };
        keys.as_slice()
            .iter()
            .flat_map(|k| {
                let v6 = self.endpoints.get(&(net, *k)).and_then(|h| h.v6);
                std::iter::once(*k).chain(v6.map(IpAddr::V6))
            })
            .collect()
    }

    /// Whether names lie below `name` in `net` (below the network itself: `name` empty).
    pub fn has_below(&self, net: NetId, name: &str) -> bool {
        match name.is_empty() {
            true => self.named.contains_key(&net),
            false => self.above.contains_key(&(net, Arc::from(name))),
        }
    }

    /// The name of the endpoint with address `ip` in `net`.
    pub fn name_of(&self, net: NetId, ip: IpAddr) -> Option<&str> {
        let key = self.key_of(net, ip)?;
        self.endpoints.get(&(net, key))?.name.as_deref()
    }

    /// How many names.
    pub fn len(&self) -> usize {
        self.names.len()
    }
}

/// The names above `name` within its network: `b.c` and `c` for `a.b.c`.
fn parents(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map(move |(i, _)| &name[i + 1..])
}
