//! Output: aligned tables for people, JSON or YAML (the same objects) for scripts.

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns.
    Table,
    /// The objects as JSON.
    Json,
    /// The objects as YAML.
    Yaml,
}

/// Prints `value` as JSON or YAML, or calls `table` for people.
pub fn emit<T: Serialize + ?Sized>(output: Output, value: &T, table: impl FnOnce(&T)) {
    match output {
        Output::Table => table(value),
        Output::Json => println!(
            "{}",
            serde_json::to_string_pretty(value).expect("serializable")
        ),
        Output::Yaml => print!("{}", serde_yaml_ng::to_string(value).expect("serializable")),
    }
}

/// Prints rows as an aligned table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(&headers.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for row in rows {
        line(row);
    }
}

/// One object as FIELD VALUE lines.
pub fn fields(rows: &[(&str, String)]) {
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in rows {
        println!("{:<width$}  {v}", format!("{k}:"), width = width + 1);
    }
}

/// A cell for a value that may be absent.
pub fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// Values of both families in one cell.
pub fn both<A: ToString, B: ToString>(a: Option<A>, b: Option<B>) -> String {
    let cell: Vec<String> = a
        .map(|a| a.to_string())
        .into_iter()
        .chain(b.map(|b| b.to_string()))
        .collect();
    if cell.is_empty() {
        "-".into()
    } else {
        cell.join(" ")
    }
}

/// `IP:PORT`, an IPv6 address in brackets.
pub fn host_port(ip: std::net::IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}
