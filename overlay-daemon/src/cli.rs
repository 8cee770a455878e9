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
