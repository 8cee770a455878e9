//! What the runtime hands the plugin: the network configuration on stdin and CNI_* in the
//! environment.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use overlay_api::{
    error::one_line,
    labels::{parse_service_labels, SERVICE_LABEL},
    DefaultRoute,
};
use serde::Deserialize;

use crate::{
    types::{code, CniError, CniResult},
    LATEST_VERSION, SUPPORTED_VERSIONS,
};

/// The network configuration this plugin reads (its plugin object of a conflist, with the
/// fields the runtime adds).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
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
    /// overlayd's API socket (default /run/overlay/overlayd.sock).
    #[serde(default)]
    pub socket: Option<PathBuf>,
    /// A smaller MTU than the overlay's.
    #[serde(default)]
    pub mtu: Option<u32>,
    /// Whether this attachment holds the container's default routes: absent, if the
    /// container has none yet (the first attachment); false, never; true, always (refused
    /// if another interface holds one).
    #[serde(rename = "defaultRoute", default)]
    pub default_route: Option<bool>,
    /// Must be absent or have no type: addresses come from the cluster IPAM.
    #[serde(default)]
    pub ipam: Option<Ipam>,
    /// GC: the attachments the runtime still knows.
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Conventional `args` (`{"cni": {"overlay.service": "web:80"}}`).
    #[serde(default)]
    pub args: Option<Args>,
    /// The result the runtime recorded for the attachment (CHECK, and DEL of some
    /// runtimes), as sent: only CHECK reads it ([`NetConf::prev_result`]), so a DEL never
    /// fails on it.
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<serde_json::Value>,
    /// What the runtime fills in for the capabilities the plugin's entry declares
    /// (`"capabilities": {"bandwidth": true}`).
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<RuntimeConfig>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct RuntimeConfig {
    /// The `bandwidth` capability's fields, as sent: read by [`NetConf::bandwidth`].
    #[serde(default)]
    pub bandwidth: Option<serde_json::Value>,
}

/// The `bandwidth` capability's fields (the reference plugin's), in the order
/// `Bandwidth::from_cni` takes them. Their case is not fixed: containerd sends Go's field
/// names (`IngressRate`), CRI-O and the spec `ingressRate`; Go's decoder, which the
/// reference plugin uses, ignores case, and so does this one.
const BANDWIDTH_FIELDS: [&str; 4] = ["ingressRate", "ingressBurst", "egressRate", "egressBurst"];

#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct Ipam {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct Args {
    /// Values of other plugins' keys can be anything; only ours is read.
    #[serde(default)]
    pub cni: BTreeMap<String, serde_json::Value>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// What `defaultRoute` asks of the daemon.
    pub fn default_route(&self) -> DefaultRoute {
        match self.default_route {
            None => DefaultRoute::IfNone,
            Some(false) => DefaultRoute::Never,
            Some(true) => DefaultRoute::Required,
        }
    }

    /// The overlay network: `network`, or the configuration's name when that is absent or
    /// empty.
    pub fn network(&self) -> &str {
        self.network
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(&self.name)
    }

    pub fn socket(&self) -> &Path {
        self.socket
            .as_deref()
            .unwrap_or(Path::new(overlay_api::DEFAULT_SOCKET))
    }

    /// The bandwidth limits the runtime asks for, checked (code 7 with what to fix).
    pub fn bandwidth(&self) -> Result<Option<overlay_api::Bandwidth>, CniError> {
        let bad = |msg: String| CniError::new(code::INVALID_CONFIG, msg);
        let Some(b) = self
            .runtime_config
            .as_ref()
            .and_then(|r| r.bandwidth.as_ref())
        else {
            return Ok(None);
        };
        let fields = match b {
            serde_json::Value::Null => return Ok(None),
            serde_json::Value::Object(fields) => fields,
            other => {
                return Err(bad(format!(
                    "runtimeConfig.bandwidth must be an object, not {other}"
                )))
            }
        };
        let mut values = [0u64; 4];
        for (key, value) in fields {
            let Some(i) = BANDWIDTH_FIELDS
                .iter()
                .position(|f| f.eq_ignore_ascii_case(key))
            else {
                return Err(bad(format!(
                    "runtimeConfig.bandwidth has an unknown field {key:?}: the fields are ingressRate, ingressBurst, egressRate, egressBurst"
                )));
            };
            values[i] = value.as_u64().ok_or_else(|| {
                bad(format!(
                    "runtimeConfig.bandwidth.{key} must be a whole number (bits per second, or bits), not {value}"
                ))
            })?;
        }
        let [ingress_rate, ingress_burst, egress_rate, egress_burst] = values;
        overlay_api::Bandwidth::from_cni(ingress_rate, ingress_burst, egress_rate, egress_burst)
            .map_err(bad)
    }

    /// The recorded result, checked (code 6 when it is not a CNI result); `None` when the
    /// runtime sent none.
    pub fn prev_result(&self) -> Result<Option<CniResult>, CniError> {
        self.prev_result
            .as_ref()
            .map(CniResult::from_prev)
            .transpose()
    }
}

/// What the runtime passed in the environment.
#[derive(Clone, Debug, Default)]
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

    /// Fails with the spec's code 4 naming every variable in `names` that is empty.
    pub fn require(&self, names: &[(&str, &str)]) -> Result<(), CniError> {
        let missing: Vec<&str> = names
            .iter()
            .filter(|(_, v)| v.is_empty())
            .map(|(n, _)| *n)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(CniError::new(
                code::BAD_ENV,
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

    /// The container's name where a runtime gives one without a pod: podman (CNI backend)
    /// passes `K8S_POD_NAME` alone, the container's name. None with a namespace (a pod).
    pub fn container_name(&self) -> Result<Option<String>, CniError> {
        let args = self.args_map();
        if args.get("K8S_POD_NAMESPACE").is_some_and(|v| !v.is_empty()) {
            return Ok(None);
        }
        Ok(self.pod_fields(&args)?.1)
    }

    /// The pod a CRI runtime names in CNI_ARGS (`K8S_POD_NAMESPACE`, `K8S_POD_NAME`,
    /// `K8S_POD_UID`): none unless both namespace and name are there.
    pub fn pod(&self) -> Result<Option<overlay_api::Pod>, CniError> {
        let (namespace, name, uid) = self.pod_fields(&self.args_map())?;
        Ok(namespace
            .zip(name)
            .map(|(namespace, name)| overlay_api::Pod {
                namespace,
                name,
                uid,
            }))
    }

    #[allow(clippy::type_complexity)]
    fn pod_fields(
        &self,
        args: &BTreeMap<String, String>,
    ) -> Result<(Option<String>, Option<String>, Option<String>), CniError> {
        let field = |key: &str| -> Result<Option<String>, CniError> {
            let Some(v) = args.get(key).filter(|v| !v.is_empty()) else {
                return Ok(None);
            };
            if v.len() > MAX_POD_FIELD || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
                return Err(CniError::new(
                    code::INVALID_CONFIG,
                    format!("CNI_ARGS {key} must be at most {MAX_POD_FIELD} printable characters without spaces"),
                ));
            }
            Ok(Some(v.clone()))
        };
        Ok((
            field("K8S_POD_NAMESPACE")?,
            field("K8S_POD_NAME")?,
            field("K8S_POD_UID")?,
        ))
    }
}

/// The longest pod name, namespace or UID taken (Kubernetes' own limit is 253).
const MAX_POD_FIELD: usize = 253;

/// `overlay.service=NAME:PORT[,NAME:PORT...]` from CNI_ARGS and the config's `args.cni`.
pub fn service_labels(conf: &NetConf, env: &CniEnv) -> Result<Vec<String>, CniError> {
    let mut raw: Vec<String> = env
        .args_map()
        .get(SERVICE_LABEL)
        .cloned()
        .into_iter()
        .collect();
    let invalid = || {
        CniError::new(
            code::INVALID_CONFIG,
            format!("args.cni.{SERVICE_LABEL} must be \"NAME:PORT\" or a list of them"),
        )
    };
    match conf.args.as_ref().and_then(|a| a.cni.get(SERVICE_LABEL)) {
        None => {}
        Some(serde_json::Value::String(s)) => raw.push(s.clone()),
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                raw.push(item.as_str().ok_or_else(invalid)?.to_owned());
            }
        }
        Some(_) => return Err(invalid()),
    }
    parse_service_labels(raw.iter().map(String::as_str))
        .map_err(|e| CniError::new(code::INVALID_CONFIG, format!("{SERVICE_LABEL}: {e}")))
}

/// Parses and checks the config. On error, the version to answer in comes with it (the
/// config's own when it could be read).
pub fn parse(stdin: &[u8]) -> Result<NetConf, (String, CniError)> {
    let conf: NetConf = serde_json::from_slice(stdin).map_err(|e| {
        (
            LATEST_VERSION.to_owned(),
            CniError::new(
                code::DECODE,
                format!("network configuration is not valid JSON: {}", one_line(e)),
            ),
        )
    })?;
    let version = if conf.cni_version.is_empty() {
        LATEST_VERSION.to_owned()
    } else {
        conf.cni_version.clone()
    };
    let fail = |code, msg: String| Err((version.clone(), CniError::new(code, msg)));
    if !SUPPORTED_VERSIONS.contains(&conf.cni_version.as_str()) {
        return fail(
            code::INCOMPATIBLE_VERSION,
            format!(
                "cniVersion {:?} is not supported: use one of {}",
                conf.cni_version,
                SUPPORTED_VERSIONS.join(", ")
            ),
        );
    }
    if conf.network().is_empty() {
        return fail(
            code::INVALID_CONFIG,
            "the configuration needs a \"name\" (or a \"network\")".into(),
        );
    }
    if conf
        .ipam
        .as_ref()
        .and_then(|i| i.kind.as_deref())
        .is_some_and(|t| !t.is_empty())
    {
        return fail(
            code::INVALID_CONFIG,
            "overlay-cni allocates addresses from the cluster IPAM: remove the \"ipam\" section"
                .into(),
        );
    }
    if conf.mtu.is_some_and(|m| !(576..=9000).contains(&m)) {
        return fail(
            code::INVALID_CONFIG,
            "\"mtu\" must be between 576 and 9000".into(),
        );
    }
    Ok(conf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bandwidth_fields_in_any_case_or_one_line_errors() {
        let conf = |bw: &str| -> NetConf {
            serde_json::from_str(&format!(r#"{{"runtimeConfig":{{"bandwidth":{bw}}}}}"#)).unwrap()
        };
        // containerd's go-cni (Go field names), and the spec's.
        let go = conf(
            r#"{"IngressRate":8000000,"IngressBurst":4294967295,"EgressRate":0,"EgressBurst":0}"#,
        );
        let bw = go.bandwidth().unwrap().unwrap();
        assert_eq!(bw.ingress.unwrap().rate_bps, 8_000_000);
        assert_eq!(bw.egress, None);
        let spec = conf(r#"{"egressRate":1000000}"#)
            .bandwidth()
            .unwrap()
            .unwrap();
        assert_eq!(spec.egress.unwrap().rate_bps, 1_000_000);
        assert_eq!(conf("null").bandwidth().unwrap(), None);
        for (bad, says) in [
            (r#"{"ingressRate":-1}"#, "must be a whole number"),
            (r#"{"ingress":5}"#, "unknown field \"ingress\""),
            (r#""8M""#, "must be an object"),
        ] {
            let e = conf(bad).bandwidth().unwrap_err();
            assert_eq!(e.code, code::INVALID_CONFIG);
            assert!(e.msg.contains(says) && !e.msg.contains('\n'), "{}", e.msg);
        }
    }

    #[test]
    fn pods_come_from_the_k8s_args() {
        let env = |args: &str| CniEnv {
            args: args.into(),
            ..CniEnv::default()
        };
        let containerd = "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0;\
                          K8S_POD_INFRA_CONTAINER_ID=abc;K8S_POD_UID=9f1c";
        let pod = env(containerd).pod().unwrap().unwrap();
        assert_eq!(pod.to_string(), "default/web-0");
        assert_eq!(pod.uid.as_deref(), Some("9f1c"));
        // A name without a namespace (or neither) is no pod; podman passes neither.
        assert_eq!(env("K8S_POD_NAME=web-0").pod().unwrap(), None);
        assert_eq!(env("IgnoreUnknown=1").pod().unwrap(), None);
        let long = format!("K8S_POD_NAMESPACE=a;K8S_POD_NAME={}", "x".repeat(300));
        assert_eq!(env(&long).pod().unwrap_err().code, code::INVALID_CONFIG);
        assert!(env("K8S_POD_NAMESPACE=a b;K8S_POD_NAME=c").pod().is_err());
    }

    #[test]
    fn bad_configs_get_the_right_codes() {
        assert_eq!(parse(b"{").unwrap_err().1.code, code::DECODE);
        assert_eq!(
            parse(br#"{"cniVersion":"0.2.0","name":"x"}"#)
                .unwrap_err()
                .1
                .code,
            code::INCOMPATIBLE_VERSION
        );
        assert_eq!(
            parse(br#"{"cniVersion":"1.0.0"}"#).unwrap_err().1.code,
            code::INVALID_CONFIG
        );
        // An empty "network" is no network: the name stands in, and without one it fails.
        assert_eq!(
            parse(br#"{"cniVersion":"1.0.0","network":""}"#)
                .unwrap_err()
                .1
                .code,
            code::INVALID_CONFIG
        );
        assert_eq!(
            parse(br#"{"cniVersion":"1.0.0","name":"x","network":""}"#)
                .unwrap()
                .network(),
            "x"
        );
        let ipam = br#"{"cniVersion":"1.0.0","name":"x","ipam":{"type":"host-local"}}"#;
        assert_eq!(parse(ipam).unwrap_err().1.code, code::INVALID_CONFIG);
        let mtu = br#"{"cniVersion":"1.0.0","name":"x","mtu":100}"#;
        assert_eq!(parse(mtu).unwrap_err().1.code, code::INVALID_CONFIG);
        assert_eq!(
            parse(br#"{"cniVersion":"1.0.0","name":"x"}"#)
                .unwrap()
                .network(),
            "x"
        );
    }

    #[test]
    fn labels_come_from_args_and_the_environment() {
        let conf = parse(
            br#"{"cniVersion":"1.0.0","name":"x","args":{"cni":{"overlay.service":["a:1","b:2"],"other":{"x":1}}}}"#,
        )
        .unwrap();
        let env = CniEnv {
            args: "IgnoreUnknown=1;overlay.service=c:3".into(),
            ..Default::default()
        };
        assert_eq!(service_labels(&conf, &env).unwrap(), ["c:3", "a:1", "b:2"]);
        let bad =
            parse(br#"{"cniVersion":"1.0.0","name":"x","args":{"cni":{"overlay.service":5}}}"#)
                .unwrap();
        assert_eq!(
            service_labels(&bad, &CniEnv::default()).unwrap_err().code,
            code::INVALID_CONFIG
        );
    }
}
