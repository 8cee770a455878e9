//! What the daemon needs to know about a network interface of its namespace.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
};

use crate::vtep::{Prefer, Vteps};

use nix::{
    ifaddrs::getifaddrs,
    net::if_::if_nametoindex,
    sys::socket::{socket, AddressFamily, SockFlag, SockType},
};

#[derive(Debug, thiserror::Error)]
pub enum NetifError {
    #[error("underlay interface {0:?} not found in this network namespace: pass an existing interface with --underlay")]
    NotFound(String),
    #[error("underlay interface {0:?} has neither an IPv4 nor a global IPv6 address: assign one or pass --vtep-ip")]
    NoAddress(String),
    #[error("--vtep-ip given twice for {0}: a node has at most one VTEP address of each family")]
    TwoOfAFamily(&'static str),
    #[error("reading the MTU of {0:?}: {1}")]
    Mtu(String, nix::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// First IPv4 address, if any.
    pub ipv4: Option<Ipv4Addr>,
    /// First IPv6 address of global scope (not link-local, loopback or multicast), if any.
    pub ipv6: Option<Ipv6Addr>,
    /// Kernel driver (ethtool's view), e.g. "veth", "mlx5_core".
    pub driver: Option<String>,
    /// Hardware address.
    pub mac: Option<[u8; 6]>,
}

impl Interface {
    pub fn lookup(name: &str) -> Result<Self, NetifError> {
        let ifindex = if_nametoindex(name).map_err(|_| NetifError::NotFound(name.to_owned()))?;
        let mac = getifaddrs().ok().and_then(|mut addrs| {
            addrs.find_map(|a| {
                (a.interface_name == name)
                    .then(|| a.address?.as_link_addr()?.addr())
                    .flatten()
            })
        });
        let ipv4 = getifaddrs().ok().and_then(|mut addrs| {
            addrs.find_map(|a| {
                (a.interface_name == name)
                    .then(|| a.address?.as_sockaddr_in().map(|s| s.ip()))
                    .flatten()
            })
        });
        let ipv6 = getifaddrs().ok().and_then(|mut addrs| {
            addrs.find_map(|a| {
                let ip = a.address?.as_sockaddr_in6()?.ip();
                let global = !ip.is_loopback()
                    && !ip.is_multicast()
                    && !ip.is_unspecified()
                    && (ip.segments()[0] & 0xffc0) != 0xfe80;
                (a.interface_name == name && global).then_some(ip)
            })
        });
        Ok(Self {
            name: name.to_owned(),
            ifindex,
            mtu: mtu(name)?,
            ipv4,
            ipv6,
            driver: driver(name),
            mac,
        })
    }

    /// The VTEP addresses: those given (one per family at most), else the first IPv4
    /// address, else the first global IPv6 one; both when IPv6 is preferred.
    pub fn vteps(&self, given: &[IpAddr], prefer: Prefer) -> Result<Vteps, NetifError> {
        let mut vteps = Vteps {
            v4: None,
            v6: None,
            prefer,
        };
        for ip in given {
            match ip {
                IpAddr::V4(v4) if vteps.v4.replace(*v4).is_some() => {
                    return Err(NetifError::TwoOfAFamily("IPv4"))
                }
                IpAddr::V6(v6) if vteps.v6.replace(*v6).is_some() => {
                    return Err(NetifError::TwoOfAFamily("IPv6"))
                }
                _ => {}
            }
        }
        if given.is_empty() {
            vteps.v4 = self.ipv4;
            if self.ipv4.is_none() || prefer == Prefer::Ipv6 {
                vteps.v6 = self.ipv6;
            }
        }
        match (vteps.v4, vteps.v6) {
            (None, None) => Err(NetifError::NoAddress(self.name.clone())),
            _ => Ok(vteps),
        }
    }
}

fn ifreq(name: &str) -> libc::ifreq {
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req
}

fn mtu(name: &str) -> Result<u32, NetifError> {
    let err = |e| NetifError::Mtu(name.to_owned(), e);
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(err)?;
    let mut req = ifreq(name);
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFMTU, &mut req) };
    if rc < 0 {
        return Err(err(nix::Error::last()));
    }
    Ok(unsafe { req.ifr_ifru.ifru_mtu } as u32)
}

/// The name of interface `ifindex` in this namespace, if it exists.
pub fn ifname(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// ifindex of an interface in this namespace, if it exists.
pub fn ifindex(name: &str) -> Option<u32> {
    if_nametoindex(name).ok()
}

/// The interface's driver name from ETHTOOL_GDRVINFO, if the driver answers.
fn driver(name: &str) -> Option<String> {
    const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        version: [u8; 32],
        fw_version: [u8; 32],
        bus_info: [u8; 32],
        erom_version: [u8; 32],
        reserved2: [u8; 12],
        n_priv_flags: u32,
        n_stats: u32,
        testinfo_len: u32,
        eedump_len: u32,
        regdump_len: u32,
    }
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .ok()?;
    let mut info: DrvInfo = unsafe { std::mem::zeroed() };
    info.cmd = ETHTOOL_GDRVINFO;
    let mut req = ifreq(name);
    req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &mut req) };
    if rc < 0 {
        return None;
    }
    let end = info
        .driver
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}
