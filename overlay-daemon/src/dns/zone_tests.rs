use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::rr::{DNSClass, RecordType};

use super::*;
use crate::tables::{BackendSpec, EndpointIface, EndpointSpec, NetworkSpec, ValidService};

fn tables() -> ValidTables {
    let net = |name: &str, vni, subnet: &str| NetworkSpec {
        name: name.into(),
        vni,
        subnet: Some(subnet.parse().unwrap()),
        gateway: None,
        subnet6: (name == "red").then(|| "2001:2:0:1::/64".parse().unwrap()),
        gateway6: None,
    };
    let ep = |network: &str, ip: [u8; 4], ip6: Option<Ipv6Addr>| EndpointSpec {
        bandwidth: None,
        network: network.into(),
        ip: Some(Ipv4Addr::from(ip)),
        mac: None,
        node: "n1".into(),
        iface: EndpointIface::Unnamed,
        services: Vec::new(),
        ip6,
    };
    let svc = |name: &str, vni, vip: [u8; 4], port, proto| ValidService {
        name: name.into(),
        vni,
        vip: IpAddr::from(vip),
        port,
        proto,
        backends: vec![BackendSpec {
            ip: [198, 19, 1, 2].into(),
            port: 8080,
            weight: 1,
        }],
    };
    ValidTables {
        networks: [
            ("red".into(), net("red", 100, "198.19.1.0/24")),
            ("green".into(), net("green", 200, "198.19.2.0/24")),
        ]
        .into(),
        endpoints: vec![
            ep(
                "red",
                [198, 19, 1, 2],
                Some("2001:2:0:1::2".parse().unwrap()),
            ),
            ep("red", [198, 19, 1, 3], None),
            ep("green", [198, 19, 2, 2], None),
        ],
        services: vec![
            svc("web", 100, [198, 18, 250, 1], 80, Proto::Tcp),
            svc("web", 100, [198, 18, 250, 1], 443, Proto::Tcp),
            svc("db", 200, [198, 18, 251, 1], 5432, Proto::Tcp),
        ],
        ..ValidTables::default()
    }
}

fn zone() -> Zone {
    let names = [
        (
            ("red".to_owned(), IpAddr::from([198, 19, 1, 2])),
            "web-0.shop".to_owned(),
        ),
        (
            ("green".to_owned(), IpAddr::from([198, 19, 2, 2])),
            "db-0".to_owned(),
        ),
    ]
    .into();
    Zone::build(
        Name::from_ascii("overlay.internal.").unwrap(),
        &tables(),
        &names,
    )
}

fn ask(zone: &Zone, network: &str, name: &str, qtype: RecordType) -> Answer {
    let mut q = Query::query(Name::from_ascii(name).unwrap(), qtype);
    q.set_query_class(DNSClass::IN);
    zone.answer(network, &q)
}

fn data(answer: Answer) -> Vec<RData> {
    match answer {
        Answer::Records(r) => r.into_iter().map(|r| r.data).collect(),
        other => panic!("expected records, got {other:?}"),
    }
}

#[test]
fn services_and_containers_resolve_in_their_network() {
    let z = zone();
    assert_eq!(
        data(ask(&z, "red", "web.red.overlay.internal.", RecordType::A)),
        vec![RData::A(A([198, 18, 250, 1].into()))]
    );
    // Case does not matter.
    assert_eq!(
        data(ask(&z, "red", "WEB.Red.overlay.internal.", RecordType::A)).len(),
        1
    );
    assert_eq!(
        data(ask(
            &z,
            "red",
            "web-0.shop.red.overlay.internal.",
            RecordType::A
        )),
        vec![RData::A(A([198, 19, 1, 2].into()))]
    );
    assert_eq!(
        data(ask(
            &z,
            "red",
            "web-0.shop.red.overlay.internal.",
            RecordType::AAAA
        )),
        vec![RData::AAAA(AAAA("2001:2:0:1::2".parse().unwrap()))]
    );
    // A name with no record of the type: NODATA.
    assert!(data(ask(
        &z,
        "red",
        "web.red.overlay.internal.",
        RecordType::AAAA
    ))
    .is_empty());
    // Empty non-terminals exist.
    assert!(data(ask(&z, "red", "shop.red.overlay.internal.", RecordType::A)).is_empty());
    assert!(data(ask(&z, "red", "overlay.internal.", RecordType::A)).is_empty());
}

#[test]
fn srv_records_name_each_port() {
    let z = zone();
    let srv = data(ask(
        &z,
        "red",
        "_443._tcp.web.red.overlay.internal.",
        RecordType::SRV,
    ));
    let RData::SRV(srv) = &srv[0] else {
        panic!("{srv:?}")
    };
    assert_eq!(srv.port, 443);
    assert_eq!(srv.target.to_ascii(), "web.red.overlay.internal.");
    assert_eq!(
        ask(
            &z,
            "red",
            "_81._tcp.web.red.overlay.internal.",
            RecordType::SRV
        ),
        Answer::NxDomain
    );
}

#[test]
fn other_networks_names_are_nxdomain() {
    let z = zone();
    assert_eq!(
        ask(&z, "red", "db.green.overlay.internal.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&z, "red", "nosuch.red.overlay.internal.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&z, "red", "db-0.green.overlay.internal.", RecordType::A),
        Answer::NxDomain
    );
    assert!(!data(ask(
        &z,
        "green",
        "db-0.green.overlay.internal.",
        RecordType::A
    ))
    .is_empty());
}

#[test]
fn ptr_records_within_the_network_only() {
    let z = zone();
    let ptr = data(ask(&z, "red", "2.1.19.198.in-addr.arpa.", RecordType::PTR));
    assert_eq!(
        ptr,
        vec![RData::PTR(PTR(Name::from_ascii(
            "web-0.shop.red.overlay.internal."
        )
        .unwrap()))]
    );
    let vip = data(ask(
        &z,
        "red",
        "1.250.18.198.in-addr.arpa.",
        RecordType::PTR,
    ));
    assert_eq!(vip.len(), 1);
    let v6 = "2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa.";
    assert_eq!(data(ask(&z, "red", v6, RecordType::PTR)).len(), 1);
    // Green's container, asked from red: not told. An unnamed overlay address: NXDOMAIN.
    assert_eq!(
        ask(&z, "red", "2.2.19.198.in-addr.arpa.", RecordType::PTR),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&z, "red", "3.1.19.198.in-addr.arpa.", RecordType::PTR),
        Answer::NxDomain
    );
    // Not the overlay's: upstream.
    assert_eq!(
        ask(&z, "red", "1.2.0.192.in-addr.arpa.", RecordType::PTR),
        Answer::Elsewhere
    );
}

#[test]
fn everything_else_goes_upstream_and_sources_name_their_network() {
    let z = zone();
    assert_eq!(
        ask(&z, "red", "example.com.", RecordType::A),
        Answer::Elsewhere
    );
    assert_eq!(
        ask(&z, "red", "internal.", RecordType::A),
        Answer::Elsewhere
    );
    assert!(z.asks("green", [198, 19, 2, 2].into()));
    assert!(!z.asks("red", [198, 19, 2, 2].into()));
    assert!(z.asks("red", "2001:2:0:1::2".parse().unwrap()));
    assert!(!z.asks("red", [198, 19, 9, 9].into()));
}

#[test]
fn a_container_named_as_a_service_does_not_take_its_name() {
    let names = [(
        ("red".to_owned(), IpAddr::from([198, 19, 1, 3])),
        "web".to_owned(),
    )]
    .into();
    let z = Zone::build(
        Name::from_ascii("overlay.internal.").unwrap(),
        &tables(),
        &names,
    );
    assert_eq!(
        data(ask(&z, "red", "web.red.overlay.internal.", RecordType::A)),
        vec![RData::A(A([198, 18, 250, 1].into()))]
    );
    let mut q = Query::query(
        Name::from_ascii("web.red.overlay.internal.").unwrap(),
        RecordType::A,
    );
    q.set_query_class(DNSClass::CH);
    assert_eq!(z.answer("red", &q), Answer::Refused);
}

#[test]
fn names_that_are_not_dns_labels_are_not_served() {
    assert!(valid_labels("web-0.shop"));
    assert!(valid_labels("my_db"));
    assert!(!valid_labels("-web"));
    assert!(!valid_labels("a..b"));
    assert!(!valid_labels("web server"));
    assert!(!valid_labels(&"x".repeat(64)));
}

#[test]
fn endpoints_change_one_at_a_time() {
    let mut z = zone();
    let ip: IpAddr = [198, 19, 1, 3].into();
    let named = |name: &str| {
        Some(EndpointDns {
            addrs: vec![ip],
            name: Some(name.into()),
            local: true,
        })
    };
    let a = |z: &Zone, name: &str| data(ask(z, "red", name, RecordType::A));
    let ptr = |z: &Zone| ask(z, "red", "3.1.19.198.in-addr.arpa.", RecordType::PTR);
    assert_eq!(
        ask(&z, "red", "api.red.overlay.internal.", RecordType::A),
        Answer::NxDomain
    );
    z.set_endpoint("red", ip, named("api"));
    assert_eq!(
        a(&z, "api.red.overlay.internal."),
        vec![RData::A(A([198, 19, 1, 3].into()))]
    );
    assert_eq!(z.len(), 5);
    // Renamed: the old name and its PTR are gone.
    z.set_endpoint("red", ip, named("api-2"));
    assert_eq!(
        ask(&z, "red", "api.red.overlay.internal.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        data(ptr(&z)),
        vec![RData::PTR(PTR(Name::from_ascii(
            "api-2.red.overlay.internal."
        )
        .unwrap()))]
    );
    // A second container of the same name (another host): both addresses, until it goes.
    let other: IpAddr = [198, 19, 1, 4].into();
    z.set_endpoint(
        "red",
        other,
        Some(EndpointDns {
            addrs: vec![other],
            name: Some("api-2".into()),
            local: false,
        }),
    );
    assert_eq!(a(&z, "api-2.red.overlay.internal.").len(), 2);
    z.set_endpoint("red", ip, None);
    assert_eq!(
        a(&z, "api-2.red.overlay.internal."),
        vec![RData::A(A([198, 19, 1, 4].into()))]
    );
    assert_eq!(ptr(&z), Answer::NxDomain);
    assert!(!z.asks("red", ip), "a gone endpoint asks no more");
    assert!(!z.asks("red", other), "only this host's endpoints ask");
    assert_eq!(
        data(ask(&z, "red", "4.1.19.198.in-addr.arpa.", RecordType::PTR)),
        vec![RData::PTR(PTR(Name::from_ascii(
            "api-2.red.overlay.internal."
        )
        .unwrap()))]
    );

    // Names above a pod's name exist while it does.
    let shop = |z: &Zone| ask(z, "red", "shop.red.overlay.internal.", RecordType::A);
    assert_eq!(shop(&z), Answer::Records(Vec::new()));
    z.set_endpoint("red", [198, 19, 1, 2].into(), None);
    assert_eq!(shop(&z), Answer::NxDomain);
    assert_eq!(
        ask(&z, "red", "red.overlay.internal.", RecordType::A),
        Answer::Records(Vec::new()),
        "services are still below the network's name"
    );

    // Services replaced whole; containers stay.
    let mut t = tables();
    t.services.retain(|s| s.name != "web");
    z.set_services(&t);
    assert_eq!(
        ask(&z, "red", "web.red.overlay.internal.", RecordType::A),
        Answer::NxDomain
    );
    assert_eq!(
        ask(
            &z,
            "red",
            "_80._tcp.web.red.overlay.internal.",
            RecordType::SRV
        ),
        Answer::NxDomain
    );
    assert_eq!(
        ask(&z, "red", "red.overlay.internal.", RecordType::A),
        Answer::Records(Vec::new())
    );
    assert_eq!(a(&z, "api-2.red.overlay.internal.").len(), 1);
    z.set_endpoint("red", other, None);
    assert_eq!(
        ask(&z, "red", "red.overlay.internal.", RecordType::A),
        Answer::NxDomain
    );
}

#[test]
fn dotted_networks_and_escaped_dots() {
    let mut t = tables();
    let prod = NetworkSpec {
        name: "prod.eu".into(),
        vni: 300,
        subnet: Some("198.19.3.0/24".parse().unwrap()),
        gateway: None,
        subnet6: None,
        gateway6: None,
    };
    t.networks.insert("prod.eu".into(), prod);
    let mut z = Zone::new(Name::from_ascii("overlay.internal.").unwrap(), &t);
    let ip: IpAddr = [198, 19, 3, 2].into();
    let dns = EndpointDns {
        addrs: vec![ip],
        name: Some("web-0.shop".into()),
        local: true,
    };
    z.set_endpoint("prod.eu", ip, Some(dns));
    assert_eq!(
        data(ask(
            &z,
            "prod.eu",
            "web-0.shop.prod.eu.overlay.internal.",
            RecordType::A
        )),
        vec![RData::A(A([198, 19, 3, 2].into()))]
    );
    for above in [
        "shop.prod.eu.overlay.internal.",
        "prod.eu.overlay.internal.",
        "eu.overlay.internal.",
    ] {
        assert_eq!(
            ask(&z, "prod.eu", above, RecordType::A),
            Answer::Records(Vec::new()),
            "{above}"
        );
    }
    // One label holding a dot is not two labels.
    let mut escaped = Name::from_labels(vec![&b"web-0.shop"[..]]).unwrap();
    escaped = escaped
        .append_domain(&Name::from_ascii("prod.eu.overlay.internal.").unwrap())
        .unwrap();
    let mut q = Query::query(escaped, RecordType::A);
    q.set_query_class(DNSClass::IN);
    assert_eq!(z.answer("prod.eu", &q), Answer::NxDomain);
    assert_eq!(
        data(ask(
            &z,
            "prod.eu",
            "2.3.19.198.in-addr.arpa.",
            RecordType::PTR
        )),
        vec![RData::PTR(PTR(Name::from_ascii(
            "web-0.shop.prod.eu.overlay.internal."
        )
        .unwrap()))]
    );
}

/// An IPv6 address that moved from one endpoint to another in one batch stays the new
/// one's, whatever order the batch is applied in.
#[test]
fn a_moved_ipv6_address_stays_with_its_new_endpoint() {
    let v6: IpAddr = "2001:2:0:1::9".parse().unwrap();
    let (a, b): (IpAddr, IpAddr) = ([198, 19, 1, 8].into(), [198, 19, 1, 9].into());
    let with = |key: IpAddr| EndpointDns {
        addrs: vec![key, v6],
        name: Some(format!("n{}", key.to_string().replace('.', "-"))),
        local: true,
    };
    let mut z = zone();
    z.set_endpoint("red", a, Some(with(a)));
    z.set_endpoint("red", b, Some(with(b)));
    z.set_endpoint("red", a, None);
    assert!(z.asks("red", v6));
    assert_eq!(
        data(ask(
            &z,
            "red",
            "9.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.1.0.0.0.0.0.0.0.2.0.0.0.1.0.0.2.ip6.arpa.",
            RecordType::PTR
        )),
        vec![RData::PTR(PTR(Name::from_ascii(
            "n198-19-1-9.red.overlay.internal."
        )
        .unwrap()))]
    );
}
