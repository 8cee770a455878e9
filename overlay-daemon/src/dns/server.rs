//! The resolver's sockets and what it answers on them. One UDP socket and one TCP listener
//! per gateway address, bound with `IP_TRANSPARENT` (the host does not own the address: the
//! datapath hands it only the containers' queries, marked, and `route` delivers those
//! locally). A query is answered only to an endpoint of the network whose gateway it was
//! sent to; names of the domain come from the zone, anything else from upstream.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
    sync::{Arc, RwLock},
    time::Duration,
};

use hickory_proto::{
    op::{Edns, Message, MessageType, OpCode, ResponseCode},
    rr::Name,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    upstream::Upstream,
    zone::{Answer, Zone},
};

/// The largest UDP answer sent (RFC 9715's safe EDNS size); without EDNS, 512 bytes.
const MAX_UDP: usize = 1232;
/// Queries asked upstream at once (each holds a task and a socket).
const MAX_FORWARDS: usize = 256;
/// TCP connections served at once, and how long one may sit idle.
const MAX_TCP: usize = 64;
const TCP_IDLE: Duration = Duration::from_secs(10);
/// The longest a TCP connection is kept, however busy (a slot is not held for ever).
const TCP_LIFETIME: Duration = Duration::from_secs(30);

/// Encoded answers kept per network.
const MAX_ANSWERS: usize = 4096;

/// The zone and the answers already encoded from it, replaced together.
struct Current {
    zone: Zone,
    /// By network, then by the query's bytes after its id: the same question asked again
    /// (flags, name in the same case, EDNS) gets the same bytes with its own id.
    answers: RwLock<HashMap<String, Encoded>>,
}

/// Encoded answers by the query's bytes after its id.
type Encoded = HashMap<Vec<u8>, Vec<u8>>;

impl Current {
    fn cached(&self, network: &str, query: &[u8]) -> Option<Vec<u8>> {
        let answers = self.answers.read().ok()?;
        answers.get(network)?.get(&query[2..]).cloned()
    }

    fn remember(&self, network: &str, query: &[u8], answer: &[u8]) {
        if query.len() > 512 {
            return;
        }
        let Ok(mut answers) = self.answers.write() else {
            return;
        };
        let of_network = answers.entry(network.to_owned()).or_default();
        if of_network.len() >= MAX_ANSWERS {
            of_network.clear();
        }
        of_network.insert(query[2..].to_vec(), answer.to_vec());
    }
}

/// What every listener shares: the zone (changed as the cluster changes) and the upstream
/// resolvers.
pub struct Resolver {
    current: RwLock<Current>,
    pub upstream: Upstream,
    forwards: Arc<Semaphore>,
    tcp: Arc<Semaphore>,
}

impl Resolver {
    pub fn new(domain: Name, upstream: Upstream) -> Self {
        Self {
            current: RwLock::new(Current {
                zone: Zone::empty(domain),
                answers: RwLock::default(),
            }),
            upstream,
            forwards: Arc::new(Semaphore::new(MAX_FORWARDS)),
            tcp: Arc::new(Semaphore::new(MAX_TCP)),
        }
    }

    /// Answers from now on come from `zone`. The old one is dropped after the lock is
    /// released (at 100k endpoints that takes a while).
    pub fn set_zone(&self, zone: Zone) {
        let old = self.update(|z| std::mem::replace(z, zone));
        drop(old);
    }

    /// Changes the zone in place (queries wait meanwhile); the answers encoded from the
    /// zone before are forgotten. Returns what `change` returns.
    pub fn update<T>(&self, change: impl FnOnce(&mut Zone) -> T) -> T {
        let mut current = match self.current.write() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let out = change(&mut current.zone);
        current.answers = RwLock::default();
        out
    }

    /// The answer to one message from `src` on `network`'s gateway: `Done` (bytes to send,
    /// or nothing for what deserves no answer), or a question for upstream.
    pub fn respond(&self, network: &str, src: IpAddr, bytes: &[u8]) -> Outcome {
        // Too short for a header: nothing to answer to.
        if bytes.len() < 12 {
            return Outcome::Done(None);
        }
        // Held while answering (no await in here): a zone change waits for it.
        let current = match self.current.read() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        let zone = &current.zone;
        if zone.asks(network, src) {
            if let Some(mut answer) = current.cached(network, bytes) {
                answer[..2].copy_from_slice(&bytes[..2]);
                return Outcome::Done(Some(answer));
            }
        }
        let request = match Message::from_vec(bytes) {
            Ok(m) => m,
            Err(e) => {
                debug!(%src, "malformed DNS query: {e}");
                // A response (QR set) is never answered: that could loop.
                if bytes[2] & 0x80 != 0 {
                    return Outcome::Done(None);
                }
                let id = u16::from_be_bytes([bytes[0], bytes[1]]);
                let reply = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
                return Outcome::Done(reply.to_vec().ok());
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return Outcome::Done(None);
        }
        let mut reply = Message::response(request.metadata.id, request.metadata.op_code);
        reply.metadata.recursion_desired = request.metadata.recursion_desired;
        reply.metadata.recursion_available = true;
        reply.add_queries(request.queries.iter().cloned());
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(MAX_UDP as u16);
            reply.set_edns(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            reply.metadata.response_code = ResponseCode::NotImp;
            return Outcome::Done(reply.to_vec().ok());
        }
        let [query] = request.queries.as_slice() else {
            reply.metadata.response_code = ResponseCode::FormErr;
            return Outcome::Done(reply.to_vec().ok());
        };
        // Only the network's own endpoints (the datapath checked their source addresses).
        if !zone.asks(network, src) {
            reply.metadata.response_code = ResponseCode::Refused;
            return Outcome::Done(reply.to_vec().ok());
        }
        match zone.answer(network, query) {
            Answer::Records(records) => {
                reply.metadata.authoritative = true;
                if records.is_empty() {
                    reply.add_authority(zone.soa().clone());
                }
                reply.add_answers(records);
            }
            Answer::NxDomain => {
                reply.metadata.authoritative = true;
                reply.metadata.response_code = ResponseCode::NXDomain;
                reply.add_authority(zone.soa().clone());
            }
            Answer::Refused => {
                reply.metadata.response_code = ResponseCode::Refused;
            }
            Answer::Elsewhere => return Outcome::Upstream(Box::new(reply)),
        }
        let encoded = reply.to_vec().ok();
        if let Some(answer) = &encoded {
            current.remember(network, bytes, answer);
        }
        Outcome::Done(encoded)
    }

    /// Fills `reply` (the `Upstream` of `respond`) with the upstream answer; SERVFAIL at
    /// once when MAX_FORWARDS questions are out already.
    pub async fn forward(&self, mut reply: Message) -> Option<Vec<u8>> {
        let Ok(_permit) = self.forwards.clone().try_acquire_owned() else {
            reply.metadata.response_code = ResponseCode::ServFail;
            return reply.to_vec().ok();
        };
        self.forward_permitted(reply).await
    }

    /// `forward` for a caller holding a place among the questions out.
    async fn forward_permitted(&self, mut reply: Message) -> Option<Vec<u8>> {
        let query = reply.queries.first()?.clone();
        match self.upstream.resolve(&query).await {
            Ok(answer) => {
                reply.metadata.truncation = answer.metadata.truncation;
                reply.metadata.response_code = answer.metadata.response_code;
                reply.answers = answer.answers;
                reply.authorities = answer.authorities;
                reply.additionals = answer.additionals;
            }
            Err(e) => {
                debug!(name = %query.name(), "upstream: {e}");
                reply.metadata.response_code = ResponseCode::ServFail;
            }
        }
        reply.to_vec().ok()
    }
}

/// What `respond` made of a message.
pub enum Outcome {
    Done(Option<Vec<u8>>),
    Upstream(Box<Message>),
}

/// A UDP answer too big for the client (`limit`: what it takes): the header and question,
/// truncated (TC), so it asks again over TCP.
fn fit_udp(bytes: Vec<u8>, query: &[u8]) -> Vec<u8> {
    // Most answers fit 512 bytes: the query's EDNS size is read only for bigger ones.
    match bytes.len() <= 512 {
        true => bytes,
        false => truncate(bytes, udp_limit(query)),
    }
}

/// `bytes` cut to `limit` (records dropped, TC set) if longer.
fn truncate(bytes: Vec<u8>, limit: usize) -> Vec<u8> {
    if bytes.len() <= limit {
        return bytes;
    }
    match Message::from_vec(&bytes)
        .ok()
        .and_then(|m| m.truncate().to_vec().ok())
    {
        Some(t) => t,
        None => {
            // The header alone, with TC and no records.
            let mut h = bytes[..12].to_vec();
            h[2] |= 0x02;
            h[4..12].fill(0);
            h
        }
    }
}

/// The largest UDP answer the query's sender takes: 512 bytes without EDNS, its advertised
/// size with it (at least 512, at most MAX_UDP).
fn udp_limit(bytes: &[u8]) -> usize {
    if bytes.len() < 12 || u16::from_be_bytes([bytes[10], bytes[11]]) == 0 {
        return 512;
    }
    match Message::from_vec(bytes).ok().and_then(|m| m.edns) {
        Some(edns) => usize::from(edns.max_payload()).clamp(512, MAX_UDP),
        None => 512,
    }
}

/// A socket bound to an address the host does not own (`IP_TRANSPARENT`).
fn transparent(addr: SocketAddr, ty: socket2::Type) -> std::io::Result<socket2::Socket> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), ty, None)?;
    sock.set_reuse_address(true)?;
    let (level, name) = match addr {
        SocketAddr::V4(_) => (libc::SOL_IP, libc::IP_TRANSPARENT),
        SocketAddr::V6(_) => {
            sock.set_only_v6(true)?;
            (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
        }
    };
    let one: libc::c_int = 1;
    // SAFETY: a valid socket and a c_int option of the size given.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// What `serve` could bind.
pub struct Bound {
    /// The TCP listener too (UDP always).
    pub tcp: bool,
}

/// Serves `network`'s gateway address until `stop`; fails if the UDP socket cannot be
/// bound.
pub fn serve(
    resolver: Arc<Resolver>,
    network: String,
    addr: SocketAddr,
    stop: CancellationToken,
) -> std::io::Result<Bound> {
    let udp = Arc::new(UdpSocket::from_std(
        transparent(addr, socket2::Type::DGRAM)?.into(),
    )?);
    let network: Arc<str> = network.into();
    // TCP only carries what does not fit UDP: without it (a listener on the host's wildcard
    // address holds the port for TCP), UDP is still served.
    let tcp = transparent(addr, socket2::Type::STREAM).and_then(|s| {
        s.listen(128)?;
        TcpListener::from_std(s.into())
    });
    let bound = Bound { tcp: tcp.is_ok() };
    match tcp {
        Ok(tcp) => {
            tokio::spawn(serve_tcp(
                resolver.clone(),
                network.clone(),
                tcp,
                stop.clone(),
            ));
        }
        Err(e) => warn!(%network, %addr, "DNS over TCP not served on this gateway: {e}"),
    }
    // Two loops on the socket: the runtime's two workers answer side by side (measured:
    // 0.93 of dnsmasq's rate against 0.78 with two SO_REUSEPORT sockets, whose split of
    // the senders is uneven).
    for _ in 0..2 {
        tokio::spawn(serve_udp(
            resolver.clone(),
            network.clone(),
            udp.clone(),
            stop.clone(),
        ));
    }
    Ok(bound)
}

async fn serve_udp(
    resolver: Arc<Resolver>,
    network: Arc<str>,
    sock: Arc<UdpSocket>,
    stop: CancellationToken,
) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!("DNS socket: {e}");
                    continue;
                }
            },
        };
        let query = &buf[..n];
        match resolver.respond(&network, peer.ip(), query) {
            Outcome::Done(Some(reply)) => {
                let reply = fit_udp(reply, query);
                let _ = sock.send_to(&reply, peer).await;
            }
            Outcome::Done(None) => {}
            Outcome::Upstream(mut reply) => {
                let edns = udp_limit(query);
                // The task is spawned only with a place among the questions out: a flood of
                // names to ask upstream gets SERVFAIL, not a task each.
                let Ok(permit) = resolver.forwards.clone().try_acquire_owned() else {
                    reply.metadata.response_code = ResponseCode::ServFail;
                    if let Ok(bytes) = reply.to_vec() {
                        let _ = sock.send_to(&truncate(bytes, edns), peer).await;
                    }
                    continue;
                };
                let (resolver, sock) = (resolver.clone(), sock.clone());
                tokio::spawn(async move {
                    let bytes = resolver.forward_permitted(*reply).await;
                    drop(permit);
                    if let Some(bytes) = bytes {
                        let _ = sock.send_to(&truncate(bytes, edns), peer).await;
                    }
                });
            }
        }
    }
}

async fn serve_tcp(
    resolver: Arc<Resolver>,
    network: Arc<str>,
    listener: TcpListener,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    debug!("DNS listener: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = resolver.tcp.clone().try_acquire_owned() else {
            continue; // too many connections: this one is closed
        };
        let (resolver, network, stop) = (resolver.clone(), network.clone(), stop.clone());
        tokio::spawn(async move {
            let _permit = permit;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(TCP_LIFETIME) => {}
                _ = connection(&resolver, &network, stream, peer.ip()) => {}
            }
        });
    }
}

/// One TCP connection: length-prefixed messages (RFC 1035 4.2.2) until the client closes
/// it, sits idle, or sends what cannot be a message.
async fn connection(resolver: &Resolver, network: &str, mut stream: TcpStream, peer: IpAddr) {
    let mut buf = vec![0u8; 65535];
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let len = usize::from(u16::from_be_bytes(len));
        let msg = &mut buf[..len];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(msg)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let reply = match resolver.respond(network, peer, msg) {
            Outcome::Done(Some(reply)) => reply,
            Outcome::Done(None) => return,
            Outcome::Upstream(reply) => match resolver.forward(*reply).await {
                Some(reply) => reply,
                None => return,
            },
        };
        let Ok(n) = u16::try_from(reply.len()) else {
            return;
        };
        if stream.write_all(&n.to_be_bytes()).await.is_err()
            || stream.write_all(&reply).await.is_err()
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use hickory_proto::{op::Query, rr::RecordType};

    use super::*;
    use crate::tables::{EndpointIface, EndpointSpec, NetworkSpec, ValidTables};

    fn resolver() -> Resolver {
        let domain = Name::from_ascii("overlay.internal.").unwrap();
        let r = Resolver::new(domain.clone(), Upstream::new(Vec::new()));
        let tables = ValidTables {
            networks: [(
                "red".into(),
                NetworkSpec {
                    name: "red".into(),
                    vni: 100,
                    subnet: Some("198.19.1.0/24".parse().unwrap()),
                    gateway: None,
                    subnet6: None,
                    gateway6: None,
                },
            )]
            .into(),
            endpoints: vec![EndpointSpec {
                bandwidth: None,
                network: "red".into(),
                ip: Some([198, 19, 1, 2].into()),
                mac: None,
                node: "n1".into(),
                iface: EndpointIface::Unnamed,
                services: Vec::new(),
                ip6: None,
            }],
            ..ValidTables::default()
        };
        r.set_zone(Zone::build(domain, &tables, &Default::default()));
        r
    }

    const ME: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 1, 2));

    fn reply(outcome: Outcome) -> Message {
        match outcome {
            Outcome::Done(Some(bytes)) => Message::from_vec(&bytes).unwrap(),
            Outcome::Done(None) => panic!("no answer"),
            Outcome::Upstream(_) => panic!("asked upstream"),
        }
    }

    fn query(name: &str) -> Message {
        let mut m = Message::query();
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m
    }

    #[test]
    fn bad_messages_get_formerr_or_nothing() {
        let r = resolver();
        assert!(matches!(
            r.respond("red", ME, &[1, 2, 3]),
            Outcome::Done(None)
        ));
        let garbage = [0xab, 0xcd, 0x01, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff];
        let m = reply(r.respond("red", ME, &garbage));
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        // A response is never answered, malformed or not.
        let mut resp = garbage;
        resp[2] |= 0x80;
        assert!(matches!(r.respond("red", ME, &resp), Outcome::Done(None)));
        let answer = query("a.red.overlay.internal.").into_response();
        let bytes = answer.to_vec().unwrap();
        assert!(matches!(r.respond("red", ME, &bytes), Outcome::Done(None)));
        let mut two = query("a.red.overlay.internal.");
        two.add_query(Query::query(Name::from_ascii("b.").unwrap(), RecordType::A));
        let m = reply(r.respond("red", ME, &two.to_vec().unwrap()));
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        let mut status = query("a.red.overlay.internal.");
        status.metadata.op_code = OpCode::Status;
        let m = reply(r.respond("red", ME, &status.to_vec().unwrap()));
        assert_eq!(m.metadata.response_code, ResponseCode::NotImp);
    }

    #[test]
    fn only_the_networks_own_endpoints_are_answered() {
        let r = resolver();
        let q = query("nosuch.red.overlay.internal.").to_vec().unwrap();
        let m = reply(r.respond("red", ME, &q));
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
        assert!(m.metadata.authoritative);
        let stranger = IpAddr::V4(std::net::Ipv4Addr::new(198, 19, 1, 9));
        let m = reply(r.respond("red", stranger, &q));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let m = reply(r.respond("green", ME, &q));
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        let outside = query("example.com.").to_vec().unwrap();
        assert!(matches!(
            r.respond("red", ME, &outside),
            Outcome::Upstream(_)
        ));
    }

    #[test]
    fn udp_answers_too_big_are_truncated() {
        let mut m = query("a.red.overlay.internal.").into_response();
        for i in 0..30u8 {
            m.add_answer(hickory_proto::rr::Record::from_rdata(
                Name::from_ascii("a.red.overlay.internal.").unwrap(),
                5,
                hickory_proto::rr::RData::A(hickory_proto::rr::rdata::A([198, 19, 1, i].into())),
            ));
        }
        let bytes = m.to_vec().unwrap();
        assert!(
            bytes.len() > 512 && bytes.len() <= MAX_UDP,
            "{}",
            bytes.len()
        );
        let cut = Message::from_vec(&truncate(bytes.clone(), 512)).unwrap();
        assert!(cut.metadata.truncation && cut.answers.is_empty());
        // With EDNS the client takes up to MAX_UDP bytes.
        assert_eq!(truncate(bytes.clone(), MAX_UDP), bytes);
    }
}
