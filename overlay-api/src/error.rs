//! Errors of the API: a kind the caller decides on, and a one-line message for people.

use serde::{Deserialize, Serialize};

/// What kind of failure an API call met. Front ends map it to their protocol's codes (CNI
/// error codes, libnetwork's HTTP statuses); nobody decides anything by the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The thing named does not exist (a network, an endpoint).
    NotFound,
    /// The request is wrong and retrying it unchanged cannot help.
    Invalid,
    /// It clashes with something that exists (an address, an endpoint, a name).
    Conflict,
    /// A pool or table is full (addresses, datapath maps).
    Exhausted,
    /// Not possible right now, retrying later may succeed: etcd unreachable, not registered
    /// yet, the datapath did not install the change in time, the daemon is stopping.
    Unavailable,
    /// Anything else: a bug or a host problem, in the message.
    Internal,
}

impl ErrorKind {
    /// Whether retrying later can help.
    pub fn is_transient(self) -> bool {
        matches!(self, ErrorKind::Unavailable)
    }
}

/// A failed call: its kind and what to fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// `text` on one line: line breaks and other control characters escaped. For messages that
/// quote input verbatim (serde's "unknown field `...`" and "unknown variant `...`" do), so
/// that bad input still gets a one-line error and cannot forge log lines.
pub fn one_line(text: impl std::fmt::Display) -> String {
    let text = text.to_string();
    if !text.contains(char::is_control) {
        return text;
    }
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_stay_on_one_line() {
        assert_eq!(
            one_line("unknown field `a\nb\r`"),
            "unknown field `a\\nb\\r`"
        );
        assert_eq!(one_line("fine: ä"), "fine: ä");
    }
}
