//! The CNI plugin (`overlay-cni`, spec 1.1.0; configs of 0.3.1, 0.4.0, 1.0.0 and 1.1.0): a thin
//! adapter that turns CNI operations into calls of the local overlayd API. Results use the
//! cniVersion of the config they answer (older runtimes cannot parse newer results).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{json, Value};

use crate::{
    api::{self, Request, Response},
    cluster::{EndpointRequest, LocalEndpoint},
    netlink,
};

pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];
pub const DEFAULT_SOCKET: &str = "/run/overlay/overlayd.sock";
/// Marks endpoints made through CNI, so GC never touches those of other front ends.
pub const OWNER: &str = "cni";

/// A CNI error: the spec's code and a message that says what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: u32,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }
    fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }
    pub fn to_json(&self, version: &str) -> Value {
        json!({"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details})
    }
}

pub const E_INCOMPATIBLE_VERSION: u32 = 1;
pub const E_BAD_ENV: u32 = 4;
pub const E_DECODE: u32 = 6;
pub const E_INVALID_CONFIG: u32 = 7;
pub const E_TRY_AGAIN: u32 = 11;
pub const E_NOT_AVAILABLE: u32 = 50;
/// Plugin-specific (100+): the attachment could not be made or checked.
pub const E_ATTACHMENT: u32 = 100;

/// The network configuration this plugin reads (plugin object of a conflist).
#[derive(Debug, Clone, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub kind: String,
    /// Overlay network name (default: the configuration's name).
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub socket: Option<PathBuf>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Conventional `args` (`{"cni": {"overlay.service": "web:80"}}`).
    #[serde(default)]
    pub args: Option<Value>,
}

/// The CNI arg (and `args.cni` key) that makes the container a service backend.
pub const SERVICE_ARG: &str = "overlay.service";

/// `overlay.service=NAME:PORT[,NAME:PORT...]` from CNI_ARGS and the config's `args.cni`.
pub fn service_labels(conf: &NetConf, env: &CniEnv) -> Result<Vec<String>, CniError> {
    let mut raw: Vec<String> = env
        .args_map()
        .get(SERVICE_ARG)
        .cloned()
        .into_iter()
        .collect();
    if let Some(v) = conf.args.as_ref().and_then(|a| a["cni"].get(SERVICE_ARG)) {
        match v {
            Value::String(s) => raw.push(s.clone()),
            Value::Array(items) => {
                raw.extend(items.iter().filter_map(|i| i.as_str().map(String::from)))
            }
            _ => {
                return Err(CniError::new(
                    E_INVALID_CONFIG,
                    format!("args.cni.{SERVICE_ARG} must be \"NAME:PORT\" or a list of them"),
                ))
            }
        }
    }
    crate::tables::parse_service_labels(raw.iter().map(String::as_str))
        .map_err(|e| CniError::new(E_INVALID_CONFIG, format!("{SERVICE_ARG}: {e}")))
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    pub fn network(&self) -> &str {
        self.network.as_deref().unwrap_or(&self.name)
    }
    pub fn socket(&self) -> &Path {
        self.socket.as_deref().unwrap_or(Path::new(DEFAULT_SOCKET))
    }
}

/// What the runtime passed in the environment.
#[derive(Debug, Clone, Default)]
pub struct CniEnv {
    pub command: String,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    pub args: String,
}

impl CniEnv {
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            command: get("CNI_COMMAND").unwrap_or_default(),
            container_id: get("CNI_CONTAINERID").unwrap_or_default(),
            netns: get("CNI_NETNS").unwrap_or_default(),
            ifname: get("CNI_IFNAME").unwrap_or_default(),
            args: get("CNI_ARGS").unwrap_or_default(),
        }
    }

    fn require(&self, names: &[(&str, &str)]) -> Result<(), CniError> {
        let missing: Vec<&str> = names
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                E_BAD_ENV,
                format!(
                    "missing environment variable(s) {}: the runtime must set them",
                    missing.join(", ")
                ),
            ))
        }
    }

    /// `K=V;K=V` pairs of CNI_ARGS.
    pub fn args_map(&self) -> BTreeMap<String, String> {
        self.args
            .split(';')
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
            })
            .collect()
    }
}

/// Parses and checks the config; the version to answer in is returned even on error when known.
pub fn parse_conf(stdin: &[u8]) -> Result<NetConf, (String, CniError)> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        (
            "1.1.0".to_owned(),
            CniError::new(
                E_DECODE,
                format!("network configuration is not valid JSON: {e}"),
            ),
        )
    })?;
    let version = if conf.cni_version.is_empty() {
        "1.1.0".to_owned()
    } else {
        conf.cni_version.clone()
    };
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return Err((
            version,
            CniError::new(
                E_INCOMPATIBLE_VERSION,
                format!(
                    "cniVersion {:?} is not supported: use one of {}",
                    conf.cni_version,
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ),
        ));
    }
    if conf.name.is_empty() && conf.network.is_none() {
        return Err((
            version,
            CniError::new(
                E_INVALID_CONFIG,
                "the configuration needs a \"name\" (or a \"network\")",
            ),
        ));
    }
    if let Some(ipam) = &conf.ipam {
        if ipam
            .get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| !t.is_empty())
        {
            return Err((version, CniError::new(E_INVALID_CONFIG, "overlay-cni allocates addresses from the cluster IPAM: remove the \"ipam\" section")));
        }
    }
    if conf.mtu.is_some_and(|m| !(576..=9000).contains(&m)) {
        return Err((
            version,
            CniError::new(E_INVALID_CONFIG, "\"mtu\" must be between 576 and 9000"),
        ));
    }
    Ok(conf)
}

/// Converts a daemon API failure into the CNI error a runtime understands.
fn api_error(resp: Response) -> CniError {
    let msg = resp.error.unwrap_or_else(|| "unknown error".into());
    let code = if resp.transient {
        E_TRY_AGAIN
    } else if msg.contains("does not exist") {
        E_INVALID_CONFIG
    } else {
        E_ATTACHMENT
    };
    CniError::new(code, msg)
}

async fn call(conf: &NetConf, req: &Request) -> Result<Response, CniError> {
    api::call(conf.socket(), req).await.map_err(|e| {
        CniError::new(
            E_NOT_AVAILABLE,
            format!(
                "overlayd is not reachable at {}: start overlayd or fix \"socket\"",
                conf.socket().display()
            ),
        )
        .details(e.to_string())
    })
}

/// The ADD result in the shape of `version`.
pub fn add_result(version: &str, ep: &LocalEndpoint) -> Value {
    let mut ip = json!({
        "address": format!("{}/{}", ep.ip, ep.prefix_len),
        "gateway": ep.gateway.to_string(),
        "interface": 1,
    });
    if version.starts_with("0.") {
        ip["version"] = json!("4");
    }
    let mut host = json!({"name": ep.host_ifname});
    if let Some(mac) = ep.host_mac {
        host["mac"] = json!(mac.to_string());
    }
    let mut result = json!({
        "cniVersion": version,
        "interfaces": [host, {"name": ep.ifname, "mac": ep.mac.to_string(), "sandbox": ep.netns}],
        "ips": [ip],
        "routes": [{"dst": "0.0.0.0/0", "gw": ep.gateway.to_string()}],
        "dns": {},
    });
    if version == "1.1.0" {
        result["interfaces"][1]["mtu"] = json!(ep.mtu);
    }
    result
}

/// Runs one CNI operation. Ok(Some(json)) is printed on stdout, Ok(None) prints nothing.
pub async fn run(env: &CniEnv, stdin: &[u8]) -> Result<Option<Value>, (String, CniError)> {
    if env.command == "VERSION" {
        let version = serde_json::from_slice::<Value>(stdin)
            .ok()
            .and_then(|v| v["cniVersion"].as_str().map(str::to_owned))
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "1.1.0".into());
        return Ok(Some(
            json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}),
        ));
    }
    let conf = parse_conf(stdin)?;
    let v = conf.cni_version.clone();
    let with_v = |e: CniError| (v.clone(), e);
    match env.command.as_str() {
        "ADD" => {
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ])
            .map_err(with_v)?;
            let services = service_labels(&conf, env).map_err(with_v)?;
            let req = Request::CreateEndpoint(EndpointRequest {
                network: conf.network().to_owned(),
                container_id: env.container_id.clone(),
                netns: PathBuf::from(&env.netns),
                ifname: env.ifname.clone(),
                mac: None,
                mtu: conf.mtu,
                owner: Some(OWNER.into()),
                services,
            });
            let resp = call(&conf, &req).await.map_err(with_v)?;
            if !resp.ok {
                return Err(with_v(api_error(resp)));
            }
            let ep = api::endpoint(resp).map_err(|e| with_v(CniError::new(E_ATTACHMENT, e)))?;
            Ok(Some(add_result(&v, &ep)))
        }
        "DEL" => {
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_IFNAME", &env.ifname),
            ])
            .map_err(with_v)?;
            let req = Request::DeleteEndpoint {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
            };
            // Best effort: a daemon that is down cannot hold anything to release right now;
            // it releases the address of a container that is gone when it starts again.
            match call(&conf, &req).await {
                Ok(resp) if !resp.ok => Err(with_v(api_error(resp))),
                _ => Ok(None),
            }
        }
        "CHECK" => {
            if v.starts_with("0.3") {
                return Err(with_v(CniError::new(
                    E_INCOMPATIBLE_VERSION,
                    "CHECK needs cniVersion 0.4.0 or later",
                )));
            }
            env.require(&[
                ("CNI_CONTAINERID", &env.container_id),
                ("CNI_NETNS", &env.netns),
                ("CNI_IFNAME", &env.ifname),
            ])
            .map_err(with_v)?;
            let req = Request::GetEndpoint {
                container_id: env.container_id.clone(),
                ifname: env.ifname.clone(),
            };
            let resp = call(&conf, &req).await.map_err(with_v)?;
            if !resp.ok {
                return Err(with_v(api_error(resp)));
            }
            let ep = api::endpoint(resp).map_err(|e| with_v(CniError::new(E_ATTACHMENT, e)))?;
            match netlink::container_address(Path::new(&env.netns), &env.ifname).await {
                Ok(Some((ip, len))) if ip == ep.ip && len == ep.prefix_len => Ok(None),
                Ok(Some((ip, len))) => Err(with_v(CniError::new(
                    E_ATTACHMENT,
                    format!(
                        "{} has {ip}/{len}, expected {}/{}",
                        env.ifname, ep.ip, ep.prefix_len
                    ),
                ))),
                Ok(None) => Err(with_v(CniError::new(
                    E_ATTACHMENT,
                    format!("{} is missing from {}", env.ifname, env.netns),
                ))),
                Err(e) => Err(with_v(CniError::new(E_ATTACHMENT, e.to_string()))),
            }
        }
        "STATUS" => {
            let resp = call(&conf, &Request::Status).await.map_err(with_v)?;
            let registered = resp.ok && resp.result.as_ref().is_some_and(|r| !r["lease"].is_null());
            if registered {
                Ok(None)
            } else {
                Err(with_v(CniError::new(
                    E_NOT_AVAILABLE,
                    "overlayd is running but not registered in etcd yet: check its etcd connection",
                )))
            }
        }
        "GC" => {
            let valid: BTreeSet<(String, String)> = conf
                .valid_attachments
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|a| (a.container_id, a.ifname))
                .collect();
            let resp = call(&conf, &Request::ListEndpoints).await.map_err(with_v)?;
            if !resp.ok {
                return Err(with_v(api_error(resp)));
            }
            let eps: Vec<LocalEndpoint> = resp
                .result
                .and_then(|r| serde_json::from_value(r).ok())
                .unwrap_or_default();
            for ep in eps {
                let ours = ep.network == conf.network() && ep.owner.as_deref() == Some(OWNER);
                if ours && !valid.contains(&(ep.container_id.clone(), ep.ifname.clone())) {
                    let req = Request::DeleteEndpoint {
                        container_id: ep.container_id,
                        ifname: ep.ifname,
                    };
                    let resp = call(&conf, &req).await.map_err(with_v)?;
                    if !resp.ok {
                        return Err(with_v(api_error(resp)));
                    }
                }
            }
            Ok(None)
        }
        "" => Err(with_v(CniError::new(
            E_BAD_ENV,
            "CNI_COMMAND is not set: the runtime must set it",
        ))),
        other => Err(with_v(CniError::new(
            E_BAD_ENV,
            format!("CNI_COMMAND {other:?} is not one of ADD, DEL, CHECK, STATUS, GC, VERSION"),
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_follow_the_requested_version() {
        let ep = LocalEndpoint {
            network: "red".into(),
            container_id: "c".into(),
            ifname: "eth0".into(),
            netns: "/run/netns/x".into(),
            ip: "198.19.1.2".parse().unwrap(),
            prefix_len: 24,
            gateway: "198.19.1.1".parse().unwrap(),
            mac: "0a:58:c6:13:01:02".parse().unwrap(),
            mtu: 1450,
            vni: 100,
            host_ifname: "ovl1".into(),
            host_mac: None,
            owner: None,
            services: Vec::new(),
        };
        let old = add_result("0.3.1", &ep);
        assert_eq!(old["ips"][0]["version"], "4");
        assert_eq!(old["cniVersion"], "0.3.1");
        let new = add_result("1.0.0", &ep);
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][1]["sandbox"], "/run/netns/x");
        assert!(new["interfaces"][0].get("sandbox").is_none());
        assert_eq!(add_result("1.1.0", &ep)["interfaces"][1]["mtu"], 1450);
    }

    #[test]
    fn bad_configs_get_the_right_codes() {
        assert_eq!(parse_conf(b"{").unwrap_err().1.code, E_DECODE);
        assert_eq!(
            parse_conf(br#"{"cniVersion":"0.2.0","name":"x"}"#)
                .unwrap_err()
                .1
                .code,
            E_INCOMPATIBLE_VERSION
        );
        assert_eq!(
            parse_conf(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().1.code,
            E_INVALID_CONFIG
        );
        let ipam = br#"{"cniVersion":"1.0.0","name":"x","ipam":{"type":"host-local"}}"#;
        assert_eq!(parse_conf(ipam).unwrap_err().1.code, E_INVALID_CONFIG);
        assert_eq!(
            parse_conf(br#"{"cniVersion":"1.0.0","name":"x"}"#)
                .unwrap()
                .network(),
            "x"
        );
    }
}
