//! `overlayctl monitor`: asks a daemon for its event stream and prints it until interrupted,
//! as JSON (one object per line, exactly as the daemon sends them, after an `attached` line)
//! or as a table for people.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
};

use anyhow::{bail, Context};
use overlay_api::{MonitorRequest, Request, Response};
use serde_json::Value;

/// Streams events from the daemon at `socket` to stdout; returns when the daemon stops.
pub fn watch(socket: &Path, req: MonitorRequest, json: bool) -> anyhow::Result<()> {
    let mut conn = UnixStream::connect(socket)
        .with_context(|| format!("connecting to overlayd at {}", socket.display()))?;
    let mut req = serde_json::to_vec(&Request::Monitor(req))?;
    req.push(b'\n');
    conn.write_all(&req)?;
    let mut lines = BufReader::new(conn).lines();
    let first = lines
        .next()
        .context("overlayd closed the connection")?
        .context("reading from overlayd")?;
    let response: Response = serde_json::from_str(&first).with_context(|| {
        format!("overlayd answered {first:?}: is it older than this overlayctl?")
    })?;
    if !response.ok {
        bail!("{}", response.error.unwrap_or_else(|| "refused".into()));
    }
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::json!({"type": "attached"}))?;
    } else {
        writeln!(
            out,
            "{:<14} {:<15} {:<22} {:<16} {:<42} LEN",
            "TIME", "HOOK", "REASON/VERDICT", "IFACE", "PACKET"
        )?;
    }
    out.flush()?;
    for line in lines {
        let line = line.context("reading from overlayd")?;
        if json {
            writeln!(out, "{line}")?;
        } else if let Ok(v) = serde_json::from_str::<Value>(&line) {
            writeln!(out, "{}", row(&v))?;
        }
        out.flush()?;
    }
    Ok(())
}

/// One event as a table row.
fn row(v: &Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_owned();
    if v["type"] == "lost" {
        return format!(
            "lost {} {} event(s) in the {} (rate limit or full buffer)",
            v["count"],
            v["of"].as_str().unwrap_or(""),
            s("where")
        );
    }
    let port = |k: &str| v[k].as_u64().map(|p| format!(":{p}")).unwrap_or_default();
    let mut packet = format!(
        "{}{} > {}{} {}",
        s("src"),
        port("sport"),
        s("dst"),
        port("dport"),
        v["proto"].as_str().unwrap_or("")
    );
    if let Some(vni) = v["vni"].as_u64() {
        packet += &format!(
            " vni {vni} [{} > {} {}]",
            s("inner_src"),
            s("inner_dst"),
            v["inner_proto"].as_str().unwrap_or("")
        );
    }
    // Where a traced packet went.
    let svc = &v["service"];
    if !svc.is_null() {
        let backend = svc["backend"].as_str().unwrap_or("?");
        packet = if v["hook"] == "socket" {
            format!(
                "{} -> {backend} {}",
                svc["vip"].as_str().unwrap_or("?"),
                svc["proto"].as_str().unwrap_or("")
            )
        } else {
            format!("{packet} (service {})", svc["vip"].as_str().unwrap_or("?"))
        };
    }
    match v["verdict"].as_str() {
        Some("encap") => packet += &format!(" -> vtep {}", s("vtep")),
        Some("decap") => packet += &format!(" <- vtep {} -> {}", s("vtep"), s("out_ifname")),
        Some("local") | Some("answered") => {
            packet += &format!(" -> {}", v["out_ifname"].as_str().unwrap_or("?"))
        }
        _ => {}
    }
    let secs = v["time_ns"].as_u64().unwrap_or(0) as f64 / 1e9;
    format!(
        "{:<14.6} {:<15} {:<22} {:<16} {:<42} {}",
        secs,
        s("hook"),
        v["reason"]
            .as_str()
            .or(v["verdict"].as_str())
            .unwrap_or("-"),
        v["ifname"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| v["ifindex"].as_u64().map(|i| format!("#{i}")))
            .unwrap_or_else(|| "-".into()),
        packet,
        v["len"]
    )
}
