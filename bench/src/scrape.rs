//! The time a daemon takes to serve `GET /metrics`, as Prometheus would ask for it.

use std::{
    io::{Read as _, Write as _},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};

use crate::report::median;

/// `n` scrapes of `/metrics` at `addr`, one connection each, timed from connect to the last
/// byte: (median ms, max ms, body bytes).
pub fn time(addr: std::net::SocketAddr, n: usize) -> Result<(f64, f64, usize)> {
    let mut times = Vec::new();
    let mut bytes = 0;
    for _ in 0..n {
        let t0 = Instant::now();
        let mut conn = std::net::TcpStream::connect(addr).context("connect to /metrics")?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
        let mut body = Vec::new();
        conn.read_to_end(&mut body)?;
        times.push(t0.elapsed().as_secs_f64() * 1e3);
        let text = String::from_utf8_lossy(&body);
        if !text.starts_with("HTTP/1.1 200") || !text.contains("overlay_known") {
            bail!("/metrics answered {:?}", text.lines().next());
        }
        bytes = text.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    }
    Ok((
        median(&times),
        times.iter().copied().fold(0.0, f64::max),
        bytes,
    ))
}
