//! Half-closed connections on the per-packet path (`--socket-lb off`): a connection closed
//! by one side holds its translated tuple, and its port, until FINs went both ways, so a
//! direct connection given the same source port never takes it, however long the other side
//! takes to answer.

use std::{
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use overlay_common::{Direction, DropReason};
use overlay_daemon::maps::CounterSnapshot;
use overlay_tests::{lb::one_service, services::connect_from, topology::Topology};

const VIP: Ipv4Addr = Ipv4Addr::new(198, 19, 250, 20);

/// Per packet, a VIP connection the server has half-closed (its FIN sent, the client still
/// sending) keeps its tuple: a direct connection from the same port then gets a port of its
/// own instead of landing on the backend's half-closed socket, and the VIP connection's
/// last bytes still arrive whole.
#[test]
fn a_half_closed_vip_connection_keeps_its_tuple() {
    use std::io::{Read, Write};
    let (t, b1, listener) = backend_listening(8081);
    let server = std::thread::spawn(move || -> std::io::Result<(usize, String)> {
        let (mut vip_conn, _) = listener.accept()?;
        vip_conn.write_all(b"x")?;
        vip_conn.shutdown(std::net::Shutdown::Write)?;
        let (mut direct_conn, _) = listener.accept()?;
        direct_conn.write_all(b"y")?;
        drop(direct_conn);
        vip_conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut rest = Vec::new();
        vip_conn.read_to_end(&mut rest)?;
        Ok((
            rest.len(),
            String::from_utf8_lossy(&rest[..rest.len().min(8)]).into(),
        ))
    });
    let before = t.counters(1);
    let vip = SocketAddrV4::new(VIP, 80);
    let direct = SocketAddrV4::new(b1, 8081);
    let (mut first, got_first, got_second) = t
        .container("client")
        .ns
        .enter(
            move || -> std::io::Result<(std::net::TcpStream, Vec<u8>, Vec<u8>)> {
                let mut first = connect_from(20_030, vip, Duration::from_secs(3))?;
                let mut a = Vec::new();
                first.read_to_end(&mut a)?; // up to the server's FIN
                let mut second = connect_from(20_030, direct, Duration::from_secs(3))?;
                let mut b = Vec::new();
                second.read_to_end(&mut b)?;
                Ok((first, a, b))
            },
        )
        .unwrap_or_else(|e| panic!("client: {e}\n{:?}", t.counters(1)));
    assert_eq!(
        (got_first.as_slice(), got_second.as_slice()),
        (&b"x"[..], &b"y"[..])
    );
    first
        .write_all(&[b'z'; 1000])
        .expect("the half-closed connection sends on");
    first.shutdown(std::net::Shutdown::Write).expect("shutdown");
    let (n, head) = server.join().expect("server").expect("server side");
    assert_eq!(
        (n, head.as_str()),
        (1000, "zzzzzzzz"),
        "its last bytes arrived whole"
    );
    assert_eq!(
        remaps_since(&t, &before),
        1,
        "the direct connection got a port of its own"
    );
}

/// Per packet, the other half-close: a VIP connection whose client sent its FIN first (as
/// `shutdown(SHUT_WR)` after a request does) still holds its tuple while the server answers,
/// so a direct connection the kernel gives the same port gets a port of its own, and the
/// server's answer to the VIP connection still arrives, from the VIP.
#[test]
fn a_vip_connection_the_client_half_closed_keeps_its_tuple() {
    use std::io::{Read, Write};
    let (t, b1, listener) = backend_listening(8082);
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut vip_conn, _) = listener.accept()?;
        let mut request = Vec::new();
        vip_conn.read_to_end(&mut request)?; // up to the client's FIN
        let (mut direct_conn, _) = listener.accept()?;
        direct_conn.write_all(b"y")?;
        drop(direct_conn);
        vip_conn.write_all(b"answer")?;
        Ok(request)
    });
    let before = t.counters(1);
    let vip = SocketAddrV4::new(VIP, 80);
    let direct = SocketAddrV4::new(b1, 8082);
    let (got_direct, got_vip) = t
        .container("client")
        .ns
        .enter(move || -> std::io::Result<(Vec<u8>, Vec<u8>)> {
            let mut first = connect_from(20_040, vip, Duration::from_secs(3))?;
            first.write_all(b"request")?;
            first.shutdown(std::net::Shutdown::Write)?;
            // The FIN has reached the datapath before the next SYN leaves.
            std::thread::sleep(Duration::from_millis(200));
            let mut second = connect_from(20_040, direct, Duration::from_secs(3))?;
            let mut b = Vec::new();
            second.read_to_end(&mut b)?;
            let mut a = Vec::new();
            first.read_to_end(&mut a)?;
            Ok((b, a))
        })
        .unwrap_or_else(|e| panic!("client: {e}\n{:?}", t.counters(1)));
    let request = server.join().expect("server").expect("server side");
    assert_eq!(request, b"request");
    assert_eq!(
        (got_direct.as_slice(), got_vip.as_slice()),
        (&b"y"[..], &b"answer"[..]),
        "both connections answered"
    );
    assert_eq!(
        remaps_since(&t, &before),
        1,
        "the direct connection got a port of its own"
    );
}

/// Per packet, a long half-close on a remapped tuple: a VIP connection given a port of its
/// own (a direct connection held its port), half-closed by the client, whose server answers
/// only after 12 s (longer than a closed flow's 10 s), while the direct connection has
/// ended meanwhile: the client's ACKs keep the remapped port (its flow entry stays open
/// until FINs went both ways), so the server sees them and its 4 MiB answer arrives whole.
#[test]
fn a_remapped_vip_connection_half_closed_for_long_gets_its_answer() {
    use std::io::{Read, Write};
    let (t, b1, listener) = backend_listening(8083);
    let server = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let (mut direct_conn, _) = listener.accept()?;
        direct_conn.write_all(b"d")?;
        let (mut vip_conn, _) = listener.accept()?;
        let mut byte = [0u8; 1];
        direct_conn.read_exact(&mut byte)?;
        drop(direct_conn);
        let mut request = Vec::new();
        vip_conn.read_to_end(&mut request)?; // up to the client's FIN
        std::thread::sleep(Duration::from_secs(12));
        // More than the socket buffers hold: it is sent only as the client's ACKs arrive.
        vip_conn.set_write_timeout(Some(Duration::from_secs(10)))?;
        vip_conn.write_all(&vec![b'a'; 4 << 20])?;
        Ok(request)
    });
    let before = t.counters(1);
    let vip = SocketAddrV4::new(VIP, 80);
    let direct = SocketAddrV4::new(b1, 8083);
    let answer = t
        .container("client")
        .ns
        .enter(move || -> std::io::Result<Vec<u8>> {
            let mut first = connect_from(20_050, direct, Duration::from_secs(3))?;
            first.read_exact(&mut [0u8; 1])?;
            let mut second = connect_from(20_050, vip, Duration::from_secs(3))?;
            second.set_read_timeout(Some(Duration::from_secs(20)))?;
            first.write_all(b"x")?;
            first.read_to_end(&mut Vec::new())?; // the direct connection ends
            drop(first);
            second.write_all(b"request")?;
            second.shutdown(std::net::Shutdown::Write)?;
            let mut answer = Vec::new();
            second.read_to_end(&mut answer)?;
            Ok(answer)
        })
        .unwrap_or_else(|e| panic!("client: {e}\n{:?}", t.counters(1)));
    assert_eq!(
        server.join().expect("server").expect("server side"),
        b"request"
    );
    assert_eq!(answer.len(), 4 << 20, "the answer after 12 s arrived whole");
    let after = t.counters(1);
    assert_eq!(
        after.drops(DropReason::LbTupleConflict).packets,
        before.drops(DropReason::LbTupleConflict).packets
    );
}

/// The per-packet service of `one_service` on `port`, and a listener there in b1.
fn backend_listening(port: u16) -> (Topology, Ipv4Addr, std::net::TcpListener) {
    let (t, b1) = one_service(false, "198.19.250.20:80", "tcp", port);
    let listener = t
        .container("b1")
        .ns
        .enter(move || std::net::TcpListener::bind(("0.0.0.0", port)))
        .expect("listen");
    (t, b1, listener)
}

/// Direct flows given a port of their own on the client's node since `before`.
fn remaps_since(t: &Topology, before: &CounterSnapshot) -> u64 {
    let now = t.counters(1).traffic(Direction::LbDirectRemap).packets;
    now - before.traffic(Direction::LbDirectRemap).packets
}
