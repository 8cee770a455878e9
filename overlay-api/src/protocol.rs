//! The wire protocol of `<run-dir>/overlayd.sock`: one JSON [`Request`] per line, one JSON
//! [`Response`] line back, on a socket only root can open (mode 0600).
//!
//! A response is `{"ok":true,"result":...}` or `{"ok":false,"error":"...","kind":"...",
//! "transient":bool}`. `kind` came with API version 2; a first-release daemon sends only
//! `error` and `transient`, which [`Response::into_result`] reads as `unavailable` or
//! `internal`, so a new client of an old daemon still decides by kind.

use std::{net::Ipv4Addr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ApiError, EndpointRequest, ErrorKind};

/// The version of this protocol, reported by `status`. Version 1 (the first release) had
/// no error kinds and no `check_endpoint`; version 3 answers endpoints without an IPv4
/// address (on IPv6-only networks); version 4 takes `default_route` in endpoint requests;
/// version 5 keeps their `pod`; version 6 their `name`, and answers endpoints with the
/// resolver to use (`dns`); version 7 enforces their `bandwidth`.
pub const API_VERSION: u32 = 7;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Allocates an address, makes the veth pair in `netns` and waits until the datapath has
    /// installed the endpoint. Answers an [`crate::Endpoint`].
    CreateEndpoint(EndpointRequest),
    /// Removes an endpoint (veth, address, datapath entries). Idempotent; answers the
    /// endpoint that was removed, or null.
    DeleteEndpoint {
        container_id: String,
        ifname: String,
    },
    /// One local endpoint.
    GetEndpoint {
        container_id: String,
        ifname: String,
    },
    /// Checks that the container still has the endpoint's interface with its address
    /// (CNI CHECK). Answers the endpoint.
    CheckEndpoint {
        container_id: String,
        ifname: String,
        netns: PathBuf,
    },
    /// Every local endpoint.
    ListEndpoints,
    /// The daemon's [`Status`].
    Status,
    /// The datapath's counters ([`Stats`]).
    Stats,
    /// Streams the datapath's events: a response line, then one JSON object per line
    /// (`{"type":"drop",...}`, `{"type":"trace",...}` or `{"type":"lost","count":N,...}`)
    /// until the client closes.
    Monitor(MonitorRequest),
}

/// What a monitor wants. `{"op":"monitor"}` alone (the first monitor clients) is drops only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorRequest {
    #[serde(default = "drops_only")]
    pub events: Vec<EventType>,
    /// Traces: one forwarded packet in `sample`, per CPU (at least 1).
    #[serde(default = "every_packet")]
    pub sample: u32,
}

impl Default for MonitorRequest {
    fn default() -> Self {
        Self {
            events: drops_only(),
            sample: every_packet(),
        }
    }
}

fn drops_only() -> Vec<EventType> {
    vec![EventType::Drop]
}

fn every_packet() -> u32 {
    1
}

/// The kinds of monitor events.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    /// Every dropped packet, with its reason.
    Drop,
    /// A sample of forwarded packets, with the decision taken.
    Trace,
}

impl Request {
    /// A short name for logs and metrics.
    pub fn op(&self) -> &'static str {
        match self {
            Request::CreateEndpoint(_) => "create_endpoint",
            Request::DeleteEndpoint { .. } => "delete_endpoint",
            Request::GetEndpoint { .. } => "get_endpoint",
            Request::CheckEndpoint { .. } => "check_endpoint",
            Request::ListEndpoints => "list_endpoints",
            Request::Status => "status",
            Request::Stats => "stats",
            Request::Monitor(_) => "monitor",
        }
    }
}

/// One response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Absent from a first-release daemon; a kind a later release added reads as absent
    /// too, so the error is then decided by `transient`, never lost to a parse failure.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "known_kind"
    )]
    pub kind: Option<ErrorKind>,
    /// Retrying later may succeed (what version 1 clients read instead of `kind`).
    #[serde(default)]
    pub transient: bool,
}

impl Response {
    pub fn success(result: impl Serialize) -> Self {
        Self {
            ok: true,
            result: Some(serde_json::to_value(result).unwrap_or_default()),
            error: None,
            kind: None,
            transient: false,
        }
    }

    pub fn failure(e: &ApiError) -> Self {
        Self {
            ok: false,
            result: None,
            error: Some(e.message.clone()),
            kind: Some(e.kind),
            transient: e.kind.is_transient(),
        }
    }

    /// The result, or the error with its kind.
    pub fn into_result(self) -> Result<serde_json::Value, ApiError> {
        if self.ok {
            return Ok(self.result.unwrap_or_default());
        }
        let kind = self.kind.unwrap_or(if self.transient {
            ErrorKind::Unavailable
        } else {
            ErrorKind::Internal
        });
        Err(ApiError::new(
            kind,
            self.error
                .unwrap_or_else(|| "overlayd gave no reason".into()),
        ))
    }
}

fn known_kind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<ErrorKind>, D::Error> {
    let kind = Option::<serde_json::Value>::deserialize(d)?;
    Ok(kind.and_then(|k| ErrorKind::deserialize(k).ok()))
}

/// What `status` answers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub node: String,
    /// The node's VTEP addresses, one of each family at most (an IPv4 one before 0.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vtep_ip6: Option<std::net::Ipv6Addr>,
    /// The node's etcd lease while it is registered.
    pub lease: Option<i64>,
    pub networks: usize,
    pub nodes: usize,
    pub endpoints: usize,
    pub local_endpoints: usize,
    pub rejected_entries: usize,
    /// What the last reconciliation left out, and why (one line each). Absent from
    /// first-release daemons.
    #[serde(default)]
    pub rejected: Vec<String>,
    pub generation: u64,
    pub applied_generation: u64,
    pub uptime_secs: u64,
    /// Absent from first-release daemons (version 1).
    #[serde(default = "first_version")]
    pub api_version: u32,
    /// The daemon's release. Absent from daemons before 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The layout of the pinned maps its programs use (`DATAPATH_LAYOUT` in
    /// overlay-common); absent from daemons before 0.2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath_layout: Option<u32>,
}

fn first_version() -> u32 {
    1
}

/// Packets and bytes, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    pub packets: u64,
    pub bytes: u64,
}

/// The datapath's counters by their stable labels (`overlay-common`'s `Direction` and
/// `DropReason`), in slot order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub traffic: Vec<(String, Count)>,
    pub drops: Vec<(String, Count)>,
}

impl Stats {
    pub fn traffic(&self, label: &str) -> Count {
        find(&self.traffic, label)
    }
    pub fn drops(&self, label: &str) -> Count {
        find(&self.drops, label)
    }
}

fn find(list: &[(String, Count)], label: &str) -> Count {
    list.iter()
        .find(|(l, _)| l == label)
        .map(|(_, c)| *c)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_monitor_request_asks_for_drops() {
        let old: Request = serde_json::from_str(r#"{"op":"monitor"}"#).unwrap();
        assert_eq!(old, Request::Monitor(MonitorRequest::default()));
        let traces: Request =
            serde_json::from_str(r#"{"op":"monitor","events":["trace"],"sample":10}"#).unwrap();
        let Request::Monitor(req) = traces else {
            panic!("{traces:?}")
        };
        assert_eq!((req.events, req.sample), (vec![EventType::Trace], 10));
    }

    #[test]
    fn first_release_errors_still_have_a_kind() {
        let old: Response =
            serde_json::from_str(r#"{"ok":false,"error":"etcd at x: down","transient":true}"#)
                .unwrap();
        assert_eq!(old.into_result().unwrap_err().kind, ErrorKind::Unavailable);
        let old: Response =
            serde_json::from_str(r#"{"ok":false,"error":"network \"x\" does not exist"}"#).unwrap();
        assert_eq!(old.into_result().unwrap_err().kind, ErrorKind::Internal);
    }

    #[test]
    fn a_kind_of_a_later_release_is_read_by_its_transient_flag() {
        let new: Response = serde_json::from_str(
            r#"{"ok":false,"error":"x","kind":"rate_limited","transient":true}"#,
        )
        .unwrap();
        assert_eq!(new.into_result().unwrap_err().kind, ErrorKind::Unavailable);
        let new: Response =
            serde_json::from_str(r#"{"ok":false,"error":"x","kind":"quota"}"#).unwrap();
        assert_eq!(new.into_result().unwrap_err().kind, ErrorKind::Internal);
    }

    #[test]
    fn failures_carry_kind_and_the_transient_flag_old_clients_read() {
        let r = Response::failure(&ApiError::new(ErrorKind::Unavailable, "not yet"));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "unavailable");
        assert_eq!(v["transient"], true);
        let r = Response::failure(&ApiError::new(ErrorKind::NotFound, "gone"));
        assert_eq!(serde_json::to_value(&r).unwrap()["transient"], false);
    }

    #[test]
    fn requests_keep_their_first_release_form() {
        let r: Request =
            serde_json::from_str(r#"{"op":"delete_endpoint","container_id":"c","ifname":"eth0"}"#)
                .unwrap();
        assert_eq!(r.op(), "delete_endpoint");
        let v = serde_json::to_value(Request::Status).unwrap();
        assert_eq!(v, serde_json::json!({"op": "status"}));
    }
}
