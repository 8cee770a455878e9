//! CNI results and errors (spec 1.1.0, with the fields older versions need).

use std::net::IpAddr;

use overlay_api::{error::one_line, MacAddr};
use serde::{Deserialize, Serialize};

/// Error codes of the spec, and ours (100+).
pub mod code {
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    pub const BAD_ENV: u32 = 4;
    pub const DECODE: u32 = 6;
    pub const INVALID_CONFIG: u32 = 7;
    pub const TRY_AGAIN: u32 = 11;
    pub const NOT_AVAILABLE: u32 = 50;
    /// Plugin-specific: the attachment could not be made or checked.
    pub const ATTACHMENT: u32 = 100;
}

/// A CNI error: the spec's code and a message that says what to fix.
#[derive(Clone, Debug, PartialEq, Eq)]
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

    pub fn details(mut self, d: impl Into<String>) -> Self {
        self.details = d.into();
        self
    }

    /// The error object printed on stdout.
    pub fn to_result(&self, version: &str) -> ErrorResult {
        ErrorResult {
            cni_version: version.to_owned(),
            code: self.code,
            msg: self.msg.clone(),
            details: self.details.clone(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    pub code: u32,
    pub msg: String,
    pub details: String,
}

/// The VERSION answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(rename = "supportedVersions")]
    pub supported_versions: Vec<String>,
}

/// The ADD answer (also what a chained plugin finds in `prevResult`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion")]
    pub cni_version: String,
    #[serde(default)]
    pub interfaces: Vec<Interface>,
    #[serde(default)]
    pub ips: Vec<IpConfig>,
    #[serde(default)]
    pub routes: Vec<Route>,
    #[serde(default)]
    pub dns: Dns,
}

impl CniResult {
    /// A result the runtime hands back (`prevResult`). Only its structure is checked here:
    /// in a chain it also holds other plugins' interfaces and addresses, which are theirs to
    /// judge (an InfiniBand MAC, an address this plugin never gave), so they are kept as
    /// recorded. What CHECK compares is checked by [`Self::container_interface`].
    pub fn from_prev(value: &serde_json::Value) -> Result<Self, CniError> {
        Self::deserialize(value).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("prevResult: not a CNI result: {}", one_line(e)),
            )
        })
    }

    /// The interface `ifname` inside the container (the one with a `sandbox`), with its
    /// IPv4 addresses and prefix lengths. Its MAC and its addresses must be well formed
    /// (code 6 with a one-line reason otherwise); nothing else in the result is read.
    #[allow(clippy::type_complexity)]
    pub fn container_interface(
        &self,
        ifname: &str,
    ) -> Result<Option<(&Interface, Vec<(IpAddr, u8)>)>, CniError> {
        let bad = |what: String| CniError::new(code::DECODE, format!("prevResult: {what}"));
        let Some(index) = self
            .interfaces
            .iter()
            .position(|i| i.name == ifname && i.sandbox.is_some())
        else {
            return Ok(None);
        };
        let iface = &self.interfaces[index];
        if let Some(mac) = &iface.mac {
            mac.parse::<MacAddr>().map_err(|_| {
                bad(format!(
                    "interfaces[{index}].mac {mac:?} is not a MAC address"
                ))
            })?;
        }
        let mut addresses = Vec::new();
        for (i, ip) in self.ips.iter().enumerate() {
            if ip.interface != Some(index) {
                continue;
            }
            match parse_cidr(&ip.address) {
                Some((a, len)) => addresses.push((a, len)),
                None => {
                    return Err(bad(format!(
                        "ips[{i}].address {:?} is not ADDRESS/PREFIX",
                        ip.address
                    )))
                }
            }
        }
        Ok(Some((iface, addresses)))
    }
}

/// `ADDRESS/PREFIX` with a prefix the address family allows.
fn parse_cidr(s: &str) -> Option<(IpAddr, u8)> {
    let (addr, len) = s.split_once('/')?;
    let addr: IpAddr = addr.parse().ok()?;
    // Digits only: `u8::from_str` would take "+24".
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let len: u8 = len.parse().ok()?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (len <= max).then_some((addr, len))
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Since 1.1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The container's namespace path; absent for host interfaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// "4" or "6": only in results of versions before 1.0.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// CIDR notation: the address and its prefix length.
    pub address: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    pub dst: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}
