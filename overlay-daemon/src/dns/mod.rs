//! DNS for the containers: every overlayd answers the containers on its host, on each
//! network's gateway address, port 53 (UDP and TCP). Names under the domain come from the
//! cluster's state this daemon already follows (`zone`): a service or container is
//! resolvable on every host as soon as the host's view has it. Other names are asked of the
//! host's resolvers (`upstream`). See docs/dns.md.

mod containers;
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

/// Makes the host ready to take the containers' queries (`route`). Until it has succeeded
/// the datapath must not hand queries over.
pub async fn prepare() -> Result<(), crate::netlink::NetlinkError> {
    route::ensure().await
}

/// How often gateways that could not be served are tried again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// Where the zone is served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serve {
    /// On every network's gateway (after `prepare`).
    Gateways,
    /// Nowhere: a control-plane-only node keeps the zone as a node would (what it costs,
    /// how fast names arrive), with no datapath to bring it queries.
    ZoneOnly,
}

/// What `<run-dir>/dns.json` says: how current the served names are.
#[derive(Debug, serde::Serialize)]
struct DnsStatus {
    /// The etcd revision the zone reflects.
    revision: i64,
    /// When the zone was last changed, microseconds since the Unix epoch.
    applied_at_us: u64,
    /// Names served (services and containers).
    names: usize,
}

/// Endpoint changes taken at once beyond which the zone is rebuilt apart instead.
const LARGE_DELTA: usize = 1024;

/// What the zone needs from one look at the view.
enum Work {
    Nothing,
    Full(
        Arc<crate::tables::ValidTables>,
        Vec<((String, IpAddr), zone::EndpointDns)>,
    ),
    Delta {
        services: Option<Arc<crate::tables::ValidTables>>,
        endpoints: Vec<((String, IpAddr), Option<zone::EndpointDns>)>,
    },
}

/// Serves DNS until `stop`: the zone follows the cluster view; each network's gateway
/// addresses get their sockets while the network exists (`Serve::Gateways`).
pub async fn run(cfg: DnsConfig, cluster: Arc<Cluster>, serve: Serve, stop: CancellationToken) {
    let resolver = Arc::new(Resolver::new(
        cfg.domain.clone(),
        Upstream::new(cfg.upstreams.clone()),
    ));
    if serve == Serve::Gateways {
        info!(domain = %cfg.domain, upstreams = ?cfg.upstreams, "DNS served on every network's gateway");
    }
    cluster.view.lock().await.follow_dns();
    let node = cluster.node_name();
    let run_dir = crate::json_dir::JsonDir::open(cluster.run_dir());
    // Networks, nodes and services validated: judged again only when one changed (a node
    // change marks the services, which are checked against nodes).
    let mut base: Option<Arc<crate::tables::ValidTables>> = None;
    let mut changes = cluster.applied.subscribe();
    changes.mark_changed();
    let mut serving: BTreeMap<(String, SocketAddr), CancellationToken> = BTreeMap::new();
    let mut refused: BTreeSet<(String, SocketAddr)> = BTreeSet::new();
    let mut shared: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut wanted: BTreeSet<(String, SocketAddr)> = BTreeSet::new();
    loop {
        // A retry binds the refused gateways again; only a change touches the zone.
        let retry = tokio::select! {
            _ = stop.cancelled() => break,
            changed = changes.changed() => if changed.is_err() { break } else { false },
            _ = tokio::time::sleep(RETRY), if !refused.is_empty() => true,
        };
        let started = std::time::Instant::now();
        if !retry {
            // Copied under the lock, validated and applied outside it: the reconciler and
            // the API wait for the view while it is held.
            let (work, revision) = {
                let mut view = cluster.view.lock().await;
                if view.revision == 0 {
                    continue;
                }
                let dirty = view.take_dns_dirty();
                // An endpoint is served as validation would keep it, against these.
                if dirty.full || dirty.services || base.is_none() {
                    base = Some(Arc::new(view.dns_base()));
                }
                let base = base.clone().unwrap_or_default();
                // A large batch (a bulk load arriving as watch events) is built apart, not
                // applied while queries wait on the zone.
                let work = match dirty.full || dirty.endpoints.len() > LARGE_DELTA {
                    true => {
                        let endpoints = view.dns_endpoints(&base, node);
                        Work::Full(base, endpoints)
                    }
                    false if dirty.endpoints.is_empty() && !dirty.services => Work::Nothing,
                    false => Work::Delta {
                        endpoints: dirty
                            .endpoints
                            .into_iter()
                            .map(|(n, ip)| {
                                let dns = view.dns_endpoint(&base, &n, ip, node);
                                ((n, ip), dns)
                            })
                            .collect(),
                        services: dirty.services.then_some(base),
                    },
                };
                (work, view.revision)
            };
            let names = match work {
                Work::Nothing => None,
                Work::Full(base, endpoints) => {
                    let mut zone = zone::Zone::new(cfg.domain.clone(), &base);
                    for ((network, ip), dns) in endpoints {
                        zone.set_endpoint(&network, ip, Some(dns));
                    }
                    let names = zone.len();
                    resolver.set_zone(zone);
                    // Off the runtime's workers: it takes the allocator's locks a while.
                    tokio::task::spawn_blocking(crate::memory::release_freed);
                    if serve == Serve::Gateways {
                        wanted = gateways(&base, &mut shared);
                    }
                    Some(names)
                }
                Work::Delta {
                    services,
                    endpoints,
                } => resolver.update(|zone| {
                    if let Some(base) = &services {
                        zone.set_services(base);
                    }
                    for ((network, ip), dns) in endpoints {
                        zone.set_endpoint(&network, ip, dns);
                    }
                    Some(zone.len())
                }),
            };
            // Stamped when the zone was changed, not when it was looked at.
            if let Some(names) = names {
                let status = DnsStatus {
                    revision,
                    applied_at_us: crate::daemon::status::unix_us(),
                    names,
                };
                if let Err(e) = run_dir.save("dns", &status) {
                    warn!(path = %run_dir.path("dns").display(), "writing DNS status: {e}");
                }
            }
        }
        if serve == Serve::Gateways {
            bind(&resolver, &wanted, &mut serving, &mut refused, &stop).await;
        }
        // Under churn (changes arrived while this look ran), at most half the time goes to
        // the zone: changes meanwhile are coalesced into the next look. A change on a quiet
        // cluster is looked at at once.
        if changes.has_changed().unwrap_or(false) {
            let spent = started.elapsed();
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(spent) => {}
            }
        }
    }
    // Nothing served any more: queries meet the unreachable defaults until a daemon binds
    // again (never another local socket).
    for ((_, addr), token) in &serving {
        token.cancel();
        if let Err(e) = route::unserve(addr.ip()).await {
            warn!("DNS: {e}");
        }
    }
}

/// The gateway sockets the networks want: a gateway address two networks share (they may
/// overlap) could not tell whose container asks, so neither is served there (`shared`:
/// those already warned about).
fn gateways(
    base: &crate::tables::ValidTables,
    shared: &mut BTreeSet<SocketAddr>,
) -> BTreeSet<(String, SocketAddr)> {
    let gateways: Vec<(String, SocketAddr)> = base
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
    let mut count: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (_, addr) in &gateways {
        *count.entry(*addr).or_default() += 1;
    }
    let wanted = gateways
        .into_iter()
        .filter(|(network, addr)| {
            let alone = count[addr] == 1;
            if !alone && !shared.contains(addr) {
                warn!(%network, gateway = %addr.ip(), "DNS not served on a gateway address another network has too");
            }
            alone
        })
        .collect();
    *shared = count
        .into_iter()
        .filter_map(|(a, n)| (n > 1).then_some(a))
        .collect();
    wanted
}

/// Binds what is wanted and not served, unbinds what is served and no longer wanted.
async fn bind(
    resolver: &Arc<Resolver>,
    wanted: &BTreeSet<(String, SocketAddr)>,
    serving: &mut BTreeMap<(String, SocketAddr), CancellationToken>,
    refused: &mut BTreeSet<(String, SocketAddr)>,
    stop: &CancellationToken,
) {
    let gone: Vec<(String, SocketAddr)> = serving
        .keys()
        .filter(|k| !wanted.contains(*k))
        .cloned()
        .collect();
    for key in gone {
        if let Some(token) = serving.remove(&key) {
            token.cancel();
        }
        if let Err(e) = route::unserve(key.1.ip()).await {
            warn!("DNS: {e}");
        }
    }
    refused.retain(|key| wanted.contains(key));
    for key in wanted.iter().cloned() {
        if serving.contains_key(&key) {
            continue;
        }
        let token = stop.child_token();
        let served = match server::serve(resolver.clone(), key.0.clone(), key.1, token.clone()) {
            // TCP gets its local route only with its listener bound: without one (a host
            // resolver's wildcard listener holds the port) TCP queries stay unreachable
            // rather than reach that resolver.
            Ok(bound) => {
                let mut r = route::serve(key.1.ip(), route::Proto::Udp).await;
                if bound.tcp && r.is_ok() {
                    r = route::serve(key.1.ip(), route::Proto::Tcp).await;
                }
                r.map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match served {
            Ok(()) => {
                refused.remove(&key);
                serving.insert(key, token);
            }
            // Said once per address; tried again every RETRY.
            Err(e) => {
                token.cancel();
                if refused.insert(key.clone()) {
                    warn!(network = %key.0, addr = %key.1, "DNS: cannot serve this gateway: {e}");
                }
            }
        }
    }
}
