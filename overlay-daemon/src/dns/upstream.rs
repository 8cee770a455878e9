//! Names outside the overlay: asked of the host's resolvers (its resolv.conf, or
//! `--dns-upstream`), over UDP, each in turn until one answers; answers are cached for their
//! TTL (negative ones for their SOA's minimum), bounded in time and in number.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Mutex,
    time::{Duration, Instant},
};

use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::RData,
};
use tokio::net::UdpSocket;
use tracing::debug;

/// How long one upstream gets before the next is asked.
const TIMEOUT: Duration = Duration::from_millis(1500);
/// Longest time an answer is kept, whatever its TTL.
const MAX_TTL: u32 = 300;
/// Longest time a negative answer is kept.
const MAX_NEGATIVE_TTL: u32 = 30;
/// Most answers kept.
const MAX_ENTRIES: usize = 10_000;

/// The upstream resolvers named in resolv.conf text (`nameserver` lines), port 53.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A scoped IPv6 address (fe80::1%eth0) keeps only the address.
        .filter_map(|a| a.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Why a name could not be asked upstream.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream resolvers (none in resolv.conf, no --dns-upstream)")]
    None,
    #[error("no upstream resolver answered")]
    NoAnswer,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    name: String,
    qtype: u16,
    qclass: u16,
}

struct Cached {
    answer: Message,
    stored: Instant,
    expires: Instant,
}

pub struct Upstream {
    servers: Vec<SocketAddr>,
    cache: Mutex<HashMap<CacheKey, Cached>>,
}

impl Upstream {
    pub fn new(servers: Vec<SocketAddr>) -> Self {
        Self {
            servers,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn servers(&self) -> &[SocketAddr] {
        &self.servers
    }

    /// The upstream answer to `query` (recursion desired), from the cache if it is there.
    /// The answer's id is the caller's to set.
    pub async fn resolve(&self, query: &Query) -> Result<Message, UpstreamError> {
        let key = CacheKey {
            name: query.name().to_lowercase().to_ascii(),
            qtype: query.query_type().into(),
            qclass: query.query_class().into(),
        };
        if let Some(hit) = self.cached(&key) {
            return Ok(hit);
        }
        if self.servers.is_empty() {
            return Err(UpstreamError::None);
        }
        let mut ask = Message::query();
        ask.metadata.recursion_desired = true;
        ask.add_query(query.clone());
        // Answers up to what overlayd passes on over UDP, not 512 bytes.
        let mut edns = hickory_proto::op::Edns::new();
        edns.set_max_payload(1232);
        ask.set_edns(edns);
        let bytes = ask.to_vec().map_err(|_| UpstreamError::NoAnswer)?;
        for server in &self.servers {
            match tokio::time::timeout(TIMEOUT, exchange(*server, &bytes, ask.metadata.id)).await {
                Ok(Ok(answer)) => {
                    self.store(key, &answer);
                    return Ok(answer);
                }
                Ok(Err(e)) => debug!(%server, "upstream resolver: {e}"),
                Err(_) => debug!(%server, "upstream resolver timed out"),
            }
        }
        Err(UpstreamError::NoAnswer)
    }

    fn cached(&self, key: &CacheKey) -> Option<Message> {
        let cache = self.cache.lock().ok()?;
        let hit = cache.get(key)?;
        let now = Instant::now();
        if now >= hit.expires {
            return None;
        }
        // Records age while cached: their TTLs count down from what upstream said.
        let aged = now.duration_since(hit.stored).as_secs() as u32;
        let mut answer = hit.answer.clone();
        for r in answer
            .answers
            .iter_mut()
            .chain(answer.authorities.iter_mut())
            .chain(answer.additionals.iter_mut())
        {
            r.ttl = r.ttl.saturating_sub(aged);
        }
        Some(answer)
    }

    fn store(&self, key: CacheKey, answer: &Message) {
        let ttl = match answer.metadata.response_code {
            ResponseCode::NoError if !answer.answers.is_empty() => answer
                .answers
                .iter()
                .map(|r| r.ttl)
                .min()
                .unwrap_or(0)
                .min(MAX_TTL),
            ResponseCode::NoError | ResponseCode::NXDomain => answer
                .authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                    _ => None,
                })
                .unwrap_or(0)
                .min(MAX_NEGATIVE_TTL),
            // Failures are asked again.
            _ => 0,
        };
        if ttl == 0 || answer.metadata.truncation {
            return;
        }
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        let now = Instant::now();
        if cache.len() >= MAX_ENTRIES {
            cache.retain(|_, c| c.expires > now);
            if cache.len() >= MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(
            key,
            Cached {
                answer: answer.clone(),
                stored: now,
                expires: now + Duration::from_secs(ttl.into()),
            },
        );
    }
}

/// One question to one server, from a socket of its own (a fresh port per query).
async fn exchange(server: SocketAddr, bytes: &[u8], id: u16) -> std::io::Result<Message> {
    let bind: SocketAddr = match server {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("address"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("address"),
    };
    let sock = UdpSocket::bind(bind).await?;
    sock.connect(server).await?;
    sock.send(bytes).await?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = sock.recv(&mut buf).await?;
        // Anything but the answer to this id (a late answer, a spoof) is ignored.
        match Message::from_vec(&buf[..n]) {
            Ok(m) if m.metadata.id == id => return Ok(m),
            _ => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.com\nnameserver 192.0.2.53\nnameserver fe80::1%eth0\nnameserver nonsense\noptions ndots:2\n";
        assert_eq!(
            parse_resolv_conf(text),
            vec![
                "192.0.2.53:53".parse::<SocketAddr>().unwrap(),
                "[fe80::1]:53".parse().unwrap()
            ]
        );
    }
}
