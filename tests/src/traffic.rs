//! Real traffic between namespaces: ping, TCP transfers with checksums, UDP, raw captures and
//! hand-made VXLAN. Every loop is bounded in time.

use std::{
    io::{Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
    },
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use sha2::{Digest, Sha256};

use crate::Netns;

/// `ping -c count` from inside `ns`; true if every reply came back.
pub fn ping(ns: &Netns, dst: impl Into<IpAddr>, count: u32) -> bool {
    ping_received(ns, dst, count) == count
}

/// How many of `count` pings came back.
pub fn ping_received(ns: &Netns, dst: impl Into<IpAddr>, count: u32) -> u32 {
    let dst: IpAddr = dst.into();
    let out = ns.output(
        "ping",
        &[
            "-c",
            &count.to_string(),
            "-i",
            "0.2",
            "-W",
            "1",
            "-q",
            &dst.to_string(),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            l.contains("received")
                .then(|| {
                    l.split(", ")
                        .nth(1)?
                        .split_whitespace()
                        .next()?
                        .parse()
                        .ok()
                })
                .flatten()
        })
        .unwrap_or(0)
}

/// A fast deterministic byte stream (xorshift64*), so sender and receiver need not share data.
struct Pattern(u64);

impl Pattern {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct Transfer {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Sends `bytes` of pseudo-random data over TCP from `client` to a listener in `server` at
/// `server_ip:port`; returns what each side saw. Panics on any socket error or timeout.
pub fn tcp_transfer(
    server: &Netns,
    client: &Netns,
    server_ip: impl Into<IpAddr>,
    port: u16,
    bytes: u64,
) -> (Transfer, Transfer) {
    tcp_stream(server, client, server_ip, port, Limit::Bytes(bytes))
}

/// How long a TCP stream runs.
#[derive(Clone, Copy, Debug)]
pub enum Limit {
    Bytes(u64),
    Duration(Duration),
}

/// A TCP stream with verified content, limited by size or by time.
pub fn tcp_stream(
    server: &Netns,
    client: &Netns,
    server_ip: impl Into<IpAddr>,
    port: u16,
    limit: Limit,
) -> (Transfer, Transfer) {
    tcp_stream_seeded(
        server,
        client,
        server_ip,
        port,
        limit,
        0x9e37_79b9_7f4a_7c15,
    )
}

/// `tcp_stream` with its own byte pattern: streams with different seeds never carry the
/// same bytes, so data of one arriving in another changes the checksum.
pub fn tcp_stream_seeded(
    server: &Netns,
    client: &Netns,
    server_ip: impl Into<IpAddr>,
    port: u16,
    limit: Limit,
    seed: u64,
) -> (Transfer, Transfer) {
    let server_ip: IpAddr = server_ip.into();
    let any: IpAddr = match server_ip {
        IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
        IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
    };
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let receiver = server.spawn(move || {
        let listener = TcpListener::bind(SocketAddr::new(any, port)).expect("bind TCP listener");
        ready_tx.send(()).expect("ready");
        let (mut conn, _) = listener.accept().expect("accept");
        conn.set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut hash = Sha256::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = conn
                .read(&mut buf)
                .expect("receiving: connection broken or stalled");
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
        }
        Transfer {
            bytes: total,
            sha256: hash.finalize().into(),
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("listener ready");
    let sender = client.spawn(move || {
        let addr = SocketAddr::new(server_ip, port);
        let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .expect("connect through the overlay");
        conn.set_write_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        let mut pattern = Pattern(seed | 1);
        let mut hash = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0u64;
        let start = Instant::now();
        loop {
            let n = match limit {
                Limit::Bytes(b) if total >= b => break,
                Limit::Bytes(b) => (b - total).min(buf.len() as u64) as usize,
                Limit::Duration(d) if start.elapsed() >= d => break,
                Limit::Duration(_) => 64 * 1024,
            };
            pattern.fill(&mut buf[..n]);
            conn.write_all(&buf[..n])
                .expect("sending: connection broken or stalled");
            hash.update(&buf[..n]);
            total += n as u64;
            if matches!(limit, Limit::Duration(_)) {
                // A steady stream rather than a flood, so a stall shows up as a timeout.
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        conn.shutdown(std::net::Shutdown::Write).expect("shutdown");
        Transfer {
            bytes: total,
            sha256: hash.finalize().into(),
        }
    });
    let sent = sender
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    let received = receiver
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p));
    (sent, received)
}

/// Listens for UDP on `port` in `ns` for `window` and returns the datagrams received. The
/// socket is bound when this returns (a datagram sent before would find no port, which made
/// tests flaky under load).
pub fn udp_receive(
    ns: &Netns,
    port: u16,
    window: Duration,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let (bound, is_bound) = std::sync::mpsc::channel();
    let listener = ns.spawn(move || {
        let sock =
            UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).expect("bind UDP");
        let _ = bound.send(());
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("timeout");
        let deadline = Instant::now() + window;
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while Instant::now() < deadline {
            if let Ok(n) = sock.recv(&mut buf) {
                got.push(buf[..n].to_vec());
            }
        }
        got
    });
    if is_bound.recv().is_err() {
        // The listener failed before binding: its panic says why.
        std::panic::resume_unwind(listener.join().unwrap_err());
    }
    listener
}

/// Sends one UDP datagram from inside `ns`, over IPv4 or IPv6 (whichever `dst` is; the
/// kernel picks the source address and, over IPv6, fills in the checksum).
pub fn udp_send(ns: &Netns, dst: impl Into<IpAddr>, port: u16, payload: Vec<u8>) {
    let dst: IpAddr = dst.into();
    ns.enter(move || {
        let any: IpAddr = match dst {
            IpAddr::V4(_) => Ipv4Addr::UNSPECIFIED.into(),
            IpAddr::V6(_) => Ipv6Addr::UNSPECIFIED.into(),
        };
        let sock = UdpSocket::bind(SocketAddr::new(any, 0)).expect("bind");
        sock.send_to(&payload, SocketAddr::new(dst, port))
            .expect("send UDP");
    });
}

/// Sends `frame` as it is out of `ifname` in `ns` (a raw AF_PACKET socket): a container
/// that forges what its kernel would not send.
pub fn send_frame(ns: &Netns, ifname: &str, frame: Vec<u8>) {
    let ifname = ifname.to_owned();
    ns.enter(move || {
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str()).expect("send interface");
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        let n = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send: {}",
            std::io::Error::last_os_error()
        );
    });
}

/// A raw AF_PACKET capture on `ifname` in `ns`, running for `window`; returns every frame.
pub fn capture(
    ns: &Netns,
    ifname: &str,
    window: Duration,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    let ifname = ifname.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
        assert!(
            fd >= 0,
            "packet socket: {}",
            std::io::Error::last_os_error()
        );
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let ifindex = nix::net::if_::if_nametoindex(ifname.as_str()).expect("capture interface");
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = ifindex as i32;
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            rc,
            0,
            "bind packet socket: {}",
            std::io::Error::last_os_error()
        );
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: 100_000,
        };
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::timeval>() as u32,
            );
        }
        ready_tx.send(()).expect("ready");
        let deadline = Instant::now() + window;
        let mut frames = Vec::new();
        let mut buf = vec![0u8; 65536 + 128];
        while Instant::now() < deadline {
            let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n > 0 {
                frames.push(buf[..n as usize].to_vec());
            }
        }
        frames
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("capture ready");
    handle
}

/// A parsed VXLAN frame as seen on the wire.
#[derive(Debug, Clone)]
pub struct VxlanFrame {
    pub outer_src: Ipv4Addr,
    pub outer_dst: Ipv4Addr,
    pub udp_src: u16,
    pub udp_dst: u16,
    pub udp_checksum: u16,
    pub flags: u8,
    pub vni: u32,
    pub inner: Vec<u8>,
}

/// Parses Ethernet/IPv4/UDP/VXLAN, if `frame` is that on `port`.
pub fn parse_vxlan(frame: &[u8], port: u16) -> Option<VxlanFrame> {
    if frame.len() < 14 + 20 + 8 + 8 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = ((ip[0] & 0x0f) as usize) * 4;
    if ip[9] != 17 || ip.len() < ihl + 16 {
        return None;
    }
    let udp = &ip[ihl..];
    let udp_dst = u16::from_be_bytes([udp[2], udp[3]]);
    if udp_dst != port {
        return None;
    }
    let vx = &udp[8..];
    Some(VxlanFrame {
        outer_src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        outer_dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        udp_src: u16::from_be_bytes([udp[0], udp[1]]),
        udp_dst,
        udp_checksum: u16::from_be_bytes([udp[6], udp[7]]),
        flags: vx[0],
        vni: u32::from_be_bytes([0, vx[4], vx[5], vx[6]]),
        inner: vx[8..].to_vec(),
    })
}

/// A parsed VXLAN-over-IPv6 frame as seen on the wire (an IPv6 underlay).
#[derive(Debug, Clone)]
pub struct Vxlan6Frame {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// The first 4 bytes of the IPv6 header: version, traffic class, flow label.
    pub version_class_flow: u32,
    /// The IPv6 payload length field.
    pub payload_len: u16,
    pub hop_limit: u8,
    pub outer_src: Ipv6Addr,
    pub outer_dst: Ipv6Addr,
    pub udp_src: u16,
    pub udp_dst: u16,
    /// The UDP length field.
    pub udp_len: u16,
    pub udp_checksum: u16,
    /// The whole 8-byte VXLAN header (flags, reserved, VNI, reserved).
    pub header: [u8; 8],
    pub flags: u8,
    pub vni: u32,
    pub inner: Vec<u8>,
    /// Bytes of the frame after the IPv6 header (to compare with `payload_len`).
    pub captured_payload: usize,
}

/// Parses Ethernet/IPv6/UDP/VXLAN (UDP straight after the IPv6 header, no extension
/// headers), if `frame` is that to `port`.
pub fn parse_vxlan6(frame: &[u8], port: u16) -> Option<Vxlan6Frame> {
    const IP: usize = 14;
    const UDP: usize = IP + 40;
    const VX: usize = UDP + 8;
    if frame.len() < VX + 8 || frame[12..14] != [0x86, 0xdd] || frame[IP + 6] != 17 {
        return None;
    }
    let be16 = |o: usize| u16::from_be_bytes([frame[o], frame[o + 1]]);
    let udp_dst = be16(UDP + 2);
    if udp_dst != port {
        return None;
    }
    let addr = |o: usize| Ipv6Addr::from(<[u8; 16]>::try_from(&frame[o..o + 16]).unwrap());
    let header: [u8; 8] = frame[VX..VX + 8].try_into().unwrap();
    Some(Vxlan6Frame {
        dst_mac: frame[0..6].try_into().unwrap(),
        src_mac: frame[6..12].try_into().unwrap(),
        version_class_flow: u32::from_be_bytes(frame[IP..IP + 4].try_into().unwrap()),
        payload_len: be16(IP + 4),
        hop_limit: frame[IP + 7],
        outer_src: addr(IP + 8),
        outer_dst: addr(IP + 24),
        udp_src: be16(UDP),
        udp_dst,
        udp_len: be16(UDP + 4),
        udp_checksum: be16(UDP + 6),
        header,
        flags: header[0],
        vni: u32::from_be_bytes([0, header[4], header[5], header[6]]),
        inner: frame[VX + 8..].to_vec(),
        captured_payload: frame.len() - UDP,
    })
}

/// `count` pings of `size` bytes of payload with DF set (`-M do`): whether all came back,
/// and the output (which says the MTU a "fragmentation needed" taught).
pub fn df_ping(ns: &Netns, dst: impl Into<IpAddr>, size: u32, count: u32) -> (bool, String) {
    let dst: IpAddr = dst.into();
    let out = ns.output(
        "ping",
        &[
            "-n",
            "-c",
            &count.to_string(),
            "-W",
            "2",
            "-M",
            "do",
            "-s",
            &size.to_string(),
            &dst.to_string(),
        ],
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// Builds an inner Ethernet/IPv4/UDP frame (checksums valid), for hand-made VXLAN.
pub fn inner_udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let tot = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&tot.to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let csum = checksum(&ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]); // UDP checksum optional over IPv4
    f.extend_from_slice(payload);
    f
}

/// A VXLAN header followed by `inner` (the UDP payload of a VXLAN packet).
pub fn vxlan_payload(vni: u32, flags: u8, inner: &[u8]) -> Vec<u8> {
    let v = vni.to_be_bytes();
    let mut p = vec![flags, 0, 0, 0, v[1], v[2], v[3], 0];
    p.extend_from_slice(inner);
    p
}

/// RFC 1071 Internet checksum.
pub fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// A whole Ethernet/IPv4/UDP frame around `payload` (e.g. a VXLAN packet on the underlay).
pub fn udp_frame(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = inner_udp_frame(
        [0x02, 0, 0, 0, 0, 2],
        [0x02, 0, 0, 0, 0, 1],
        src,
        dst,
        dport,
        payload,
    );
    f[34..36].copy_from_slice(&sport.to_be_bytes());
    f
}

/// An ARP request from (`mac`, `ip`) asking for `target`.
pub fn arp_request(mac: [u8; 6], ip: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&mac);
    f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1]);
    f.extend_from_slice(&mac);
    f.extend_from_slice(&ip.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f
}
