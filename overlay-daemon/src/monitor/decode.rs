//! A monitor event as one JSON object: what the datapath sent (hook, drop reason or trace
//! verdict, interfaces, VTEP, the service balanced, length) and what its first bytes say (Ethernet, IPv4/IPv6 or ARP addresses, protocol
//! and ports; for VXLAN, the VNI and the inner frame's addresses too), plus those bytes in
//! hex for anything else.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use overlay_api::EventType;
use overlay_common::{
    monitor::{
        MonitorEvent, TraceVerdict, EVENT_TRACE, HOOK_FROM_CONTAINER, HOOK_FROM_UNDERLAY,
        HOOK_SOCKET, HOOK_UNDERLAY_XDP,
    },
    DropReason,
};
use serde_json::{json, Map, Value};

pub fn hook_label(hook: u8) -> &'static str {
    match hook {
        HOOK_FROM_CONTAINER => "from_container",
        HOOK_FROM_UNDERLAY => "from_underlay",
        HOOK_UNDERLAY_XDP => "underlay_xdp",
        HOOK_SOCKET => "socket",
        _ => "unknown",
    }
}

fn reason_label(reason: u16) -> &'static str {
    DropReason::ALL
        .iter()
        .find(|r| **r as u16 == reason)
        .map_or("unknown", |r| r.label())
}

pub fn kind_label(kind: EventType) -> &'static str {
    match kind {
        EventType::Drop => "drop",
        EventType::Trace => "trace",
    }
}

fn verdict_label(code: u16) -> &'static str {
    TraceVerdict::ALL
        .iter()
        .find(|v| **v as u16 == code)
        .map_or("unknown", |v| v.label())
}

/// An address of an event (`family` 4: the first four bytes).
fn addr(family: u8, b: &[u8; 16]) -> IpAddr {
    if family == 4 {
        IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*b))
    }
}

/// The event as JSON; `ifnames` name its interfaces (in, out) if they still exist; UDP to
/// `vxlan_port` is decoded as VXLAN.
pub fn event_json(
    e: &MonitorEvent,
    ifnames: (Option<String>, Option<String>),
    vtep: Option<std::net::IpAddr>,
    vxlan_port: u16,
) -> Value {
    let head = &e.head[..(e.caplen as usize).min(e.head.len())];
    let mut o = Map::new();
    let trace = e.kind == EVENT_TRACE;
    o.insert("type".into(), json!(if trace { "trace" } else { "drop" }));
    o.insert("time_ns".into(), json!(e.time_ns));
    o.insert("hook".into(), json!(hook_label(e.hook)));
    if trace {
        o.insert("verdict".into(), json!(verdict_label(e.code)));
    } else {
        o.insert("reason".into(), json!(reason_label(e.code)));
    }
    if e.hook != HOOK_SOCKET {
        o.insert("ifindex".into(), json!(e.ifindex));
        o.insert("ifname".into(), json!(ifnames.0));
        o.insert("len".into(), json!(e.len));
    }
    if trace && e.out_ifindex != 0 {
        o.insert("out_ifindex".into(), json!(e.out_ifindex));
        o.insert("out_ifname".into(), json!(ifnames.1));
    }
    if trace && e.vni != 0 {
        o.insert("network_vni".into(), json!(e.vni));
    }
    if let (true, Some(vtep)) = (trace, vtep) {
        o.insert("vtep".into(), json!(vtep.to_string()));
    }
    if !head.is_empty() {
        frame(head, &mut o, "", vxlan_port);
        o.insert(
            "head".into(),
            json!(head.iter().map(|b| format!("{b:02x}")).collect::<String>()),
        );
    }
    if trace && (e.family == 4 || e.family == 6) {
        let service = service(e, &o);
        o.insert("service".into(), service);
    }
    Value::Object(o)
}

/// A traced service: the VIP, and the backend the hook chose or, for a per-packet
/// translation (backend port 0), the one the rewritten packet names (inside the VXLAN
/// headers once encapsulated).
fn service(e: &MonitorEvent, packet: &Map<String, Value>) -> Value {
    let mut svc = Map::new();
    let vip = SocketAddr::new(addr(e.family, &e.vip), e.vip_port);
    svc.insert("vip".into(), json!(vip.to_string()));
    if e.backend_port != 0 {
        let backend = SocketAddr::new(addr(e.family, &e.backend), e.backend_port);
        svc.insert("backend".into(), json!(backend.to_string()));
        svc.insert("proto".into(), proto_name(e.proto));
        return Value::Object(svc);
    }
    let p = if packet.contains_key("inner_dst") {
        "inner_"
    } else {
        ""
    };
    let field = |k: &str| packet.get(&format!("{p}{k}"));
    if let (Some(ip), Some(port)) = (field("dst"), field("dport")) {
        let backend = format!("{}:{port}", ip.as_str().unwrap_or_default());
        svc.insert("backend".into(), json!(backend));
    }
    if let Some(proto) = field("proto") {
        svc.insert("proto".into(), proto.clone());
    }
    Value::Object(svc)
}

fn proto_name(proto: u8) -> Value {
    match proto {
        1 => json!("icmp"),
        6 => json!("tcp"),
        17 => json!("udp"),
        58 => json!("icmpv6"),
        p => json!(p),
    }
}

fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An Ethernet frame's fields into `o`, each key prefixed (`inner_` for a VXLAN payload).
fn frame(b: &[u8], o: &mut Map<String, Value>, prefix: &str, vxlan_port: u16) {
    let mut put = |k: &str, v: Value| {
        o.insert(format!("{prefix}{k}"), v);
    };
    if b.len() < 14 {
        return;
    }
    put("src_mac", json!(mac(&b[6..12])));
    put("dst_mac", json!(mac(&b[0..6])));
    let ethertype = u16::from_be_bytes([b[12], b[13]]);
    let l3 = &b[14..];
    let (proto, l4): (u8, &[u8]) = match ethertype {
        0x0800 if l3.len() >= 20 => {
            let ihl = ((l3[0] & 0x0f) as usize * 4).max(20);
            put(
                "src",
                json!(Ipv4Addr::new(l3[12], l3[13], l3[14], l3[15]).to_string()),
            );
            put(
                "dst",
                json!(Ipv4Addr::new(l3[16], l3[17], l3[18], l3[19]).to_string()),
            );
            (l3[9], l3.get(ihl..).unwrap_or(&[]))
        }
        0x86dd if l3.len() >= 40 => {
            let addr = |o: usize| {
                let a: [u8; 16] = l3[o..o + 16].try_into().expect("16 bytes");
                Ipv6Addr::from(a).to_string()
            };
            put("src", json!(addr(8)));
            put("dst", json!(addr(24)));
            (l3[6], &l3[40..])
        }
        0x0806 if l3.len() >= 28 => {
            put("proto", json!("arp"));
            put(
                "src",
                json!(Ipv4Addr::new(l3[14], l3[15], l3[16], l3[17]).to_string()),
            );
            put(
                "dst",
                json!(Ipv4Addr::new(l3[24], l3[25], l3[26], l3[27]).to_string()),
            );
            return;
        }
        other => {
            put("ethertype", json!(format!("0x{other:04x}")));
            return;
        }
    };
    put("proto", proto_name(proto));
    if (proto == 6 || proto == 17) && l4.len() >= 4 {
        let (sport, dport) = (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        );
        put("sport", json!(sport));
        put("dport", json!(dport));
        // VXLAN (8-byte UDP header, 8-byte VXLAN header, then the inner frame).
        if proto == 17 && prefix.is_empty() && dport == vxlan_port && l4.len() >= 16 {
            let vni = u32::from_be_bytes([0, l4[12], l4[13], l4[14]]);
            put("vni", json!(vni));
            frame(&l4[16..], o, "inner_", vxlan_port);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vxlan_and_its_inner_frame_are_decoded() {
        let mut head = Vec::new();
        head.extend([2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
        let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
        ip.extend([198, 18, 0, 250, 198, 18, 0, 1]);
        head.extend(ip);
        head.extend([0x12, 0x34, 0x12, 0xb5, 0, 0, 0, 0]); // UDP to 4789
        head.extend([0x08, 0, 0, 0, 0, 0, 100, 0]); // VNI 100
        head.extend([2, 0, 0, 0, 0, 3, 2, 0, 0, 0, 0, 4, 0x08, 0x00]);
        let mut inner = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 6, 0, 0];
        inner.extend([198, 19, 1, 5, 198, 19, 1, 6]);
        head.extend(inner);
        head.extend([0, 80, 0x1f, 0x90]);
        let mut e = MonitorEvent {
            hook: HOOK_FROM_UNDERLAY,
            code: DropReason::UnknownVtep as u16,
            len: 200,
            caplen: head.len() as u32,
            ..Default::default()
        };
        e.head[..head.len()].copy_from_slice(&head);
        let v = event_json(&e, (Some("ul0".into()), None), None, 4789);
        assert_eq!(v["reason"], "unknown_vtep");
        assert_eq!(v["hook"], "from_underlay");
        assert_eq!(v["src"], "198.18.0.250");
        assert_eq!(v["dport"], 4789);
        assert_eq!(v["vni"], 100);
        assert_eq!(v["inner_src"], "198.19.1.5");
        assert_eq!(v["inner_dport"], 8080);
        assert_eq!(v["inner_proto"], "tcp");
    }

    #[test]
    fn short_and_odd_heads_give_what_they_have() {
        let mut e = MonitorEvent {
            caplen: 3,
            ..Default::default()
        };
        let v = event_json(&e, (None, None), None, 4789);
        assert_eq!(v["head"], "000000");
        assert!(v.get("src").is_none());
        e.caplen = 500; // never more than the buffer
        assert_eq!(
            event_json(&e, (None, None), None, 4789)["head"]
                .as_str()
                .unwrap()
                .len(),
            256
        );
    }

    #[test]
    fn traces_name_the_decision_and_the_service() {
        let mut vip = [0u8; 16];
        vip[..4].copy_from_slice(&[198, 19, 200, 1]);
        let mut backend = [0u8; 16];
        backend[..4].copy_from_slice(&[198, 19, 1, 5]);
        let e = MonitorEvent {
            kind: EVENT_TRACE,
            hook: HOOK_SOCKET,
            code: TraceVerdict::SocketLb as u16,
            family: 4,
            proto: 6,
            vip,
            vip_port: 80,
            backend,
            backend_port: 8080,
            ..Default::default()
        };
        let v = event_json(&e, (None, None), None, 4789);
        assert_eq!(v["type"], "trace");
        assert_eq!(v["verdict"], "socket_lb");
        assert_eq!(v["hook"], "socket");
        assert_eq!(v["service"]["vip"], "198.19.200.1:80");
        assert_eq!(v["service"]["backend"], "198.19.1.5:8080");
        assert_eq!(v["service"]["proto"], "tcp");
        assert!(v.get("head").is_none() && v.get("ifindex").is_none());

        let e = MonitorEvent {
            kind: EVENT_TRACE,
            hook: HOOK_FROM_CONTAINER,
            code: TraceVerdict::Encap as u16,
            out_ifindex: 3,
            vni: 100,
            vtep_node: 7,
            ..Default::default()
        };
        let vtep = Some("198.18.0.2".parse().unwrap());
        let v = event_json(&e, (Some("ov1".into()), Some("ul0".into())), vtep, 4789);
        assert_eq!(v["verdict"], "encap");
        assert_eq!(v["vtep"], "198.18.0.2");
        assert_eq!(v["out_ifname"], "ul0");
        assert_eq!(v["network_vni"], 100);
    }
}
