//! Command-line pieces shared by overlayd and overlayctl.

use std::path::PathBuf;

use clap::Args;

use crate::store::EtcdConfig;

/// How to reach etcd.
#[derive(Args, Clone, Debug)]
pub struct EtcdArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long,
        env = "OVERLAY_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Key prefix of this overlay in etcd.
    #[arg(long, env = "OVERLAY_ETCD_PREFIX", default_value = "/overlay")]
    pub etcd_prefix: String,
    /// CA certificate (PEM) to verify etcd with.
    #[arg(long, value_name = "FILE")]
    pub etcd_cacert: Option<PathBuf>,
    /// Client certificate (PEM) for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_key")]
    pub etcd_cert: Option<PathBuf>,
    /// Client key (PEM) for etcd.
    #[arg(long, value_name = "FILE", requires = "etcd_cert")]
    pub etcd_key: Option<PathBuf>,
    /// etcd user name.
    #[arg(long, env = "OVERLAY_ETCD_USER", requires = "etcd_password")]
    pub etcd_user: Option<String>,
    /// etcd password.
    #[arg(
        long,
        env = "OVERLAY_ETCD_PASSWORD",
        requires = "etcd_user",
        hide_env_values = true
    )]
    pub etcd_password: Option<String>,
}

impl EtcdArgs {
    pub fn config(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            cacert: self.etcd_cacert.clone(),
            cert: self.etcd_cert.clone(),
            key: self.etcd_key.clone(),
            user: self.etcd_user.clone(),
            password: self.etcd_password.clone(),
        }
    }
}

/// clap's error as one line: what is wrong, without the usage block.
pub fn one_line_error(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let line: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    line.join(" ").trim_start_matches("error: ").to_owned()
}

/// Datapath counters as `overlayd stats` and `overlayctl stats` print them: an object per
/// section, one key per counter in the datapath's order.
#[derive(serde::Serialize)]
pub struct Counters {
    pub traffic: Labelled,
    pub drops: Labelled,
}

/// Counters by label, serialized as an object in this order.
pub struct Labelled(pub Vec<(String, overlay_api::Count)>);

impl serde::Serialize for Labelled {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (label, count) in &self.0 {
            map.serialize_entry(label, count)?;
        }
        map.end()
    }
}

impl Counters {
    /// Rows for a COUNTER PACKETS BYTES table: drops prefixed `drop:`.
    pub fn rows(&self) -> Vec<Vec<String>> {
        let section = |l: &Labelled, prefix: &'static str| {
            l.0.iter()
                .map(move |(label, c)| {
                    vec![
                        format!("{prefix}{label}"),
                        c.packets.to_string(),
                        c.bytes.to_string(),
                    ]
                })
                .collect::<Vec<_>>()
        };
        let mut rows = section(&self.traffic, "");
        rows.extend(section(&self.drops, "drop:"));
        rows
    }
}

impl From<overlay_api::Stats> for Counters {
    fn from(s: overlay_api::Stats) -> Self {
        Self {
            traffic: Labelled(s.traffic),
            drops: Labelled(s.drops),
        }
    }
}

impl From<crate::maps::CounterSnapshot> for Counters {
    fn from(s: crate::maps::CounterSnapshot) -> Self {
        overlay_api::Stats::from(s).into()
    }
}

/// An error and its causes on one line, a cause left out where the message already says
/// it (errors that print their source as well as return it).
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
