//! A packet fuzzer for the eBPF programs through BPF_PROG_TEST_RUN: the real datapath,
//! loaded unattached with a small cluster's tables (`world`, `fixture`), runs frames made
//! from valid templates (`templates`) and mutated (`mutate`), cut at every length, and
//! random garbage, through `from_container`, `from_underlay` and `underlay_xdp`. Every run
//! is checked (`invariants`) against structural invariants and a reference model
//! (`model`), with the per-CPU counters read around it. A run follows from its seed; a
//! violation stops it and its frame is saved for replay (`regress`). See
//! docs/packet-fuzzing.md.

/// One of the values, picked by `rng` (the values are evaluated first, so they may draw from
/// `rng` too).
macro_rules! one_of {
    ($rng:expr, $($x:expr),+ $(,)?) => {{
        let items = [$($x),+];
        *$rng.pick(&items)
    }};
}

pub mod egress;
pub mod fixed;
pub mod fixture;
pub mod frames;
pub mod invariants;
pub mod model;
pub mod mutate;
pub mod regress;
pub mod rng;
pub mod templates;
pub mod world;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use overlay_common::{Direction, DropReason};

use fixture::{Case, Fixture, Observed, Phase, Program};
use invariants::Violation;
use rng::Rng;
use world::World;

/// Frames between two changes of the node's switches (services, direct-flow tracking,
/// foreign VNIs).
const PHASE_FRAMES: u64 = 2048;

#[derive(Clone, Debug)]
pub struct FuzzConfig {
    pub duration: Duration,
    pub seed: u64,
    /// Stop after this many frames (all programs together), if sooner.
    pub max_frames: Option<u64>,
    /// Where a violating frame is written.
    pub out_dir: Option<PathBuf>,
    /// Set from outside (Ctrl-C) to stop early; the fixture is still cleaned up.
    pub stop: Arc<AtomicBool>,
    /// Print a line every 10 s.
    pub progress: bool,
}

impl FuzzConfig {
    pub fn new(duration: Duration, seed: u64) -> Self {
        Self {
            duration,
            seed,
            max_frames: None,
            out_dir: None,
            stop: Arc::new(AtomicBool::new(false)),
            progress: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct ProgramStats {
    pub frames: u64,
    pub verdicts: BTreeMap<String, u64>,
    pub drops: BTreeMap<&'static str, u64>,
    /// Traffic counters (directions) the frames moved.
    pub traffic: BTreeMap<&'static str, u64>,
    pub slowest_run: Duration,
}

/// The first violation: everything needed to reproduce and understand it.
#[derive(Clone, Debug)]
pub struct Failure {
    pub seed: u64,
    pub iteration: u64,
    pub case: Case,
    pub phase: Phase,
    /// Template and mutations the frame came from.
    pub origin: String,
    pub verdict: String,
    pub output: Vec<u8>,
    pub violation: Violation,
    pub saved: Option<PathBuf>,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "INVARIANT VIOLATED: {}: {}",
            self.violation.invariant, self.violation.detail
        )?;
        writeln!(f, "  seed {} iteration {}", self.seed, self.iteration)?;
        writeln!(
            f,
            "  program {} ifindex {} gso_segs {} phase {:?}",
            self.case.program.name(),
            self.case.ifindex,
            self.case.gso_segs,
            self.phase
        )?;
        writeln!(f, "  frame from {}, verdict {}", self.origin, self.verdict)?;
        writeln!(
            f,
            "  frame ({} bytes):\n{}",
            self.case.frame.len(),
            frames::hex(&self.case.frame)
        )?;
        writeln!(
            f,
            "  output ({} bytes):\n{}",
            self.output.len(),
            frames::hex(&self.output)
        )?;
        match &self.saved {
            Some(p) => write!(
                f,
                "  saved to {} (replay: --replay {})",
                p.display(),
                p.display()
            ),
            None => write!(f, "  not saved"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Report {
    pub seed: u64,
    pub elapsed: Duration,
    pub stats: BTreeMap<Program, ProgramStats>,
    pub failure: Option<Box<Failure>>,
}

impl Report {
    pub fn frames(&self) -> u64 {
        self.stats.values().map(|s| s.frames).sum()
    }

    pub fn render(&self) -> String {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        let mut s = format!(
            "packet fuzz: seed {}, {} frames in {:.1} s ({:.0} frames/s)\n",
            self.seed,
            self.frames(),
            secs,
            self.frames() as f64 / secs
        );
        for (p, st) in &self.stats {
            s += &format!(
                "{}: {} frames ({:.0}/s), slowest run {:?}\n",
                p.name(),
                st.frames,
                st.frames as f64 / secs,
                st.slowest_run
            );
            let v: Vec<String> = st
                .verdicts
                .iter()
                .map(|(k, n)| format!("{k} {n}"))
                .collect();
            s += &format!("  verdicts: {}\n", v.join(", "));
            let d: Vec<String> = st.drops.iter().map(|(k, n)| format!("{k} {n}")).collect();
            s += &format!(
                "  drops: {}\n",
                if d.is_empty() {
                    "none".into()
                } else {
                    d.join(", ")
                }
            );
            let t: Vec<String> = st.traffic.iter().map(|(k, n)| format!("{k} {n}")).collect();
            s += &format!(
                "  counted: {}\n",
                if t.is_empty() {
                    "none".into()
                } else {
                    t.join(", ")
                }
            );
        }
        match &self.failure {
            Some(f) => s += &format!("{f}\n"),
            None => s += "no invariant violated\n",
        }
        s += &format!("seed {}\n", self.seed);
        s
    }
}

/// Runs the fuzzer on a thread of its own, in a private network namespace. `Err`: the
/// fixture could not be set up (not root, no BPF, ...).
pub fn run(cfg: FuzzConfig) -> Result<Report, String> {
    std::thread::spawn(move || {
        let world = World::standard();
        fixture::enter_private_netns(&world)?;
        let mut fx = Fixture::new(world)?;
        Runner::new(&cfg).run(&mut fx)
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

/// Replays saved frames; `Err` names the first that violates an invariant (or cannot be
/// read). Returns how many were replayed.
pub fn replay(files: &[PathBuf]) -> Result<usize, String> {
    let files = files.to_vec();
    std::thread::spawn(move || {
        let world = World::standard();
        fixture::enter_private_netns(&world)?;
        let mut fx = Fixture::new(world)?;
        for path in &files {
            let saved = regress::read(path)?;
            fx.set_phase(saved.phase)?;
            let obs = fx.run(&saved.case)?;
            let exp = model::expect(&fx.world, saved.phase, &saved.case);
            if let Err(v) = invariants::check(&fx.world, saved.phase, &saved.case, &obs, &exp) {
                return Err(format!(
                    "{}: {}: {} (verdict {:?})",
                    path.display(),
                    v.invariant,
                    v.detail,
                    obs.verdict
                ));
            }
        }
        Ok(files.len())
    })
    .join()
    .unwrap_or_else(|p| std::panic::resume_unwind(p))
}

struct Runner<'a> {
    cfg: &'a FuzzConfig,
    start: Instant,
    deadline: Instant,
    iteration: u64,
    stats: BTreeMap<Program, ProgramStats>,
    failure: Option<Box<Failure>>,
    last_progress: Instant,
}

impl<'a> Runner<'a> {
    fn new(cfg: &'a FuzzConfig) -> Self {
        let start = Instant::now();
        Self {
            cfg,
            start,
            deadline: start + cfg.duration,
            iteration: 0,
            stats: Program::ALL
                .iter()
                .map(|p| (*p, ProgramStats::default()))
                .collect(),
            failure: None,
            last_progress: start,
        }
    }

    fn done(&self) -> bool {
        self.failure.is_some()
            || self.cfg.max_frames.is_some_and(|m| self.iteration >= m)
            || self.cfg.stop.load(Ordering::Relaxed)
            || (self.iteration.is_multiple_of(64) && Instant::now() >= self.deadline)
    }

    fn run(mut self, fx: &mut Fixture) -> Result<Report, String> {
        self.systematic(fx)?;
        let mut rng = Rng::new(self.cfg.seed);
        let mut n = 0u64;
        while !self.done() {
            if n.is_multiple_of(PHASE_FRAMES) {
                let lb = rng.chance(50);
                fx.set_phase(Phase {
                    lb,
                    track_direct: lb && rng.chance(40),
                    foreign_vni_pass: rng.chance(25),
                })?;
            }
            let program = Program::ALL[(n % 3) as usize];
            let (case, origin) = next_case(&fx.world, &mut rng, program);
            self.one(fx, &case, || origin)?;
            n += 1;
        }
        Ok(Report {
            seed: self.cfg.seed,
            elapsed: self.start.elapsed(),
            stats: self.stats,
            failure: self.failure,
        })
    }

    /// Every fixed template cut at every length, with services off and on.
    fn systematic(&mut self, fx: &mut Fixture) -> Result<(), String> {
        let (container, underlay) = fixed::fixed(&fx.world);
        for lb in [false, true] {
            fx.set_phase(Phase {
                lb,
                ..Phase::default()
            })?;
            for (frame, ifindex, name) in &container {
                for len in 0..=frame.len() {
                    let case = Case {
                        program: Program::FromContainer,
                        frame: frame[..len].to_vec(),
                        ifindex: *ifindex,
                        gso_segs: 0,
                    };
                    self.one(fx, &case, || format!("{name} cut to {len}"))?;
                    if self.done() {
                        return Ok(());
                    }
                }
            }
            for (frame, name) in &underlay {
                for len in 0..=frame.len() {
                    for program in [Program::FromUnderlay, Program::UnderlayXdp] {
                        let case = Case {
                            program,
                            frame: frame[..len].to_vec(),
                            ifindex: 0,
                            gso_segs: 0,
                        };
                        self.one(fx, &case, || format!("{name} cut to {len}"))?;
                    }
                    if self.done() {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }

    /// Runs and checks one case; a violation is recorded (and saved), which ends the run.
    fn one(
        &mut self,
        fx: &mut Fixture,
        case: &Case,
        origin: impl FnOnce() -> String,
    ) -> Result<(), String> {
        let obs = fx.run(case)?;
        let phase = fx.phase();
        let exp = model::expect(&fx.world, phase, case);
        let verdict = invariants::verdict_label(case.program, &obs.verdict);
        self.account(case.program, &verdict, &obs);
        if let Err(violation) = invariants::check(&fx.world, phase, case, &obs, &exp) {
            let mut failure = Failure {
                seed: self.cfg.seed,
                iteration: self.iteration,
                case: case.clone(),
                phase,
                origin: origin(),
                verdict: format!("{verdict} ({:?})", obs.verdict),
                output: obs.frame,
                violation,
                saved: None,
            };
            failure.saved = self.cfg.out_dir.as_deref().and_then(|d| save(d, &failure));
            self.failure = Some(Box::new(failure));
        }
        self.iteration += 1;
        if self.cfg.progress
            && self.iteration.is_multiple_of(4096)
            && self.last_progress.elapsed() >= Duration::from_secs(10)
        {
            self.last_progress = Instant::now();
            let secs = self.start.elapsed().as_secs_f64();
            eprintln!(
                "packet fuzz: {:.0} s, {} frames ({:.0}/s)",
                secs,
                self.iteration,
                self.iteration as f64 / secs
            );
        }
        Ok(())
    }

    fn account(&mut self, program: Program, verdict: &str, obs: &Observed) {
        let st = self.stats.entry(program).or_default();
        st.frames += 1;
        *st.verdicts.entry(verdict.to_string()).or_default() += 1;
        for (i, &d) in obs.drops.iter().enumerate() {
            if d != 0 {
                let label = DropReason::from_index(i as u32).map_or("?", |r| r.label());
                *st.drops.entry(label).or_default() += d;
            }
        }
        for (i, &d) in obs.traffic.iter().enumerate() {
            if d != 0 {
                let label = Direction::from_index(i as u32).map_or("?", |r| r.label());
                *st.traffic.entry(label).or_default() += d;
            }
        }
        st.slowest_run = st.slowest_run.max(obs.elapsed);
    }
}

/// `target/packet-fuzz/` of the workspace: where a violating frame is saved.
pub fn default_out_dir() -> PathBuf {
    let tests = Path::new(env!("CARGO_MANIFEST_DIR"));
    tests.parent().unwrap_or(tests).join("target/packet-fuzz")
}

fn save(dir: &Path, f: &Failure) -> Option<PathBuf> {
    std::fs::create_dir_all(dir).ok()?;
    let path = dir.join(format!(
        "{}-{}-{}.hex",
        f.seed,
        f.iteration,
        f.case.program.name()
    ));
    let notes = vec![
        format!("seed: {} iteration: {}", f.seed, f.iteration),
        format!(
            "violation: {}: {}",
            f.violation.invariant, f.violation.detail
        ),
        format!("origin: {}", f.origin),
        format!("verdict: {}", f.verdict),
    ];
    std::fs::write(&path, regress::render(&f.case, f.phase, &notes)).ok()?;
    Some(path)
}

/// The next random case for `program`: mostly a template of the program's side, mutated;
/// some of the other side's; some random garbage.
pub fn next_case(w: &World, rng: &mut Rng, program: Program) -> (Case, String) {
    let underlay_prog = program != Program::FromContainer;
    let senders = w.senders();
    let mut ifindex = *rng.pick(&senders);
    let r = rng.below(100);
    let (mut frame, name, underlay_layout) = if r < 4 {
        let n = if rng.chance(80) {
            rng.range(14, 200)
        } else {
            rng.range(14, 1600)
        };
        (rng.bytes(n), "garbage", underlay_prog)
    } else if r < 7 {
        let et = *rng.pick(&[0x0800u16, 0x0806, 0x86dd, 0x8100]);
        let mut f = rng.bytes(14);
        f[12..14].copy_from_slice(&et.to_be_bytes());
        f.extend({
            let n = rng.range(0, 120);
            rng.bytes(n)
        });
        (f, "ethernet-garbage", underlay_prog)
    } else if (r < 12) == underlay_prog {
        let (f, i, name) = templates::container(w, rng);
        ifindex = i;
        (f, name, false)
    } else {
        let (f, name) = templates::underlay(w, rng);
        (f, name, true)
    };
    let mut tags = mutate::mutate(w, &mut frame, underlay_layout, rng);
    if rng.chance(6) {
        let n = rng.below(frame.len() + 1);
        frame.truncate(n);
        tags.push("cut");
    }
    let gso_segs = match rng.below(100) {
        0..=79 => 0,
        80..=84 => 1,
        _ => rng.range(2, 64) as u32,
    };
    let ifindex = if program == Program::FromContainer {
        ifindex
    } else {
        0
    };
    let origin = if tags.is_empty() {
        name.to_string()
    } else {
        format!("{name} + {}", tags.join(" + "))
    };
    (
        Case {
            program,
            frame,
            ifindex,
            gso_segs,
        },
        origin,
    )
}
