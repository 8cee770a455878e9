//! Entry points of the fuzz targets (`fuzz/`, cargo-fuzz) for what the plugin reads: the
//! environment and configuration of an invocation, and the result a runtime hands back
//! (`prevResult`). Plain `cargo test` replays the seed corpora and regression inputs through
//! the same functions. Not an API: hidden from docs.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
};

use overlay_api::{
    fuzz::assert_one_line, labels::parse_service_label, Attachment, Endpoint, MacAddr, Owner,
    Request, Sandbox,
};

use crate::{
    conf::NetConf,
    ops::{check_recorded, decode, Invocation, Operation},
    types::{code, CniError, CniResult, ErrorResult},
    SUPPORTED_VERSIONS,
};

/// A CNI error as the plugin prints it: a known code, a one-line message, in a version.
fn assert_cni_error(version: &str, e: &CniError) {
    assert!(
        [
            code::INCOMPATIBLE_VERSION,
            code::BAD_ENV,
            code::DECODE,
            code::INVALID_CONFIG,
            code::TRY_AGAIN,
            code::NOT_AVAILABLE,
            code::ATTACHMENT,
        ]
        .contains(&e.code),
        "unknown error code {}",
        e.code
    );
    assert_one_line("CNI error", &e.msg);
    assert!(!version.is_empty(), "an error must name its cniVersion");
    let text = serde_json::to_string(&e.to_result(version)).expect("errors serialize");
    let back: ErrorResult = serde_json::from_str(&text).expect("an error parses back");
    assert_eq!(back, e.to_result(version));
}

/// Panics unless `req` reaches the daemon unchanged as one request line.
fn assert_request_round_trips(req: Request) {
    let line = serde_json::to_string(&req).expect("requests serialize");
    assert!(!line.contains('\n'), "a request must be one line");
    let back: Request = serde_json::from_str(&line).expect("a request parses back");
    assert_eq!(back, req);
}

/// One invocation: `CNI_*=value` lines (the environment), an empty line, then stdin (the
/// configuration). Without the empty line all of `data` is stdin and the environment is empty.
pub fn cni_config(data: &[u8]) {
    let (head, stdin) = match data.windows(2).position(|w| w == b"\n\n") {
        Some(at) => (&data[..at], &data[at + 2..]),
        None => (&data[..0], data),
    };
    let head = String::from_utf8_lossy(head);
    let vars: BTreeMap<&str, &str> = head.lines().filter_map(|l| l.split_once('=')).collect();
    let env = crate::CniEnv::from_vars(|k| vars.get(k).map(|v| v.to_string()));
    let _ = env.args_map();
    match decode(&env, stdin) {
        Err((version, e)) => assert_cni_error(&version, &e),
        Ok(Invocation::Version(v)) => {
            assert!(!v.cni_version.is_empty());
            serde_json::to_string(&v).expect("the version result serializes");
        }
        Ok(Invocation::Call(conf, op)) => {
            assert!(SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()));
            assert!(!conf.network().is_empty(), "a call needs a network");
            match op {
                Operation::Add(req) => {
                    assert!(
                        !req.container_id.is_empty()
                            && !req.ifname.is_empty()
                            && !req.netns.as_os_str().is_empty()
                    );
                    assert!(req.mtu.is_none_or(|m| (576..=9000).contains(&m)));
                    for l in &req.services {
                        parse_service_label(l).expect("ADD sends only valid labels");
                    }
                    assert_request_round_trips(Request::CreateEndpoint(req));
                }
                Operation::Del {
                    container_id,
                    ifname,
                } => assert_request_round_trips(Request::DeleteEndpoint {
                    container_id,
                    ifname,
                }),
                Operation::Check {
                    container_id,
                    ifname,
                    netns,
                    prev,
                } => {
                    assert!(!conf.cni_version.starts_with("0.3"));
                    if let Some(prev) = prev {
                        assert_result_round_trips(&prev);
                    }
                    assert_request_round_trips(Request::CheckEndpoint {
                        container_id,
                        ifname,
                        netns,
                    });
                }
                Operation::Status | Operation::Gc { .. } => {}
            }
        }
    }
}

/// What parses as a result is itself a result that parses back to the same value.
fn assert_result_round_trips(r: &CniResult) {
    let value = serde_json::to_value(r).expect("results serialize");
    let back = CniResult::from_prev(&value).expect("a checked result parses back");
    assert_eq!(&back, r);
}

/// The endpoint a CHECK compares with, as the daemon would answer.
fn endpoint(ifname: &str, ip: Ipv4Addr, prefix_len: u8, mac: MacAddr) -> Endpoint {
    Endpoint {
        bandwidth: None,
        ipv6: None,
        network: "red".into(),
        container_id: "c".into(),
        ifname: ifname.into(),
        sandbox: Sandbox::Netns(PathBuf::from("/run/netns/c")),
        ipv4: Some(overlay_api::Ipv4Assignment {
            ip,
            prefix_len,
            gateway: Ipv4Addr::new(198, 19, 1, 1),
        }),
        mac,
        mtu: 1450,
        vni: 100,
        attachment: Attachment::Veth {
            host_ifname: "ovl1".into(),
        },
        host_mac: None,
        owner: Owner::Cni,
        services: Vec::new(),
        default_routes: overlay_api::DefaultRoutes::default(),
        pod: None,
        docker_endpoint: None,
        name: None,
        dns: None,
    }
}

/// A `prevResult` (the JSON of `data`) as CHECK reads it, and compared with endpoints that
/// do and do not match its container interface.
pub fn cni_prev_result(data: &[u8]) {
    // Not JSON at all: the whole configuration fails to parse (`cni_config` covers that).
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let conf = NetConf {
        prev_result: Some(value),
        ..Default::default()
    };
    let r = match conf.prev_result() {
        Ok(Some(r)) => r,
        Ok(None) => return,
        Err(e) => {
            assert_eq!(e.code, code::DECODE, "{e:?}");
            return assert_cni_error("1.1.0", &e);
        }
    };
    assert_result_round_trips(&r);
    let other = endpoint("eth0", Ipv4Addr::new(203, 0, 113, 9), 32, MacAddr([2; 6]));
    for iface in &r.interfaces {
        let (found, addresses) = match r.container_interface(&iface.name) {
            Ok(Some(found)) => found,
            Ok(None) => continue,
            Err(e) => {
                assert_eq!(e.code, code::DECODE, "{e:?}");
                assert_cni_error("1.1.0", &e);
                continue;
            }
        };
        let mac = found
            .mac
            .as_ref()
            .map(|m| m.parse::<MacAddr>().expect("checked MAC"));
        let check = |ep: &Endpoint| check_recorded(&r, &iface.name, ep);
        if let Err(e) = check(&Endpoint {
            ifname: iface.name.clone(),
            ..other.clone()
        }) {
            assert_cni_error("1.1.0", &e);
        }
        // An endpoint with the recorded MAC and addresses passes, unless the runtime
        // recorded more than one address of a family (the daemon gives one of each).
        let mut distinct = addresses.clone();
        distinct.sort();
        distinct.dedup();
        let v4: Vec<_> = distinct
            .iter()
            .filter_map(|(a, l)| match a {
                IpAddr::V4(a) => Some((*a, *l)),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v6: Vec<_> = distinct
            .iter()
            .filter_map(|(a, l)| match a {
                IpAddr::V6(a) => Some((*a, *l)),
                IpAddr::V4(_) => None,
            })
            .collect();
        let held = other.ipv4.map(|a| (a.ip, a.prefix_len));
        let (ip, len) = v4
            .first()
            .copied()
            .or(held)
            .unwrap_or((Ipv4Addr::LOCALHOST, 8));
        let mut same = endpoint(&iface.name, ip, len, mac.unwrap_or(other.mac));
        same.ipv6 = v6
            .first()
            .map(|(ip, prefix_len)| overlay_api::Ipv6Assignment {
                ip: *ip,
                prefix_len: *prefix_len,
                gateway: *ip,
            });
        // A family the result does not record is not judged (a previous release's plugin
        // recorded IPv4 only).
        let passes = v4.len() <= 1 && v6.len() <= 1;
        assert_eq!(
            check(&same).is_ok(),
            passes,
            "recorded {addresses:?} / {mac:?}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_api::fuzz::replay;

    #[test]
    fn cni_config_inputs_replay() {
        assert!(replay("cni_config", cni_config) > 0);
    }

    #[test]
    fn cni_prev_result_inputs_replay() {
        assert!(replay("cni_prev_result", cni_prev_result) > 0);
    }
}
