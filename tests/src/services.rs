//! Service backends and clients for load-balancing tests: servers that say who they are,
//! clients that check the answer came back intact, all running on threads inside the
//! namespaces (so thousands of connections cost no process spawns).

use std::{
    io::{ErrorKind, Read, Write},
    net::{
        IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
    },
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use crate::Netns;

/// A server thread, stopped and joined on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// A TCP server on `port` in `ns`: every connection gets `name` and a newline, then an echo
/// of everything it sends until it closes its side.
pub fn tcp_identity_server(ns: &Netns, port: u16, name: &str) -> Server {
    tcp_identity_server_at(ns, (Ipv4Addr::UNSPECIFIED, port).into(), name)
}

/// `tcp_identity_server` on IPv6 only (`[::]:port`, IPV6_V6ONLY as Linux leaves it: IPv4 too).
pub fn tcp_identity_server6(ns: &Netns, port: u16, name: &str) -> Server {
    tcp_identity_server_at(ns, (Ipv6Addr::UNSPECIFIED, port).into(), name)
}

fn tcp_identity_server_at(ns: &Netns, at: SocketAddr, name: &str) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let name = name.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let listener = TcpListener::bind(at).expect("bind backend listener");
        listener.set_nonblocking(true).expect("nonblocking");
        ready_tx.send(()).expect("ready");
        while !flag.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((conn, _)) => {
                    let name = name.clone();
                    std::thread::spawn(move || echo(conn, &name));
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    std::thread::sleep(Duration::from_millis(2))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("backend listening");
    Server {
        stop,
        handle: Some(handle),
    }
}

fn echo(mut conn: TcpStream, name: &str) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(60)));
    if conn.write_all(format!("{name}\n").as_bytes()).is_err() {
        return;
    }
    let mut buf = [0u8; 16 * 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
        }
    }
}

/// A UDP server on `port` in `ns` answering every datagram with `name:` and the datagram.
pub fn udp_identity_server(ns: &Netns, port: u16, name: &str) -> Server {
    udp_identity_server_at(ns, (Ipv4Addr::UNSPECIFIED, port).into(), name)
}

/// `udp_identity_server` on `[::]:port`.
pub fn udp_identity_server6(ns: &Netns, port: u16, name: &str) -> Server {
    udp_identity_server_at(ns, (Ipv6Addr::UNSPECIFIED, port).into(), name)
}

fn udp_identity_server_at(ns: &Netns, at: SocketAddr, name: &str) -> Server {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let name = name.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let sock = UdpSocket::bind(at).expect("bind UDP backend");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .expect("timeout");
        ready_tx.send(()).expect("ready");
        let mut buf = [0u8; 2048];
        while !flag.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let mut reply = format!("{name}:").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("UDP backend ready");
    Server {
        stop,
        handle: Some(handle),
    }
}

/// One short connection: sends `token`, half-closes, and checks the echo. Returns the name of
/// the backend that answered.
pub fn tcp_ask(addr: impl Into<SocketAddr>, token: &str) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(token.as_bytes())?;
    conn.shutdown(std::net::Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let (name, echoed) = reply
        .split_once('\n')
        .ok_or_else(|| std::io::Error::other(format!("reply {reply:?} has no name line")))?;
    if echoed != token {
        return Err(std::io::Error::other(format!(
            "backend {name} echoed {echoed:?} for {token:?}"
        )));
    }
    Ok(name.to_owned())
}

/// A long-lived connection through which messages are echoed.
pub struct Session {
    conn: TcpStream,
    pub backend: String,
}

impl Session {
    pub fn open(addr: impl Into<SocketAddr>) -> std::io::Result<Self> {
        let mut conn = TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let backend = read_name(&mut conn)?;
        Ok(Self { conn, backend })
    }

    /// The peer address the kernel reports for the connection (getpeername), of either
    /// family.
    pub fn peer_addr(&self) -> std::io::Result<SocketAddr> {
        self.conn.peer_addr()
    }

    /// The peer address the kernel reports for the connection (getpeername).
    pub fn peer(&self) -> std::io::Result<SocketAddrV4> {
        match self.conn.peer_addr()? {
            std::net::SocketAddr::V4(a) => Ok(a),
            other => Err(std::io::Error::other(format!("IPv6 peer {other}"))),
        }
    }

    /// Sends `msg` and checks it comes back whole.
    pub fn roundtrip(&mut self, msg: &[u8]) -> std::io::Result<()> {
        self.conn.write_all(msg)?;
        let mut back = vec![0u8; msg.len()];
        self.conn.read_exact(&mut back)?;
        if back != msg {
            return Err(std::io::Error::other("echo differs from what was sent"));
        }
        Ok(())
    }
}

/// One datagram to an IPv6 address from a fresh unconnected socket (`sendto`, `recvfrom`);
/// returns (reply source, reply text).
pub fn udp_ask6(addr: SocketAddr, msg: &str) -> std::io::Result<(SocketAddr, String)> {
    let sock = UdpSocket::bind(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0))?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send_to(msg.as_bytes(), addr)?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    Ok((from, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

/// One datagram from a fresh socket; returns (reply source, reply text).
pub fn udp_ask(addr: SocketAddrV4, msg: &str) -> std::io::Result<(SocketAddrV4, String)> {
    let sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    sock.connect(addr)?;
    sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    sock.send(msg.as_bytes())?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    let std::net::SocketAddr::V4(from) = from else {
        return Err(std::io::Error::other("IPv6 reply"));
    };
    Ok((from, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

/// A TCP connection to `addr` (either family) from local port `port` (SO_REUSEADDR, so a
/// port another connection uses can be given again), failing after `timeout` if no answer
/// comes.
pub fn connect_from(
    port: u16,
    addr: impl Into<SocketAddr>,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Socket, Type};
    let addr: SocketAddr = addr.into();
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM, None)?; // close-on-exec
    sock.set_reuse_address(true)?;
    // SO_SNDTIMEO bounds a blocking connect too.
    sock.set_write_timeout(Some(timeout))?;
    let local: SocketAddr = match addr {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, port).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, port).into(),
    };
    sock.bind(&local.into())?;
    sock.connect(&addr.into())?;
    let conn = TcpStream::from(sock);
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(conn)
}

/// Connects from `port` to `first`, then from the same port to `second` while the first is
/// open: what became of the second (its name, or the error kind), after checking that the
/// first still works.
pub fn same_port(ns: &Netns, port: u16, first: SocketAddr, second: SocketAddr) -> String {
    ns.spawn(move || -> Result<String, String> {
        let mut one = connect_from(port, first, Duration::from_secs(3))
            .map_err(|e| format!("{first} from port {port}: {e}"))?;
        read_name(&mut one).map_err(|e| format!("{first} name: {e}"))?;
        let outcome = match connect_from(port, second, Duration::from_secs(2)) {
            Ok(mut s) => match read_name(&mut s) {
                Ok(n) => format!("connected ({n})"),
                Err(e) => format!("connected, then {:?}", e.kind()),
            },
            Err(e) => format!("{:?}", e.kind()),
        };
        one.write_all(b"x")
            .map_err(|e| format!("{first} after: {e}"))?;
        let mut b = [0u8; 1];
        one.read_exact(&mut b)
            .map_err(|e| format!("{first} echo after: {e}"))?;
        Ok(outcome)
    })
    .join()
    .expect("client")
    .unwrap_or_else(|e| panic!("{e}"))
}

/// Reads the name line an identity server sends first.
pub fn read_name(conn: &mut TcpStream) -> std::io::Result<String> {
    let mut name = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        conn.read_exact(&mut byte)?;
        name.push(byte[0]);
    }
    name.pop();
    Ok(String::from_utf8_lossy(&name).into_owned())
}

/// One UDP datagram from `src` to `dst` sent on a raw socket (no UDP socket sends it, so no
/// socket hook sees it: the per-packet path must balance it), the reply read from a UDP
/// socket bound to `src`'s port. Returns (reply source, reply text).
pub fn raw_udp_ask(
    src: SocketAddrV4,
    dst: SocketAddrV4,
    msg: &str,
) -> std::io::Result<(SocketAddrV4, String)> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let reply_sock = UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, src.port()))?;
    reply_sock.set_read_timeout(Some(Duration::from_secs(2)))?;
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 17) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let raw = unsafe { OwnedFd::from_raw_fd(fd) };
    let datagram = udp_datagram(src, dst, msg.as_bytes());
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dst.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let sent = unsafe {
        libc::sendto(
            raw.as_raw_fd(),
            datagram.as_ptr().cast(),
            datagram.len(),
            0,
            (&to as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 2048];
    let (n, from) = reply_sock.recv_from(&mut buf)?;
    let std::net::SocketAddr::V4(from) = from else {
        return Err(std::io::Error::other("IPv6 reply"));
    };
    Ok((from, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

/// A UDP header and payload with the checksum over the IPv4 pseudo-header.
fn udp_datagram(src: SocketAddrV4, dst: SocketAddrV4, payload: &[u8]) -> Vec<u8> {
    let len = (8 + payload.len()) as u16;
    let mut d = Vec::with_capacity(len as usize);
    d.extend_from_slice(&src.port().to_be_bytes());
    d.extend_from_slice(&dst.port().to_be_bytes());
    d.extend_from_slice(&len.to_be_bytes());
    d.extend_from_slice(&[0, 0]);
    d.extend_from_slice(payload);
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            sum += hi | pair.get(1).map_or(0, |b| u32::from(*b));
        }
    };
    add(&src.ip().octets());
    add(&dst.ip().octets());
    add(&[0, 17]);
    add(&len.to_be_bytes());
    add(&d);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = match !(sum as u16) {
        0 => 0xffff,
        c => c,
    };
    d[6..8].copy_from_slice(&csum.to_be_bytes());
    d
}
