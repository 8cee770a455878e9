//! The CNI operations, each a call or two of overlayd's API.

use std::{collections::BTreeSet, path::PathBuf};

use overlay_api::{CallError, Client, DefaultRoute, EndpointRequest, ErrorKind, Owner};
use serde::Serialize;

pub use crate::results::{add_result, check_recorded};
use crate::{
    conf::{self, service_labels, CniEnv, NetConf},
    types::{code, CniError, CniResult, VersionResult},
    LATEST_VERSION, SUPPORTED_VERSIONS,
};

/// What a run prints on stdout: a result object, or nothing.
pub type Output = Option<serde_json::Value>;

fn json(v: impl Serialize) -> Output {
    Some(serde_json::to_value(v).expect("results serialize"))
}

/// The operation a daemon error happened in: the same kind means a different thing to the
/// runtime in ADD (a network the config names is missing: the config is wrong) and in
/// CHECK (the attachment is missing).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Op {
    Add,
    Check,
    Other,
}

/// How long an endpoint operation waits for the daemon's socket to answer.
const DAEMON_RESTART_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Waits until something accepts connections on `socket`, or `limit` passed.
fn wait_for_daemon(socket: &std::path::Path, limit: std::time::Duration) {
    let deadline = std::time::Instant::now() + limit;
    while std::os::unix::net::UnixStream::connect(socket).is_err()
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Whether a daemon runs on this host normally: its run directory (the socket's) holds what
/// every daemon leaves there and keeps (its lock file, its instance id). Then an unreachable
/// socket is a daemon being replaced, not one never started. (A starting daemon has neither
/// its socket nor its status yet.)
fn daemon_installed(socket: &std::path::Path) -> bool {
    ["overlayd.sock", "overlayd.lock", "instance", "status.json"]
        .iter()
        .any(|f| socket.with_file_name(f).exists())
}

/// The CNI error for a failed API call.
fn api_error(op: Op, conf: &NetConf, e: CallError) -> CniError {
    match e {
        CallError::Unreachable { ref source, .. } if daemon_installed(conf.socket()) => {
            CniError::new(
                code::TRY_AGAIN,
                format!(
                    "overlayd at {} did not answer for {}s (restarting or upgrading?): try again later",
                    conf.socket().display(),
                    DAEMON_RESTART_WAIT.as_secs()
                ),
            )
            .details(source.to_string())
        }
        CallError::Unreachable { ref source, .. } => CniError::new(
            code::NOT_AVAILABLE,
            format!(
                "overlayd is not reachable at {}: start overlayd or fix \"socket\"",
                conf.socket().display()
            ),
        )
        .details(source.to_string()),
        e => {
            let code = match (e.kind(), op) {
                (ErrorKind::Unavailable, _) => code::TRY_AGAIN,
                (ErrorKind::Invalid | ErrorKind::NotFound, Op::Add) => code::INVALID_CONFIG,
                _ => code::ATTACHMENT,
            };
            CniError::new(code, e.to_string())
        }
    }
}

/// A CNI invocation, decoded and checked: everything that can be refused without asking
/// the daemon has been refused.
#[derive(Clone, Debug, PartialEq)]
#[expect(clippy::large_enum_variant, reason = "one per run of the plugin")]
pub enum Invocation {
    /// VERSION, answered by the plugin itself.
    Version(VersionResult),
    /// Any other command, with its configuration.
    Call(NetConf, Operation),
}

/// What a command asks of the daemon.
#[derive(Clone, Debug, PartialEq)]
pub enum Operation {
    Add(EndpointRequest),
    Del {
        container_id: String,
        ifname: String,
    },
    Check {
        container_id: String,
        ifname: String,
        netns: PathBuf,
        /// What the runtime recorded for the attachment.
        prev: Option<CniResult>,
    },
    Status,
    Gc {
        /// (container id, interface) of every attachment the runtime still knows.
        valid: BTreeSet<(String, String)>,
    },
}

/// Reads the environment and the configuration of one invocation. Errors come with the
/// version to answer in (the configuration's own when it could be read).
pub fn decode(env: &CniEnv, stdin: &[u8]) -> Result<Invocation, (String, CniError)> {
    if env.command == "VERSION" {
        let version = serde_json::from_slice::<serde_json::Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| LATEST_VERSION.into());
        return Ok(Invocation::Version(VersionResult {
            cni_version: version,
            supported_versions: SUPPORTED_VERSIONS.iter().map(|v| v.to_string()).collect(),
        }));
    }
    let conf = conf::parse(stdin)?;
    match operation(env, &conf) {
        Ok(op) => Ok(Invocation::Call(conf, op)),
        Err(e) => Err((conf.cni_version, e)),
    }
}

fn operation(env: &CniEnv, conf: &NetConf) -> Result<Operation, CniError> {
    match env.command.as_str() {
        "ADD" => {
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ])?;
            Ok(Operation::Add(EndpointRequest {
                network: conf.network().to_owned(),
                container_id: env.container_id.clone(),
                netns: PathBuf::from(&env.netns),
                ifname: env.ifname.clone(),
                mac: None,
                mtu: conf.mtu,
                owner: Owner::Cni,
                services: service_labels(conf, env)?,
                default_route: conf.default_route(),
                pod: env.pod()?,
                name: env.container_name()?,
                bandwidth: conf.bandwidth()?.map(Box::new),
            }))
        }
        "DEL" => {
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_IFNAME", &env.ifname),
            ])?;
            Ok(Operation::Del {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
            })
        }
        "CHECK" => {
            if conf.cni_version.starts_with("0.3") {
                return Err(CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    "CHECK needs cniVersion 0.4.0 or later",
                ));
            }
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ])?;
            Ok(Operation::Check {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
                netns: PathBuf::from(&env.netns),
                prev: conf.prev_result()?,
            })
        }
        "STATUS" => Ok(Operation::Status),
        "GC" => Ok(Operation::Gc {
            valid: conf
                .valid_attachments
                .iter()
                .flatten()
                .map(|a| (a.container_id.clone(), a.ifname.clone()))
                .collect(),
        }),
        "" => Err(CniError::new(
            code::BAD_ENV,
            "CNI_COMMAND is not set: the runtime must set it",
        )),
        other => Err(CniError::new(
            code::BAD_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        )),
    }
}

/// Runs one CNI operation. `Ok(Some(json))` is printed on stdout; errors come with the
/// version to answer in.
pub fn run(env: &CniEnv, stdin: &[u8]) -> Result<Output, (String, CniError)> {
    match decode(env, stdin)? {
        Invocation::Version(v) => Ok(json(v)),
        Invocation::Call(conf, op) => {
            let client = Client::new(conf.socket());
            // A daemon being replaced (an upgrade, a restart) is back within seconds: an
            // endpoint operation waits for it rather than fail the container. STATUS and GC
            // answer at once, and nothing waits for a daemon this host never ran.
            let endpoint_op = matches!(
                op,
                Operation::Add(_) | Operation::Del { .. } | Operation::Check { .. }
            );
            if endpoint_op && daemon_installed(conf.socket()) {
                wait_for_daemon(conf.socket(), DAEMON_RESTART_WAIT);
            }
            execute(&conf, op, &client).map_err(|e| (conf.cni_version.clone(), e))
        }
    }
}

fn execute(conf: &NetConf, op: Operation, client: &Client) -> Result<Output, CniError> {
    match op {
        Operation::Add(req) => {
            if req.default_route != DefaultRoute::IfNone && daemon_below(client, 4) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "defaultRoute needs overlayd 0.3 or later, which this node does not run yet: upgrade it, or drop defaultRoute",
                ));
            }
            if req.bandwidth.is_some() && daemon_below(client, 7) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    "bandwidth limits need overlayd 0.3 or later, which this node does not run yet: upgrade it before giving pods limits",
                ));
            }
            let ep = client
                .create_endpoint(req)
                .map_err(|e| api_error(Op::Add, conf, e))?;
            Ok(json(add_result(&conf.cni_version, &ep)))
        }
        Operation::Del {
            container_id,
            ifname,
        } => {
            // Best effort when the daemon is down: it cannot hold anything to release right
            // now, and it releases the address of a container that is gone when it starts.
            match client.delete_endpoint(&container_id, &ifname) {
                Ok(_) | Err(CallError::Unreachable { .. }) => Ok(None),
                Err(e) => Err(api_error(Op::Other, conf, e)),
            }
        }
        Operation::Check {
            container_id,
            ifname,
            netns,
            prev,
        } => {
            let ep = match client.check_endpoint(&container_id, &ifname, &netns) {
                Ok(ep) => ep,
                // A first-release daemon (being replaced in a rolling upgrade) has no
                // check_endpoint: the endpoint existing is what it can tell.
                Err(CallError::Api(e)) if e.kind == ErrorKind::Internal && old_daemon(client) => {
                    client
                        .get_endpoint(&container_id, &ifname)
                        .map_err(|e| api_error(Op::Check, conf, e))?
                }
                Err(e) => return Err(api_error(Op::Check, conf, e)),
            };
            match prev {
                Some(prev) => check_recorded(&prev, &ifname, &ep).map(|()| None),
                None => Ok(None),
            }
        }
        Operation::Status => {
            let status = client.status().map_err(|e| api_error(Op::Other, conf, e))?;
            match status.lease {
                Some(_) => Ok(None),
                None => Err(CniError::new(
                    code::NOT_AVAILABLE,
                    "overlayd is running but not registered in etcd yet: check its etcd connection",
                )),
            }
        }
        Operation::Gc { valid } => {
            let endpoints = client
                .list_endpoints()
                .map_err(|e| api_error(Op::Other, conf, e))?;
            for ep in endpoints {
                let ours = ep.network == conf.network() && ep.owner == Owner::Cni;
                if ours && !valid.contains(&(ep.container_id.clone(), ep.ifname.clone())) {
                    client
                        .delete_endpoint(&ep.container_id, &ep.ifname)
                        .map_err(|e| api_error(Op::Other, conf, e))?;
                }
            }
            Ok(None)
        }
    }
}

/// Whether the daemon speaks API version 1 (the first release).
fn old_daemon(client: &Client) -> bool {
    daemon_below(client, 2)
}

/// Whether the daemon answers, with an API version below `version`.
fn daemon_below(client: &Client, version: u32) -> bool {
    client.status().is_ok_and(|s| s.api_version < version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use overlay_api::{Attachment, Endpoint, MacAddr, Sandbox};

    fn endpoint() -> Endpoint {
        Endpoint {
            bandwidth: None,
            ipv6: None,
            network: "red".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            sandbox: Sandbox::Netns("/run/netns/x".into()),
            ipv4: Some(overlay_api::Ipv4Assignment {
                ip: "198.19.1.2".parse().unwrap(),
                prefix_len: 24,
                gateway: "198.19.1.1".parse().unwrap(),
            }),
            mac: "0a:58:c6:13:01:02".parse().unwrap(),
            mtu: 1450,
            vni: 100,
            attachment: Attachment::Veth {
                host_ifname: "ovl1".into(),
            },
            host_mac: Some(MacAddr([2, 0, 0, 0, 0, 1])),
            owner: Owner::Cni,
            services: Vec::new(),
            default_routes: overlay_api::DefaultRoutes {
                ipv4: true,
                ipv6: true,
            },
            pod: None,
            docker_endpoint: None,
            name: None,
            dns: None,
        }
    }

    #[test]
    fn results_follow_the_requested_version() {
        let ep = endpoint();
        let old = serde_json::to_value(add_result("0.3.1", &ep)).unwrap();
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.3.1");
        assert!(old["interfaces"][1].get("mtu").is_none());
        let new = serde_json::to_value(add_result("1.0.0", &ep)).unwrap();
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(new["interfaces"][0].get("sandbox").is_none());
        assert_eq!(new["interfaces"][0]["mac"], "02:00:00:00:00:01");
        assert_eq!(new["routes"][0]["dst"], "0.0.0.0/0");
        let latest = serde_json::to_value(add_result("1.1.0", &ep)).unwrap();
        assert_eq!(latest["interfaces"][1]["mtu"], 1450);
        assert_eq!(latest["dns"], serde_json::json!({}));
    }

    /// Where overlayd serves DNS, the result names the gateway and the network's search
    /// domains, which the runtime writes into the container's resolv.conf.
    #[test]
    fn results_carry_the_networks_resolver() {
        let ep = Endpoint {
            dns: Some(overlay_api::EndpointDns {
                nameservers: vec!["198.19.1.1".parse().unwrap()],
                search: vec!["red.overlay.internal".into(), "overlay.internal".into()],
            }),
            ..endpoint()
        };
        let r = serde_json::to_value(add_result("1.0.0", &ep)).unwrap();
        assert_eq!(
            r["dns"],
            serde_json::json!({"nameservers": ["198.19.1.1"], "search": ["red.overlay.internal", "overlay.internal"]})
        );
    }

    /// An interface that did not get the container's default route does not claim it.
    #[test]
    fn results_list_only_the_default_routes_the_interface_holds() {
        let ep = Endpoint {
            default_routes: overlay_api::DefaultRoutes::default(),
            ..endpoint()
        };
        let r = serde_json::to_value(add_result("1.0.0", &ep)).unwrap();
        assert!(
            r.get("routes").is_none_or(|v| v == &serde_json::json!([])),
            "{r}"
        );
        assert_eq!(r["ips"][0]["gateway"], "198.19.1.1");
    }

    #[test]
    fn dual_stack_results_and_checks_cover_both_families() {
        let v4 = endpoint();
        let ep = Endpoint {
            ipv6: Some(overlay_api::Ipv6Assignment {
                ip: "2001:2:0:1080::2".parse().unwrap(),
                prefix_len: 64,
                gateway: "2001:2:0:1080::1".parse().unwrap(),
            }),
            ..v4.clone()
        };
        let old = serde_json::to_value(add_result("0.4.0", &ep)).unwrap();
        assert_eq!(old["ips"][1]["version"], "6");
        assert_eq!(old["ips"][1]["address"], "2001:2:0:1080::2/64");
        assert_eq!(old["routes"][1]["dst"], "::/0");
        let prev = CniResult::from_prev(&old).unwrap();
        assert!(check_recorded(&prev, "eth0", &ep).is_ok());
        // Another IPv6 address than the recorded one: another attachment.
        let moved = Endpoint {
            ipv6: ep.ipv6.map(|a| overlay_api::Ipv6Assignment {
                ip: "2001:2:0:1080::9".parse().unwrap(),
                ..a
            }),
            ..ep.clone()
        };
        let e = check_recorded(&prev, "eth0", &moved).unwrap_err();
        assert!(e.msg.contains("2001:2:0:1080::9/64"), "{}", e.msg);
        // A result the previous release's plugin recorded (IPv4 only) for a dual-stack
        // attachment: the family it does not record is not judged.
        let ipv4_only = serde_json::to_value(add_result("1.0.0", &v4)).unwrap();
        let prev = CniResult::from_prev(&ipv4_only).unwrap();
        assert!(check_recorded(&prev, "eth0", &ep).is_ok());
    }

    #[test]
    fn check_compares_the_recorded_result() {
        let ep = endpoint();
        for version in crate::SUPPORTED_VERSIONS {
            let recorded = serde_json::to_value(add_result(version, &ep)).unwrap();
            let prev = CniResult::from_prev(&recorded).unwrap();
            assert!(check_recorded(&prev, "eth0", &ep).is_ok(), "{version}");
            let moved = Endpoint {
                ipv4: ep.ipv4.map(|a| overlay_api::Ipv4Assignment {
                    ip: "198.19.1.9".parse().unwrap(),
                    ..a
                }),
                ..ep.clone()
            };
            let e = check_recorded(&prev, "eth0", &moved).unwrap_err();
            assert_eq!(e.code, code::ATTACHMENT);
            assert!(e.msg.contains("198.19.1.2/24"), "{}", e.msg);
            let remade = Endpoint {
                mac: "0a:58:c6:13:01:09".parse().unwrap(),
                ..ep.clone()
            };
            assert!(check_recorded(&prev, "eth0", &remade).is_err());
            // Another interface of the container is not this attachment's business.
            assert!(check_recorded(&prev, "net1", &moved).is_ok());
        }
    }

    #[test]
    fn a_bad_prev_result_fails_check_but_never_del() {
        let env = |command: &str| CniEnv {
            command: command.into(),
            container_id: "c".into(),
            netns: "/run/netns/c".into(),
            ifname: "eth0".into(),
            args: String::new(),
        };
        // Not a result at all: refused while decoding, but DEL goes on.
        for prev in [
            r#"{"interfaces":[]}"#,
            r#"[1]"#,
            r#"{"cniVersion":"1.0.0","ips":[1]}"#,
        ] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","name":"red","prevResult":{prev}}}"#);
            let (version, e) = decode(&env("CHECK"), conf.as_bytes()).unwrap_err();
            assert_eq!(
                (version.as_str(), e.code),
                ("1.0.0", code::DECODE),
                "{prev}"
            );
            assert!(e.msg.starts_with("prevResult: "), "{}", e.msg);
            assert!(matches!(
                decode(&env("DEL"), conf.as_bytes()),
                Ok(Invocation::Call(_, Operation::Del { .. }))
            ));
        }
        // A malformed entry of this attachment's interface fails CHECK with code 6; the same
        // entry on another plugin's interface is theirs and is not judged.
        let ep = endpoint();
        for (ours, entry) in [
            (
                r#"{"name":"eth0","mac":"nope","sandbox":"/run/netns/c"}"#,
                r#"{"address":"198.19.1.2/24","interface":0}"#,
            ),
            (
                r#"{"name":"eth0","sandbox":"/run/netns/c"}"#,
                r#"{"address":"198.19.1.2","interface":0}"#,
            ),
            (
                r#"{"name":"eth0","sandbox":"/run/netns/c"}"#,
                r#"{"address":"198.19.1.2/+24","interface":0}"#,
            ),
        ] {
            let prev = format!(r#"{{"cniVersion":"1.0.0","interfaces":[{ours}],"ips":[{entry}]}}"#);
            let prev = CniResult::from_prev(&serde_json::from_str(&prev).unwrap()).unwrap();
            let e = check_recorded(&prev, "eth0", &ep).unwrap_err();
            assert_eq!(e.code, code::DECODE, "{ours} {entry}");
            assert!(e.msg.starts_with("prevResult: "), "{}", e.msg);
            let theirs = format!(
                r#"{{"cniVersion":"1.0.0","interfaces":[{}],"ips":[{entry}]}}"#,
                ours.replace("eth0", "ib0")
            );
            let theirs = CniResult::from_prev(&serde_json::from_str(&theirs).unwrap()).unwrap();
            assert!(check_recorded(&theirs, "eth0", &ep).is_ok(), "{theirs:?}");
        }
    }

    #[test]
    fn daemon_errors_map_to_codes_by_kind() {
        let conf = NetConf::default();
        let api = |kind| CallError::Api(overlay_api::ApiError::new(kind, "x"));
        assert_eq!(
            api_error(Op::Add, &conf, api(ErrorKind::NotFound)).code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            api_error(Op::Check, &conf, api(ErrorKind::NotFound)).code,
            code::ATTACHMENT
        );
        assert_eq!(
            api_error(Op::Add, &conf, api(ErrorKind::Unavailable)).code,
            code::TRY_AGAIN
        );
        assert_eq!(
            api_error(Op::Add, &conf, api(ErrorKind::Conflict)).code,
            code::ATTACHMENT
        );
        let gone = CallError::Unreachable {
            socket: "/x".into(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(api_error(Op::Add, &conf, gone).code, code::NOT_AVAILABLE);
        let broke = CallError::Io {
            socket: "/x".into(),
            source: std::io::ErrorKind::UnexpectedEof.into(),
        };
        assert_eq!(api_error(Op::Add, &conf, broke).code, code::TRY_AGAIN);
    }
}
