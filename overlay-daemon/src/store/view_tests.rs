use super::*;
use crate::tables::MacAddr;

fn kv(key: &str, value: &str) -> Kv {
    Kv {
        key: key.into(),
        value: value.as_bytes().to_vec(),
        lease: 7,
    }
}

#[test]
fn garbage_is_skipped_and_good_entries_kept() {
    let mut v = ClusterView::new(Layout::new("/overlay"));
    v.reset(vec![
        kv("/overlay/v1/networks/red", r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#),
        kv("/overlay/v1/networks/bad", "garbage"),
        kv("/overlay/v1/nodes/a", r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":0}"#),
        kv("/overlay/v1/nodes/b", r#"{"version":9,"vtep_ip":"198.18.0.2"}"#),
        kv("/overlay/v1/endpoints/red/198.19.1.2", r#"{"version":1,"mac":"0a:58:c6:13:01:02","node":"a","container_id":"c1","host_ifname":"ovl1"}"#),
        kv("/overlay/v1/endpoints/red/198.19.1.3", r#"{"version":1,"mac":"0a:58:c6:13:01:03","node":"b","container_id":"c2","host_ifname":"ovl2"}"#),
        kv("/overlay/v1/whatever", "x"),
    ]);
    assert_eq!(v.rejected.len(), 3, "{:?}", v.rejected);
    let t = v.tables();
    assert_eq!(t.networks.len(), 1);
    assert_eq!(t.nodes.len(), 1);
    // The endpoint of node b (whose record was unreadable) is not installed.
    assert_eq!(t.endpoints.len(), 1);
    assert_eq!(
        t.endpoints[0].mac,
        Some(MacAddr([0x0a, 0x58, 198, 19, 1, 2]))
    );
}

#[test]
fn watch_events_update_and_remove() {
    let mut v = ClusterView::new(Layout::new("/overlay"));
    v.apply(Change::Put(kv(
        "/overlay/v1/networks/red",
        r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#,
    )));
    assert_eq!(v.tables().networks.len(), 1);
    v.apply(Change::Put(kv("/overlay/v1/networks/red", "oops")));
    assert_eq!(
        v.tables().networks.len(),
        0,
        "a bad value replaces the good one"
    );
    v.apply(Change::Delete("/overlay/v1/networks/red".into()));
    assert!(v.rejected.is_empty());
}

/// An IPv6-only network's endpoint is keyed by its IPv6 address: no IPv4 address, its IPv6
/// one taken by allocation; and its network record has no IPv4 subnet.
#[test]
fn ipv6_only_endpoints_are_keyed_by_their_ipv6_address() {
    let mut v = ClusterView::new(Layout::new("/overlay"));
    v.reset(vec![
        kv("/overlay/v1/networks/six", r#"{"version":1,"vni":300,"subnet6":"2001:2:0:1090::/64"}"#),
        kv("/overlay/v1/nodes/a", r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":0,"release":"0.3.0"}"#),
        kv("/overlay/v1/endpoints/six/2001:2:0:1090::2", r#"{"version":1,"mac":"0e:58:01:02:03:04","node":"a","container_id":"c1","host_ifname":"ovl1"}"#),
        kv("/overlay/v1/endpoints/six/2001:02:0:1090::3", r#"{"version":1,"mac":"0e:58:01:02:03:05","node":"a","container_id":"c2","host_ifname":"ovl2"}"#),
    ]);
    assert_eq!(
        v.rejected.len(),
        1,
        "the non-canonical key: {:?}",
        v.rejected
    );
    let t = v.tables();
    assert!(t.rejected.is_empty(), "{:?}", t.rejected);
    assert_eq!(t.networks["six"].subnet, None);
    let ep = &t.endpoints[0];
    let ip6: std::net::Ipv6Addr = "2001:2:0:1090::2".parse().unwrap();
    assert_eq!((ep.ip, ep.ip6), (None, Some(ip6)));
    assert_eq!(v.ipv6_in("six").collect::<Vec<_>>(), [ip6]);
    assert!(v.endpoint("six", ip6.into()).is_some());
}

/// DNS is told which endpoints changed (their names with them), not made to look at all of
/// them; networks and listings make it start over, services replace its services.
#[test]
fn dns_follows_endpoint_by_endpoint() {
    let mut v = ClusterView::new(Layout::new("/overlay"));
    v.reset(vec![
        kv("/overlay/v1/networks/red", r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#),
        kv("/overlay/v1/nodes/a", r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:01","registered_at":0}"#),
    ]);
    // Nobody follows: nothing is kept.
    v.apply(Change::Put(kv("/overlay/v1/endpoints/red/198.19.1.9", r#"{"version":1,"mac":"0a:58:c6:13:01:09","node":"a","container_id":"c9","host_ifname":"ovl9"}"#)));
    assert!(v.dns_dirty.is_none());
    v.follow_dns();
    assert!(v.take_dns_dirty().full, "the first look is at everything");
    assert_eq!(v.take_dns_dirty(), DnsDirty::default());

    let ip: IpAddr = [198, 19, 1, 2].into();
    v.apply(Change::Put(kv("/overlay/v1/endpoints/red/198.19.1.2", r#"{"version":1,"mac":"0a:58:c6:13:01:02","node":"a","container_id":"c1","host_ifname":"ovl1"}"#)));
    v.apply(Change::Put(kv(
        "/overlay/v1/endpointinfo/red/198.19.1.2",
        r#"{"version":1,"container_id":"c1","name":"web1"}"#,
    )));
    let d = v.take_dns_dirty();
    assert!(!d.full && !d.services);
    assert_eq!(d.endpoints, [("red".to_owned(), ip)].into());
    let dns = v.dns_endpoint(&v.dns_base(), "red", ip, "a").unwrap();
    assert_eq!((dns.addrs, dns.name.as_deref()), (vec![ip], Some("web1")));
    assert!(dns.local);
    assert!(!v.dns_endpoint(&v.dns_base(), "red", ip, "b").unwrap().local);

    // The name goes with its key; a later container at the address is not named by it.
    v.apply(Change::Delete(
        "/overlay/v1/endpointinfo/red/198.19.1.2".into(),
    ));
    assert_eq!(v.take_dns_dirty().endpoints.len(), 1);
    assert_eq!(
        v.dns_endpoint(&v.dns_base(), "red", ip, "a").unwrap().name,
        None
    );
    v.apply(Change::Put(kv(
        "/overlay/v1/endpointinfo/red/198.19.1.2",
        r#"{"version":1,"container_id":"c0","name":"old"}"#,
    )));
    assert_eq!(
        v.dns_endpoint(&v.dns_base(), "red", ip, "a").unwrap().name,
        None
    );

    // As validation judges them: an address outside the subnet, a node whose VTEP is
    // another's, are not served.
    v.apply(Change::Put(kv("/overlay/v1/endpoints/red/198.19.2.7", r#"{"version":1,"mac":"0a:58:c6:13:02:07","node":"a","container_id":"c7","host_ifname":"ovl7"}"#)));
    v.apply(Change::Put(kv(
        "/overlay/v1/nodes/b",
        r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:00:02","registered_at":1}"#,
    )));
    v.apply(Change::Put(kv("/overlay/v1/endpoints/red/198.19.1.5", r#"{"version":1,"mac":"0a:58:c6:13:01:05","node":"b","container_id":"c5","host_ifname":"ovl5"}"#)));
    let base = v.dns_base();
    assert_eq!(
        v.dns_endpoint(&base, "red", [198, 19, 2, 7].into(), "a"),
        None
    );
    assert!(!base.nodes.contains_key("b"), "a's VTEP is a's");
    assert_eq!(
        v.dns_endpoint(&base, "red", [198, 19, 1, 5].into(), "a"),
        None
    );
    v.apply(Change::Delete("/overlay/v1/nodes/b".into()));
    v.apply(Change::Delete(
        "/overlay/v1/endpoints/red/198.19.1.5".into(),
    ));
    v.take_dns_dirty();

    v.apply(Change::Put(kv("/overlay/v1/services/web", r#"{"version":1,"network":"red","vip":"198.18.250.1","port":80,"proto":"tcp","backends":[]}"#)));
    let d = v.take_dns_dirty();
    assert!(d.services && !d.full);
    assert_eq!(v.dns_base().services.len(), 1);

    // The node leaves before its endpoints: they are not served, and DNS starts over.
    v.apply(Change::Delete("/overlay/v1/nodes/a".into()));
    assert!(v.take_dns_dirty().full);
    assert_eq!(v.dns_endpoint(&v.dns_base(), "red", ip, "a"), None);
    assert!(v.dns_endpoints(&v.dns_base(), "a").is_empty());

    v.apply(Change::Put(kv(
        "/overlay/v1/networks/red",
        r#"{"version":1,"vni":101,"subnet":"198.19.1.0/24"}"#,
    )));
    assert!(v.take_dns_dirty().full);
}

/// A re-listing swaps in a fresh view: DNS still follows it, and starts over once.
#[test]
fn a_fresh_listing_keeps_dns_following() {
    let mut v = ClusterView::new(Layout::new("/overlay"));
    v.follow_dns();
    v.take_dns_dirty();
    let mut fresh = ClusterView::new(Layout::new("/overlay"));
    fresh.reset(Vec::new());
    v.replace(fresh);
    assert!(v.take_dns_dirty().full);
    v.apply(Change::Put(kv("/overlay/v1/endpoints/red/198.19.1.2", r#"{"version":1,"mac":"0a:58:c6:13:01:02","node":"a","container_id":"c1","host_ifname":"ovl1"}"#)));
    let d = v.take_dns_dirty();
    assert!(!d.full && d.endpoints.len() == 1, "{d:?}");
}
