//! Names and service labels: what every front end checks the same way before the daemon or
//! etcd sees them.

/// Names of networks, nodes and services: what etcd keys can hold unambiguously.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// The CNI arg, config `args.cni` key and Docker endpoint option that make a container a
/// service backend: `overlay.service=NAME:PORT[,NAME:PORT...]`.
pub const SERVICE_LABEL: &str = "overlay.service";

/// A label `NAME:PORT` that makes an endpoint a backend of service NAME on PORT.
pub fn parse_service_label(label: &str) -> Result<(String, u16), String> {
    let bad = || format!("service label {label:?}: write NAME:PORT, e.g. web:8080");
    let (name, port) = label.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 || !valid_name(name) {
        return Err(bad());
    }
    Ok((name.to_owned(), port))
}

/// Labels from a runtime option: `NAME:PORT[,NAME:PORT...]`, each checked and written as
/// `NAME:PORT` (`web:080` is `web:80`), duplicates dropped. The error names the bad label
/// and the syntax.
pub fn parse_service_labels<'a>(
    raw: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<String>, String> {
    let mut labels: Vec<String> = Vec::new();
    for label in raw
        .into_iter()
        .flat_map(|r| r.split(','))
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (name, port) = parse_service_label(label)?;
        let label = format!("{name}:{port}");
        if !labels.contains(&label) {
            labels.push(label);
        }
    }
    Ok(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_checked_and_deduplicated() {
        assert_eq!(
            parse_service_labels(["web:80, web:80,db:5432", ""]).unwrap(),
            vec!["web:80".to_owned(), "db:5432".to_owned()]
        );
        // One service port, one label, however the port is written.
        assert_eq!(
            parse_service_labels(["web:080,web:+80", "web:80"]).unwrap(),
            vec!["web:80".to_owned()]
        );
        for bad in ["web", "web:0", "web:x", ":80", "w b:80", "web:70000"] {
            assert!(parse_service_labels([bad]).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_fit_keys() {
        assert!(valid_name("host-1.example_a"));
        for bad in ["", "a/b", "a b", "ä"] {
            assert!(!valid_name(bad), "{bad}");
        }
        assert!(!valid_name(&"a".repeat(254)));
    }
}
