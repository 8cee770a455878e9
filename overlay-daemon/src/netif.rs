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
    #[error("--vtep-ip {0} cannot be a VTEP address: it is {1}")]
    Unusable(IpAddr, &'static str),
    #[error("reading the MTU of {0:?}: {1}")]
    Mtu(String, nix::Error),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub ifindex: u32,
    pub mtu: u32,
    /// First IPv4 address a VTEP can have (`vtep::unusable`), if any.
    pub ipv4: Option<Ipv4Addr>,
    /// First IPv6 address a VTEP can have (`usable_ipv6`), if any.
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
        // The first one a VTEP can have (`vtep::unusable`).
        let ipv4 = getifaddrs().ok().and_then(|mut addrs| {
            addrs.find_map(|a| {
                (a.interface_name == name)
                    .then(|| a.address?.as_sockaddr_in().map(|s| s.ip()))
                    .flatten()
                    .filter(|ip| crate::vtep::unusable(IpAddr::V4(*ip)).is_none())
            })
        });
        let ipv6 = usable_ipv6(name);
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
            if let Some(why) = crate::vtep::unusable(*ip) {
                return Err(NetifError::Unusable(*ip, why));
            }
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
            if prefer == Prefer::Ipv6 && vteps.v6.is_none() {
                tracing::warn!(underlay = %self.name, "IPv6 is preferred but the underlay has no usable global IPv6 address: the VTEP is IPv4 only until overlayd restarts with one");
            }
        } else if prefer == Prefer::Ipv6 && vteps.v6.is_none() {
            tracing::warn!("--vtep-prefer ipv6 without an IPv6 --vtep-ip: the VTEP is IPv4 only");
        }
        match (vteps.v4, vteps.v6) {
            (None, None) => Err(NetifError::NoAddress(self.name.clone())),
            _ => Ok(vteps),
        }
    }
}

/// The first global IPv6 address of `name` a VTEP can keep: from /proc/net/if_inet6, which
/// has the flags `getifaddrs` leaves out; not temporary (privacy addresses change), not
/// deprecated, not failed duplicate detection, not `vtep::unusable`. A tentative address
/// (duplicate detection still running, just after boot) only when there is no other.
pub fn usable_ipv6(name: &str) -> Option<Ipv6Addr> {
    let text = std::fs::read_to_string("/proc/net/if_inet6").ok()?;
    pick_ipv6(&text, name)
}

fn pick_ipv6(if_inet6: &str, name: &str) -> Option<Ipv6Addr> {
    const TEMPORARY: u32 = 0x01;
    const OPTIMISTIC: u32 = 0x04;
    const DADFAILED: u32 = 0x08;
    const DEPRECATED: u32 = 0x20;
    const TENTATIVE: u32 = 0x40;
    let mut tentative = None;
    for line in if_inet6.lines() {
        // address, ifindex, prefix length, scope, flags, name: all hex but the name.
        let f: Vec<&str> = line.split_whitespace().collect();
        let [addr, _, _, scope, flags, ifname] = f[..] else {
            continue;
        };
        let (Ok(addr), Ok(scope), Ok(flags)) = (
            u128::from_str_radix(addr, 16),
            u32::from_str_radix(scope, 16),
            u32::from_str_radix(flags, 16),
        ) else {
            continue;
        };
        let ip = Ipv6Addr::from(addr);
        if ifname != name
            || scope != 0
            || flags & (TEMPORARY | DADFAILED | DEPRECATED) != 0
            || crate::vtep::unusable(IpAddr::V6(ip)).is_some()
        {
            continue;
        }
        if flags & (TENTATIVE | OPTIMISTIC) == 0 {
            return Some(ip);
        }
        tentative.get_or_insert(ip);
    }
    tentative
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vtep_is_a_stable_global_ipv6_address() {
        let table = "\
fe800000000000000000000000000001 05 40 20 80 ul0
20010002000000ff0000000000000007 05 40 00 01 ul0
20010002000000ff0000000000000008 05 40 00 20 ul0
20010002000000ff0000000000000009 05 40 00 c0 ul0
20010002000000ff0000000000000002 06 40 00 80 eth1
20010002000000ff0000000000000001 05 40 00 80 ul0
";
        assert_eq!(
            pick_ipv6(table, "ul0"),
            Some("2001:2:0:ff::1".parse().unwrap())
        );
        assert_eq!(
            pick_ipv6(table, "eth1"),
            Some("2001:2:0:ff::2".parse().unwrap())
        );
        // Only a tentative one: taken (duplicate detection ends in a second).
        let tentative = "20010002000000ff0000000000000009 05 40 00 40 ul0\n";
        assert_eq!(
            pick_ipv6(tentative, "ul0"),
            Some("2001:2:0:ff::9".parse().unwrap())
        );
        assert_eq!(pick_ipv6(table, "lo"), None);
    }
}
