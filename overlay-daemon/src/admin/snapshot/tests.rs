use super::*;
use crate::store::{client::Kv, Layout};

/// A snapshot of these records, validated as the daemons validate them.
fn snapshot(records: &[(Key, &str, i64)]) -> Snapshot {
    let layout = Layout::new("/t");
    let kvs: Vec<Kv> = records
        .iter()
        .map(|(key, json, lease)| Kv {
            key: layout.key(key),
            value: json.as_bytes().to_vec(),
            lease: *lease,
        })
        .collect();
    let mut view = ClusterView::new(layout.clone());
    view.reset(kvs.clone());
    Snapshot::from_parts(
        &layout,
        kvs.iter().map(|kv| (&kv.key, &kv.value[..], kv.lease)),
        view.tables(),
    )
}

fn ep(node: &str, container: &str, veth: &str) -> String {
    format!(
        r#"{{"version":1,"mac":"02:00:00:00:00:{:02x}","node":"{node}","container_id":"{container}","host_ifname":"{veth}","ifname":"eth0"}}"#,
        container.len()
    )
}

fn world() -> Snapshot {
    let node = r#"{"version":1,"vtep_ip":"198.18.0.1","vtep_mac":"02:00:00:00:01:01","registered_at":1,"release":"0.3.0"}"#;
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let (a, b, c, gone) = (
        ep("n1", "a", "ovla"),
        ep("n1", "bb", ""),
        ep("n1", "ccc", "ovlc"),
        ep("n9", "dddd", "ovld"),
    );
    snapshot(&[
        (
            Key::Network("red".into()),
            r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24","mtu":1400}"#,
            0,
        ),
        (
            Key::Network("blue".into()),
            r#"{"version":1,"vni":101,"subnet":"198.19.2.0/24"}"#,
            0,
        ),
        (Key::Node("n1".into()), node, 0x7a),
        (
            Key::Block {
                network: "red".into(),
                block: "198.19.1.0/26".parse().unwrap(),
            },
            r#"{"version":1,"node":"n1"}"#,
            0x7a,
        ),
        (
            Key::Endpoint {
                network: "red".into(),
                ip: ip("198.19.1.2"),
            },
            &a,
            0x7a,
        ),
        (
            Key::Endpoint {
                network: "red".into(),
                ip: ip("198.19.1.3"),
            },
            &b,
            0x7a,
        ),
        (
            Key::Endpoint {
                network: "red".into(),
                ip: ip("198.19.1.4"),
            },
            &gone,
            0x99,
        ),
        (
            Key::Endpoint {
                network: "blue".into(),
                ip: ip("198.19.2.2"),
            },
            &c,
            0x7a,
        ),
        (
            Key::Service("web".into()),
            r#"{"version":1,"network":"red","vip":"198.19.200.1","port":80,"proto":"tcp","backends":[
            {"ip":"198.19.1.2","port":8080},{"ip":"198.19.1.3","port":8080},{"ip":"198.19.1.4","port":8080},
            {"ip":"198.19.1.5","port":8080},{"ip":"198.19.1.2","port":8081,"weight":0}]}"#,
            0,
        ),
    ])
}

#[test]
fn a_network_shows_its_gateway_mtu_blocks_and_endpoints() {
    let red = world().network("red").unwrap();
    assert_eq!(red.gateway, Some("198.19.1.1".parse().unwrap()));
    assert_eq!(red.mtu, Some(1400));
    assert_eq!(red.endpoints, 3);
    assert_eq!(
        red.blocks,
        [BlockView {
            block: "198.19.1.0/26".parse().unwrap(),
            node: "n1".into()
        }]
    );
    assert!(matches!(
        world().network("nosuch"),
        Err(AdminError::NoSuchNetwork(_))
    ));
}

#[test]
fn each_configured_backend_says_why_it_is_not_live() {
    let web = world().service("web", &[]).unwrap();
    let states: Vec<(u16, bool, Option<&str>)> = web
        .configured
        .iter()
        .map(|b| (b.port, b.live, b.reason.as_deref()))
        .collect();
    assert_eq!(states[0], (8080, true, None));
    assert_eq!(
        states[1].2,
        Some("its address is reserved, but no container has it yet")
    );
    assert_eq!(
        states[2].2,
        Some("its endpoint's node \"n9\" is not registered (down?)")
    );
    assert_eq!(
        states[3].2,
        Some("no endpoint of network \"red\" has this address")
    );
    assert_eq!(states[4].2, Some("weight 0: drained"));
    assert_eq!(
        web.backends.len(),
        1,
        "only the running endpoint is balanced"
    );
}

#[test]
fn filters_that_name_nothing_are_errors() {
    let w = world();
    let by_net = |n: &str| EndpointFilter {
        network: Some(n.into()),
        node: None,
    };
    assert_eq!(w.endpoints(&by_net("blue")).unwrap().len(), 1);
    assert!(matches!(
        w.endpoints(&by_net("green")),
        Err(AdminError::NoSuchNetwork(_))
    ));
    let by_node = |n: &str| EndpointFilter {
        network: None,
        node: Some(n.into()),
    };
    assert_eq!(w.endpoints(&by_node("n1")).unwrap().len(), 3);
    // A node whose lease expired still owns the records it left: it can be filtered on.
    assert_eq!(w.endpoints(&by_node("n9")).unwrap().len(), 1);
    assert!(matches!(
        w.endpoints(&by_node("n5")),
        Err(AdminError::NoSuchNode(_))
    ));
    assert!(matches!(
        w.services(Some("green"), &[]),
        Err(AdminError::NoSuchNetwork(_))
    ));
    assert_eq!(w.services(Some("blue"), &[]).unwrap().len(), 0);
}

#[test]
fn an_endpoint_is_found_by_address_or_container() {
    let w = world();
    assert_eq!(w.endpoint("198.19.1.2", None).unwrap().container_id, "a");
    assert_eq!(w.endpoint("ccc", None).unwrap().network, "blue");
    assert_eq!(
        w.endpoint("ccc/eth0", Some("blue")).unwrap().ip,
        Some("198.19.2.2".parse().unwrap())
    );
    assert!(matches!(
        w.endpoint("ccc", Some("red")),
        Err(AdminError::NoSuchEndpoint(_))
    ));
    assert_eq!(
        w.endpoint("bb", None).unwrap().host_ifname,
        None,
        "reserved"
    );
}

#[test]
fn a_node_shows_its_lease_in_hex_and_its_endpoints() {
    let n1 = world().node("n1").unwrap();
    assert_eq!(n1.lease, "7a");
    assert_eq!(n1.endpoints, 3);
    assert!(matches!(world().node("n9"), Err(AdminError::NoSuchNode(_))));
}

#[test]
fn a_docker_endpoint_is_found_by_its_docker_endpoint_id() {
    let id = "3f4e5d6c7b8a00112233445566778899";
    let record = r#"{"version":1,"mac":"02:00:00:00:00:09","node":"n1","container_id":"docker:red:198.19.1.9","host_ifname":"ovl9","ifname":"eth"}"#;
    let info = format!(
        r#"{{"version":1,"container_id":"docker:red:198.19.1.9","docker_endpoint":"{id}"}}"#
    );
    // What an earlier endpoint of .10 left beside it names another container.
    let stale = r#"{"version":1,"container_id":"gone","pod":{"namespace":"a","name":"b"}}"#;
    let ten = ep("n1", "now", "ovl10");
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let w = snapshot(&[
        (
            Key::Network("red".into()),
            r#"{"version":1,"vni":100,"subnet":"198.19.1.0/24"}"#,
            0,
        ),
        (
            Key::Endpoint {
                network: "red".into(),
                ip: ip("198.19.1.9"),
            },
            record,
            0,
        ),
        (
            Key::EndpointInfo {
                network: "red".into(),
                ip: ip("198.19.1.9"),
            },
            &info,
            0,
        ),
        (
            Key::Endpoint {
                network: "red".into(),
                ip: ip("198.19.1.10"),
            },
            &ten,
            0,
        ),
        (
            Key::EndpointInfo {
                network: "red".into(),
                ip: ip("198.19.1.10"),
            },
            stale,
            0,
        ),
    ]);
    let e = w.endpoint("3f4e5d6c7b8a", None).unwrap();
    assert_eq!(e.docker_endpoint.as_deref(), Some(id));
    assert_eq!(
        w.endpoint("docker:3f4e5d6c7b8a", None).unwrap(),
        e,
        "as endpoint ls shows it"
    );
    assert!(
        matches!(
            w.endpoint("3f4e5d", None),
            Err(AdminError::NoSuchEndpoint(_))
        ),
        "too short to be an id"
    );
    assert_eq!(
        w.endpoint("now", None).unwrap().pod,
        None,
        "a stale pod is not shown"
    );
}
