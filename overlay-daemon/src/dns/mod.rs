//! DNS for the containers: every overlayd answers the containers on its host, on each
//! network's gateway address, port 53 (UDP and TCP). Names under the domain come from the
//! cluster's state this daemon already follows (`zone`): a service or container is
//! resolvable on every host as soon as the host's view has it. Other names are asked of the
//! host's resolvers (`upstream`). See docs/dns.md.

pub mod route;
pub mod server;
pub mod upstream;
pub mod zone;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hickory_proto::rr::Name;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cluster::Cluster;
use server::Resolver;
use upstream::Upstream;

/// The default domain: `<service>.<network>.overlay.internal`.
pub const DEFAULT_DOMAIN: &str = "overlay.internal";

/// What the daemon is told about DNS.
#[derive(Clone, Debug)]
pub struct DnsConfig {
    /// The domain, absolute and lowercase.
    pub domain: Name,
    /// Where other names are asked.
    pub upstreams: Vec<SocketAddr>,
}

/// Why a DNS setting was refused.
#[derive(Debug, thiserror::Error)]
pub enum DnsConfigError {
    #[error("--dns-domain {0:?} is not a domain name: give labels of letters, digits and hyphens, e.g. overlay.internal")]
    Domain(String),
}

impl DnsConfig {
    /// The configuration for `domain`; upstreams given, or else the host's resolv.conf's
    /// (`resolv_conf`: its text).
    pub fn new(
        domain: &str,
        upstreams: Vec<IpAddr>,
        resolv_conf: Option<&str>,
    ) -> Result<Self, DnsConfigError> {
        let trimmed = domain.trim_end_matches('.');
        if !zone::valid_labels(trimmed) {
            return Err(DnsConfigError::Domain(domain.into()));
        }
        let name = Name::from_ascii(format!("{trimmed}."))
            .map_err(|_| DnsConfigError::Domain(domain.into()))?
            .to_lowercase();
        let upstreams = match upstreams.is_empty() {
            false => upstreams
                .into_iter()
                .map(|ip| SocketAddr::new(ip, 53))
                .collect(),
            true => resolv_conf
                .map(upstream::parse_resolv_conf)
                .unwrap_or_default(),
        };
        Ok(Self {
            domain: name,
            upstreams,
        })
    }

    /// The domain as runtimes write it in search lists (no trailing dot).
    pub fn domain_text(&self) -> String {
        self.domain.to_ascii().trim_end_matches('.').to_owned()
    }
}

/// Serves DNS until `stop`: the zone follows the cluster view; each network's gateway
/// addresses get their sockets while the network exists.
pub async fn run(cfg: DnsConfig, cluster: Arc<Cluster>, stop: CancellationToken) {
    if let Err(e) = route::ensure().await {
        warn!("DNS: the containers' queries cannot reach the resolver: {e}");
    }
    let resolver = Arc::new(Resolver::new(
        cfg.domain.clone(),
        Upstream::new(cfg.upstreams.clone()),
    ));
    info!(domain = %cfg.domain, upstreams = ?cfg.upstreams, "DNS served on every network's gateway");
    let mut changes = cluster.applied.subscribe();
    changes.mark_changed();
    let mut serving: BTreeMap<(String, SocketAddr), CancellationToken> = BTreeMap::new();
    let mut refused: BTreeSet<(String, SocketAddr)> = BTreeSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break },
        }
        let (tables, names) = {
            let view = cluster.view.lock().await;
            if view.revision == 0 {
                continue;
            }
            (view.tables(), view.dns_names())
        };
        let zone = zone::Zone::build(cfg.domain.clone(), &tables, &names);
        match resolver.zone.write() {
            Ok(mut z) => *z = Arc::new(zone),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(zone),
        }
        let wanted: BTreeSet<(String, SocketAddr)> = tables
            .networks
            .values()
            .flat_map(|n| {
                let v4 = n.gateway_ip().map(IpAddr::V4);
                let v6 = n.gateway_ip6().map(IpAddr::V6);
                v4.into_iter()
                    .chain(v6)
                    .map(|ip| (n.name.clone(), SocketAddr::new(ip, 53)))
            })
            .collect();
        serving.retain(|key, token| {
            let keep = wanted.contains(key);
            if !keep {
                token.cancel();
            }
            keep
        });
        refused.retain(|key| wanted.contains(key));
        for key in wanted {
            if serving.contains_key(&key) {
                continue;
            }
            let token = stop.child_token();
            match server::serve(resolver.clone(), key.0.clone(), key.1, token.clone()) {
                Ok(()) => {
                    refused.remove(&key);
                    serving.insert(key, token);
                }
                // Said once per address; tried again on the next change.
                Err(e) => {
                    if refused.insert(key.clone()) {
                        warn!(network = %key.0, addr = %key.1, "DNS: cannot serve this gateway: {e}");
                    }
                }
            }
        }
    }
    for token in serving.values() {
        token.cancel();
    }
}
