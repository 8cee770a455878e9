//! A monitor event as one JSON object: what the datapath sent (hook, reason, interface,
//! length) and what its first bytes say (Ethernet, IPv4/IPv6 or ARP addresses, protocol
//! and ports; for VXLAN, the VNI and the inner frame's addresses too), plus those bytes in
//! hex for anything else.

use std::net::{Ipv4Addr, Ipv6Addr};

use overlay_common::{
    monitor::{MonitorEvent, HOOK_FROM_CONTAINER, HOOK_FROM_UNDERLAY, HOOK_UNDERLAY_XDP},
    DropReason,
};
use serde_json::{json, Map, Value};

pub fn hook_label(hook: u8) -> &'static str {
    match hook {
        HOOK_FROM_CONTAINER => "from_container",
        HOOK_FROM_UNDERLAY => "from_underlay",
        HOOK_UNDERLAY_XDP => "underlay_xdp",
        _ => "unknown",
    }
}

fn reason_label(reason: u16) -> &'static str {
    DropReason::ALL
        .iter()
        .find(|r| **r as u16 == reason)
        .map_or("unknown", |r| r.label())
}

/// The event as JSON; `ifname` names its interface if it still exists; UDP to `vxlan_port`
/// is decoded as VXLAN.
pub fn event_json(e: &MonitorEvent, ifname: Option<String>, vxlan_port: u16) -> Value {
    let head = &e.head[..(e.caplen as usize).min(e.head.len())];
    let mut o = Map::new();
    o.insert("type".into(), json!("drop"));
    o.insert("time_ns".into(), json!(e.time_ns));
    o.insert("hook".into(), json!(hook_label(e.hook)));
    o.insert("reason".into(), json!(reason_label(e.reason)));
    o.insert("ifindex".into(), json!(e.ifindex));
    o.insert("ifname".into(), json!(ifname));
    o.insert("len".into(), json!(e.len));
    frame(head, &mut o, "", vxlan_port);
    o.insert(
        "head".into(),
        json!(head.iter().map(|b| format!("{b:02x}")).collect::<String>()),
    );
    Value::Object(o)
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
    let name = match proto {
        1 => "icmp",
        6 => "tcp",
        17 => "udp",
        58 => "icmpv6",
        _ => "",
    };
    put(
        "proto",
        if name.is_empty() {
            json!(proto)
        } else {
            json!(name)
        },
    );
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
            reason: DropReason::UnknownVtep as u16,
            len: 200,
            caplen: head.len() as u32,
            ..Default::default()
        };
        e.head[..head.len()].copy_from_slice(&head);
        let v = event_json(&e, Some("ul0".into()), 4789);
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
        let v = event_json(&e, None, 4789);
        assert_eq!(v["head"], "000000");
        assert!(v.get("src").is_none());
        e.caplen = 500; // never more than the buffer
        assert_eq!(
            event_json(&e, None, 4789)["head"].as_str().unwrap().len(),
            256
        );
    }
}
