//! The real datapath, loaded unattached (as in tests/tests/prog_test_run.rs) with the
//! fuzzer's tables, frames run through BPF_PROG_TEST_RUN, and the per-CPU counters read
//! around every run.
//!
//! Container frames must enter on an interface whose ifindex is the container's (the
//! program looks its identity up by `skb->ifindex`), and test_run only takes an ifindex
//! of an existing device. So the fuzzer's thread moves into a network namespace of its own
//! (unshared, so it has no name and vanishes with the thread) and adds veth pairs (down,
//! nothing behind them) with the senders' ifindexes there. Nothing is attached or sent; the bpffs pins live under
//! a unique /sys/fs/bpf/ovt-pktfuzz-* directory removed on drop.

use std::{
    ffi::CString,
    net::IpAddr,
    os::fd::{FromRawFd as _, OwnedFd, RawFd},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use overlay_common::{maps::programs, Direction, DropReason};
use overlay_daemon::{
    datapath::{self, Datapath, DatapathError, PinLayout, TcMode},
    maps::{
        EndpointEntry, LocalIdentity, Location, NetworkEntry, NodeDatapathConfig, ServiceEntry,
    },
};

use overlay_daemon::vtep::Vteps;

use super::world::{Loc, World, LOCAL_VTEP, UNDERLAY_MTU, VXLAN_PORT};
use crate::netns::unique_id;

/// The programs fuzzed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Program {
    FromContainer,
    FromUnderlay,
    UnderlayXdp,
}

impl Program {
    pub const ALL: [Program; 3] = [
        Program::FromContainer,
        Program::FromUnderlay,
        Program::UnderlayXdp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Program::FromContainer => programs::FROM_CONTAINER,
            Program::FromUnderlay => programs::FROM_UNDERLAY,
            Program::UnderlayXdp => programs::UNDERLAY_XDP,
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.name() == name)
    }
}

/// One frame for one program, with the skb fields test_run lets us set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Case {
    pub program: Program,
    pub frame: Vec<u8>,
    /// `skb->ifindex` (TC programs; 0 or 1: the loopback).
    pub ifindex: u32,
    pub gso_segs: u32,
}

/// Node-wide switches of the datapath, varied during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Phase {
    /// Services present (`CONFIG_F_LB`): per-packet balancing and reverse translation run.
    pub lb: bool,
    /// Direct flows to backends recorded (`CONFIG_F_TRACK_DIRECT`).
    pub track_direct: bool,
    /// VXLAN with a VNI the overlay does not use passes to the stack (`CONFIG_F_FOREIGN_VNI_PASS`).
    pub foreign_vni_pass: bool,
}

/// What one run did: the verdict (or why the kernel refused the frame), the frame as the
/// program left it, and how much each counter moved (packets, summed over CPUs).
#[derive(Clone, Debug)]
pub struct Observed {
    pub verdict: Result<i32, String>,
    pub frame: Vec<u8>,
    pub drops: Vec<u64>,
    pub traffic: Vec<u64>,
    pub elapsed: Duration,
}

pub struct Fixture {
    pub world: World,
    dp: Datapath,
    pins: PinLayout,
    counters: Counters,
    phase: Phase,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        for e in datapath::remove(&self.pins, None) {
            eprintln!("packet fuzz cleanup: {e}");
        }
        if let Some(dir) = self.pins.root().parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// Moves the calling thread into a new, unnamed network namespace holding the world's
/// sender interfaces (veth pairs, down, peers unused) with their ifindexes. Only this thread moves.
pub fn enter_private_netns(world: &World) -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
    for &(ifindex, mtu) in &world.devices {
        let name = format!("fz{ifindex}");
        // Children inherit the network namespace of the thread that spawns them.
        let peer = format!("fzp{ifindex}");
        let out = Command::new("ip")
            .args(["link", "add", &name, "index", &ifindex.to_string()])
            .args([
                "mtu",
                &mtu.to_string(),
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ])
            .args(["index", &(ifindex + 1000).to_string()])
            .output()
            .map_err(|e| format!("ip link add: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip link add {name}: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let got = nix::net::if_::if_nametoindex(name.as_str())
            .map_err(|e| format!("{name} not in the fuzzer's namespace: {e}"))?;
        if got != ifindex {
            return Err(format!("{name} has ifindex {got}, not {ifindex}"));
        }
    }
    Ok(())
}

impl Fixture {
    /// Loads the datapath and its tables. Call on a thread that `enter_private_netns` moved.
    pub fn new(world: World) -> Result<Self, String> {
        let pins = PinLayout::new(format!("/sys/fs/bpf/ovt-pktfuzz-{}/node", unique_id()));
        let dp = Datapath::load_unattached(&pins, TcMode::Auto, 0)
            .map_err(|e| format!("loading the datapath: {e}"))?;
        let counters = Counters::open(&pins.maps()).map_err(|e| format!("counters: {e}"));
        let mut fx = match counters {
            Ok(counters) => Self {
                world,
                dp,
                pins,
                counters,
                phase: Phase::default(),
            },
            Err(e) => {
                for err in datapath::remove(&pins, None) {
                    eprintln!("packet fuzz cleanup: {err}");
                }
                return Err(e);
            }
        };
        fx.install().map_err(|e| format!("filling the maps: {e}"))?;
        fx.counters.reset_baseline()?;
        Ok(fx)
    }

    fn install(&mut self) -> Result<(), overlay_daemon::maps::MapsError> {
        let w = &self.world;
        let maps = &mut self.dp.maps;
        maps.config.set(&NodeDatapathConfig {
            vteps: Vteps::v4(LOCAL_VTEP),
            underlay_ifindex: 1,
            underlay_mtu: UNDERLAY_MTU,
            vxlan_port: VXLAN_PORT,
        })?;
        let nets: Vec<NetworkEntry> = w
            .networks
            .iter()
            .map(|n| NetworkEntry {
                gateway_ip6: None,
                vni: n.vni,
                gateway_ip: Some(n.gw_ip),
                gateway_mac: n.gw_mac,
            })
            .collect();
        maps.networks.sync(&nets)?;
        maps.vteps.sync(
            w.vteps
                .iter()
                .enumerate()
                .map(|(i, (v, nh))| ((*v).into(), i as u32 + 2, nh.map(IpAddr::V4))),
        )?;
        let eps: Vec<EndpointEntry> = w
            .endpoints
            .iter()
            .map(|e| EndpointEntry {
                ip6: None,
                vni: e.vni,
                ip: Some(e.ip),
                mac: e.mac,
                location: match e.loc {
                    Loc::Local(ifindex) => Location::Local { ifindex },
                    Loc::Remote(vtep) => Location::Remote { vtep: vtep.into() },
                },
            })
            .collect();
        maps.endpoints.sync(&eps, &Vteps::v4(LOCAL_VTEP))?;
        let ids: Vec<LocalIdentity> = w
            .identities
            .iter()
            .map(|i| LocalIdentity {
                bandwidth: None,
                ip6: None,
                ifindex: i.ifindex,
                vni: i.vni,
                ip: Some(i.ip),
                mac: i.mac,
            })
            .collect();
        maps.local_ifaces.sync(&ids)?;
        let services: Vec<ServiceEntry> = w
            .services
            .iter()
            .enumerate()
            .map(|(i, s)| ServiceEntry {
                name: format!("svc{i}"),
                vni: s.vni,
                vip: s.vip.into(),
                port: s.port,
                proto: s.proto,
                backends: s
                    .backends
                    .iter()
                    .map(|(a, p)| ((*a).into(), *p, 1))
                    .collect(),
            })
            .collect();
        let sync = maps.lb.sync(&services)?;
        assert!(
            sync.rejected.is_empty(),
            "services rejected: {:?}",
            sync.rejected
        );
        Ok(())
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn set_phase(&mut self, phase: Phase) -> Result<(), String> {
        let c = &mut self.dp.maps.config;
        c.set_services(phase.lb)
            .and_then(|_| c.set_track_direct(phase.track_direct))
            .and_then(|_| c.set_foreign_vni_pass(phase.foreign_vni_pass))
            .map_err(|e| format!("setting the phase: {e}"))?;
        self.phase = phase;
        Ok(())
    }

    /// Runs one case and reads how the counters moved.
    pub fn run(&mut self, case: &Case) -> Result<Observed, String> {
        let ctx = match case.program {
            Program::UnderlayXdp => None,
            _ => Some(skb_ctx(case.ifindex, case.gso_segs)),
        };
        let start = Instant::now();
        let result = self
            .dp
            .test_run(case.program.name(), &case.frame, ctx.as_deref());
        let elapsed = start.elapsed();
        let (verdict, frame) = match result {
            Ok(out) => (Ok(out.verdict), out.frame),
            Err(DatapathError::Program { source, .. }) => {
                let cause = std::error::Error::source(&source)
                    .map(|c| format!(": {c}"))
                    .unwrap_or_default();
                (Err(format!("{source}{cause}")), Vec::new())
            }
            Err(e) => return Err(format!("test run: {e}")),
        };
        let (drops, traffic) = self.counters.deltas()?;
        Ok(Observed {
            verdict,
            frame,
            drops,
            traffic,
            elapsed,
        })
    }
}

/// A `struct __sk_buff` (192 bytes) with the fields test_run lets us set.
fn skb_ctx(ifindex: u32, gso_segs: u32) -> Vec<u8> {
    let mut ctx = vec![0u8; 192];
    ctx[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[164..168].copy_from_slice(&gso_segs.to_ne_bytes());
    ctx
}

/// The per-CPU `OVL_DROPS` and `OVL_TRAFFIC` arrays, each read whole with one
/// BPF_MAP_LOOKUP_BATCH (two syscalls per frame instead of one per slot and map), through
/// descriptors of their pins.
struct Counters {
    drops: PerCpuCounters,
    traffic: PerCpuCounters,
}

impl Counters {
    fn open(map_dir: &Path) -> Result<Self, String> {
        let cpus = possible_cpus()?;
        Ok(Self {
            drops: PerCpuCounters::open(&map_dir.join("OVL_DROPS"), DropReason::COUNT, cpus)?,
            traffic: PerCpuCounters::open(&map_dir.join("OVL_TRAFFIC"), Direction::COUNT, cpus)?,
        })
    }

    fn reset_baseline(&mut self) -> Result<(), String> {
        self.deltas().map(|_| ())
    }

    fn deltas(&mut self) -> Result<(Vec<u64>, Vec<u64>), String> {
        Ok((self.drops.deltas()?, self.traffic.deltas()?))
    }
}

struct PerCpuCounters {
    fd: OwnedFd,
    slots: u32,
    cpus: usize,
    values: Vec<u64>,
    last: Vec<u64>,
    batch: bool,
}

const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_OBJ_GET: u32 = 7;
const BPF_MAP_LOOKUP_BATCH: u32 = 24;

fn bpf(cmd: u32, attr: &mut [u64; 16]) -> std::io::Result<i64> {
    // SAFETY: attr is a zeroed union bpf_attr large enough for every command used here.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as libc::c_long,
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

impl PerCpuCounters {
    fn open(path: &Path, slots: u32, cpus: usize) -> Result<Self, String> {
        let cpath = CString::new(path.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        let mut attr = [0u64; 16];
        attr[0] = cpath.as_ptr() as u64;
        let fd = bpf(BPF_OBJ_GET, &mut attr).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: BPF_OBJ_GET returned a new descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let n = slots as usize;
        let mut c = Self {
            fd,
            slots,
            cpus,
            values: vec![0; n * cpus * 2],
            last: vec![0; n],
            batch: true,
        };
        if c.read_batch().is_err() {
            c.batch = false;
        }
        Ok(c)
    }

    fn raw_fd(&self) -> u64 {
        use std::os::fd::AsRawFd as _;
        self.fd.as_raw_fd() as u64
    }

    fn read_batch(&mut self) -> std::io::Result<()> {
        let mut keys = vec![0u32; self.slots as usize];
        let mut out_batch = 0u32;
        let mut attr = [0u64; 16];
        // union bpf_attr's batch: in_batch, out_batch, keys, values (u64 each), then count
        // and map_fd (u32 each), elem_flags, flags.
        attr[0] = 0; // in_batch: from the start
        attr[1] = &mut out_batch as *mut u32 as u64;
        attr[2] = keys.as_mut_ptr() as u64;
        attr[3] = self.values.as_mut_ptr() as u64;
        attr[4] = self.slots as u64 | (self.raw_fd() << 32);
        match bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let count = attr[4] as u32;
        if count != self.slots {
            return Err(std::io::Error::other(format!(
                "batch lookup returned {count} of {} slots",
                self.slots
            )));
        }
        Ok(())
    }

    fn read_each(&mut self) -> std::io::Result<()> {
        let stride = self.cpus * 2;
        for slot in 0..self.slots {
            let key = slot;
            let mut attr = [0u64; 16];
            attr[0] = self.raw_fd();
            attr[1] = &key as *const u32 as u64;
            attr[2] = self.values[slot as usize * stride..].as_mut_ptr() as u64;
            bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
        }
        Ok(())
    }

    /// Packets per slot since the last call.
    fn deltas(&mut self) -> Result<Vec<u64>, String> {
        if self.batch {
            self.read_batch()
        } else {
            self.read_each()
        }
        .map_err(|e| format!("reading counters: {e}"))?;
        let stride = self.cpus * 2;
        let mut out = Vec::with_capacity(self.slots as usize);
        for slot in 0..self.slots as usize {
            let now: u64 = (0..self.cpus)
                .map(|c| self.values[slot * stride + c * 2])
                .sum();
            out.push(now.wrapping_sub(self.last[slot]));
            self.last[slot] = now;
        }
        Ok(out)
    }
}

/// CPUs per-CPU map values are laid out for (`/sys/devices/system/cpu/possible`).
fn possible_cpus() -> Result<usize, String> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .map_err(|e| format!("possible CPUs: {e}"))?;
    let mut n = 0;
    for part in text.trim().split(',') {
        let (lo, hi) = part.split_once('-').unwrap_or((part, part));
        let (_, hi): (usize, usize) = (
            lo.parse().map_err(|e| format!("{part}: {e}"))?,
            hi.parse().map_err(|e| format!("{part}: {e}"))?,
        );
        n = n.max(hi + 1);
    }
    Ok(n)
}
