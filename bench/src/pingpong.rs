//! A TCP ping-pong like sockperf's, for both families (the packaged sockperf 3.7 cannot use
//! IPv6): one connection, a 14-byte message (sockperf's default) echoed back, client and
//! server threads pinned to one CPU, every round trip timed.

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::{modes::Pair, report::percentile};

const PORT: u16 = 11112;
const MESSAGE: usize = 14;

/// Pins the calling thread to `cpu`.
fn pin(cpu: usize) -> Result<()> {
    use nix::sched::{sched_setaffinity, CpuSet};
    let mut set = CpuSet::new();
    set.set(cpu).context("CPU number")?;
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).context("sched_setaffinity")
}

/// Echoes one connection's messages until it closes.
fn serve(ip: IpAddr, cpu: usize, ready: mpsc::Sender<Result<()>>) -> Result<()> {
    pin(cpu)?;
    let listener = match TcpListener::bind((ip, PORT)) {
        Ok(l) => l,
        Err(e) => {
            let _ = ready.send(Err(e.into()));
            bail!("ping-pong server: bind {ip}:{PORT}");
        }
    };
    let _ = ready.send(Ok(()));
    let (mut conn, _) = listener.accept().context("ping-pong accept")?;
    conn.set_nodelay(true)?;
    let mut buf = [0u8; MESSAGE];
    while conn.read_exact(&mut buf).is_ok() {
        conn.write_all(&buf)?;
    }
    Ok(())
}

/// Round trips for `seconds`; returns their p50 and p99 in µs.
fn ping(server: SocketAddr, cpu: usize, seconds: u32) -> Result<(f64, f64)> {
    pin(cpu)?;
    let mut conn = TcpStream::connect_timeout(&server, Duration::from_secs(5))
        .with_context(|| format!("ping-pong connect to {server}"))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut buf = [0x5au8; MESSAGE];
    let end = Instant::now() + Duration::from_secs(seconds.into());
    let mut rtts = Vec::with_capacity(1 << 20);
    while Instant::now() < end {
        let t0 = Instant::now();
        conn.write_all(&buf)?;
        conn.read_exact(&mut buf)
            .context("ping-pong: no echo within 5 s")?;
        rtts.push(t0.elapsed().as_nanos() as f64 / 1e3);
    }
    if rtts.is_empty() {
        bail!("ping-pong: no round trip completed");
    }
    Ok((percentile(&rtts, 50.0), percentile(&rtts, 99.0)))
}

/// The server in the pair's server container, the client in its client container, both on
/// `cpu`.
pub fn run(pair: &Pair, seconds: u32, cpu: usize) -> Result<(f64, f64)> {
    let ip = pair.server_ip;
    let (tx, rx) = mpsc::channel();
    let server = pair.server.spawn(move || serve(ip, cpu, tx));
    rx.recv()
        .context("ping-pong server thread")?
        .with_context(|| format!("ping-pong server on {}", pair.mode.label()))?;
    let server_addr = SocketAddr::new(ip, PORT);
    let result = pair.client.enter(move || ping(server_addr, cpu, seconds));
    if result.is_err() {
        // The client may never have connected: wake the server's accept (it then sees EOF).
        let _ = pair.client.enter(move || {
            TcpStream::connect_timeout(&server_addr, Duration::from_secs(1)).map(drop)
        });
    }
    // The client's socket is closed: the server sees EOF and returns.
    match server.join() {
        Ok(r) => r?,
        Err(_) => bail!("ping-pong server panicked"),
    }
    result.with_context(|| format!("ping-pong on {}", pair.mode.label()))
}
