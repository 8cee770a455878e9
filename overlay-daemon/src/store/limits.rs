//! The bandwidth limits endpoints' `endpointinfo/` records carry, by endpoint: what the
//! endpoint's own node enforces (`qdisc`, `OVL_SHAPED`). Kept beside the records, not in
//! them: an endpoint record must stay what the previous release writes (docs/upgrades.md).

use std::{collections::BTreeMap, net::IpAddr};

use overlay_api::Bandwidth;

use super::{names::container_tag, records::EndpointInfoRecord};

#[derive(Clone, Debug, Default)]
pub struct Limits(BTreeMap<(String, IpAddr), (u64, Bandwidth)>);

impl Limits {
    /// An `endpointinfo/` value put (`None`: one that did not decode). Whether the limits
    /// of the address changed.
    pub fn put(&mut self, network: &str, ip: IpAddr, info: Option<&EndpointInfoRecord>) -> bool {
        let id = (network.to_owned(), ip);
        let new = info.and_then(|i| Some((container_tag(&i.container_id), i.bandwidth?)));
        let old = match new {
            Some(v) => self.0.insert(id, v),
            None => self.0.remove(&id),
        };
        old != new
    }

    /// Whether the address had limits.
    pub fn remove(&mut self, network: &str, ip: IpAddr) -> bool {
        self.0.remove(&(network.to_owned(), ip)).is_some()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The limits of the endpoint (`network`, `ip`) if they are still its container's
    /// (`container`: the tag of the endpoint at that address now).
    pub fn get(&self, network: &str, ip: IpAddr, container: u64) -> Option<Bandwidth> {
        self.0
            .get(&(network.to_owned(), ip))
            .filter(|(tag, _)| *tag == container)
            .map(|(_, b)| *b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::records;

    fn info(container: &str, bw: &str) -> EndpointInfoRecord {
        records::decode(format!(r#"{{"version":1,"container_id":"{container}"{bw}}}"#).as_bytes())
            .unwrap()
    }

    #[test]
    fn limits_follow_their_container_and_say_when_they_change() {
        let mut limits = Limits::default();
        let ip: IpAddr = [198, 19, 1, 2].into();
        let limited = info("c1", r#","bandwidth":{"ingress":{"rate_bps":8000000}}"#);
        assert!(limits.put("red", ip, Some(&limited)));
        assert!(
            !limits.put("red", ip, Some(&limited)),
            "the same value again"
        );
        let bw = limits.get("red", ip, container_tag("c1")).unwrap();
        assert_eq!(bw.ingress.unwrap().rate_bps, 8_000_000);
        // A later container at the address does not inherit them (the key outlived its
        // endpoint).
        assert_eq!(limits.get("red", ip, container_tag("c2")), None);
        // Limits taken away, or a value that does not decode: none, and a change.
        assert!(limits.put("red", ip, Some(&info("c1", ""))));
        assert_eq!(limits.get("red", ip, container_tag("c1")), None);
        assert!(!limits.put("red", ip, None));
        assert!(limits.put("red", ip, Some(&limited)));
        assert!(limits.remove("red", ip));
        assert!(!limits.remove("red", ip));
    }
}
