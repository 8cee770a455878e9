//! Frames saved for reproduction: a violation's frame is written as a small text file (a
//! `# key: value` header with the program, the skb fields and the node's switches, then the
//! frame in hex), which `overlay-packet-fuzz --replay FILE` and the regression test replay.
//! tests/fixtures/packet-fuzz/*.hex holds the frames of fixed bugs.

use std::path::Path;

use super::{
    fixture::{Case, Phase, Program},
    frames::{hex, unhex},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Saved {
    pub case: Case,
    pub phase: Phase,
}

fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

/// The file's text: `notes` become comment lines after the fields.
pub fn render(case: &Case, phase: Phase, notes: &[String]) -> String {
    let mut s = String::from("# overlay packet fuzz frame\n");
    s += &format!("# program: {}\n", case.program.name());
    s += &format!("# ifindex: {}\n", case.ifindex);
    s += &format!("# gso_segs: {}\n", case.gso_segs);
    s += &format!("# services: {}\n", on_off(phase.lb));
    s += &format!("# track_direct: {}\n", on_off(phase.track_direct));
    s += &format!("# foreign_vni_pass: {}\n", on_off(phase.foreign_vni_pass));
    for n in notes {
        for line in n.lines() {
            s += &format!("# {line}\n");
        }
    }
    s += &hex(&case.frame);
    s.push('\n');
    s
}

pub fn parse(text: &str) -> Result<Saved, String> {
    let mut program = None;
    let (mut ifindex, mut gso_segs) = (0, 0);
    let mut phase = Phase::default();
    let mut body = String::new();
    for line in text.lines() {
        let Some(comment) = line.strip_prefix('#') else {
            body.push_str(line);
            continue;
        };
        let Some((key, value)) = comment.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let flag = || match value {
            "on" => Ok(true),
            "off" => Ok(false),
            other => Err(format!("{}: {other:?} is neither on nor off", key.trim())),
        };
        match key.trim() {
            "program" => {
                program = Some(
                    Program::from_name(value)
                        .ok_or_else(|| format!("unknown program {value:?}"))?,
                )
            }
            "ifindex" => ifindex = value.parse().map_err(|e| format!("ifindex: {e}"))?,
            "gso_segs" => gso_segs = value.parse().map_err(|e| format!("gso_segs: {e}"))?,
            "services" => phase.lb = flag()?,
            "track_direct" => phase.track_direct = flag()?,
            "foreign_vni_pass" => phase.foreign_vni_pass = flag()?,
            _ => {}
        }
    }
    Ok(Saved {
        case: Case {
            program: program.ok_or("no `# program:` line")?,
            frame: unhex(&body)?,
            ifindex,
            gso_segs,
        },
        phase,
    })
}

pub fn read(path: &Path) -> Result<Saved, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_frame_reads_back() {
        let case = Case {
            program: Program::FromUnderlay,
            frame: (0..100).collect(),
            ifindex: 0,
            gso_segs: 3,
        };
        let phase = Phase {
            lb: true,
            track_direct: false,
            foreign_vni_pass: true,
        };
        let text = render(&case, phase, &["why: a note\nover lines".into()]);
        assert_eq!(parse(&text).unwrap(), Saved { case, phase });
    }
}
