//! The names runtimes gave endpoints (`endpointinfo/` keys), which DNS serves. A name is
//! kept with the container it names: an info key can outlive its endpoint (a 0.2 node
//! deletes only the record), and a later endpoint of the address must not answer to it.

use std::{collections::BTreeMap, net::IpAddr};

#[cfg(test)]
use super::records;
use super::records::EndpointInfoRecord;

/// A container id reduced to what tells two apart (FNV-1a: the same in every process).
pub fn container_tag(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// By (network, the endpoint's key address): the container's tag and its name relative to
/// the network.
#[derive(Clone, Debug, Default)]
pub struct Names(BTreeMap<(String, IpAddr), (u64, String)>);

impl Names {
    /// An `endpointinfo/` value put: its name (if it gives one) replaces what the key had.
    pub fn put(
        &mut self,
        network: &str,
        ip: IpAddr,
        decoded: Result<EndpointInfoRecord, String>,
    ) -> Result<(), String> {
        let id = (network.to_owned(), ip);
        match decoded {
            Ok(info) => {
                match info.dns_name() {
                    Some(name) => self.0.insert(id, (container_tag(&info.container_id), name)),
                    None => self.0.remove(&id),
                };
                Ok(())
            }
            Err(reason) => {
                self.0.remove(&id);
                Err(reason)
            }
        }
    }

    pub fn remove(&mut self, network: &str, ip: IpAddr) {
        self.0.remove(&(network.to_owned(), ip));
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// The name of the endpoint (`network`, `ip`) if it is still the named container's
    /// (`container`: the tag of the endpoint at that address now).
    pub fn get(&self, network: &str, ip: IpAddr, container: u64) -> Option<&str> {
        self.0
            .get(&(network.to_owned(), ip))
            .filter(|(tag, _)| *tag == container)
            .map(|(_, name)| name.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_served_only_while_its_container_holds_the_address() {
        let mut names = Names::default();
        let ip: IpAddr = [198, 19, 1, 2].into();
        names
            .put(
                "red",
                ip,
                records::decode(br#"{"version":1,"container_id":"c1","name":"web1"}"#),
            )
            .unwrap();
        assert_eq!(names.get("red", ip, container_tag("c1")), Some("web1"));
        // A later container at the address (the info key outlived its endpoint).
        assert_eq!(names.get("red", ip, container_tag("c2")), None);
        assert_eq!(names.get("green", ip, container_tag("c1")), None);
        // Dotted runtime names could pass for pods': not served.
        names
            .put(
                "red",
                ip,
                records::decode(br#"{"version":1,"container_id":"c1","name":"a.b"}"#),
            )
            .unwrap();
        assert_eq!(names.get("red", ip, container_tag("c1")), None);
        assert!(names.put("red", ip, records::decode(b"{not json")).is_err());
    }
}
