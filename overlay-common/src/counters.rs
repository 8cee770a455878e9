//! Per-CPU counters: traffic per direction and drops per reason.

/// A packets/bytes pair, one per CPU per slot of the `TRAFFIC` and `DROPS` maps.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounter {
    pub packets: u64,
    pub bytes: u64,
}
const _: () = assert!(core::mem::size_of::<PacketCounter>() == 16);

macro_rules! counted_enum {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident = $value:expr => $label:expr,)+ }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vmeta])* $variant = $value,)+ }

        impl $name {
            /// Every variant, in slot order.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];
            /// Number of slots the counter map needs.
            pub const COUNT: u32 = [$($value,)+].len() as u32;

            /// Stable snake_case name for logs, metrics and the CLI.
            pub const fn label(self) -> &'static str {
                match self { $($name::$variant => $label,)+ }
            }

            pub const fn from_index(index: u32) -> Option<Self> {
                match index { $(x if x == $value => Some($name::$variant),)+ _ => None }
            }
        }
    };
}

counted_enum! {
    /// Where a forwarded packet went. Slot index in the `TRAFFIC` map.
    pub enum Direction {
        /// Entered the datapath from a local container.
        FromContainer = 0 => "from_container",
        /// Delivered container to container on the same host.
        LocalDelivery = 1 => "local_delivery",
        /// Encapsulated and sent to a remote VTEP.
        EncapTx = 2 => "encap_tx",
        /// Received from a remote VTEP, decapsulated and delivered.
        DecapRx = 3 => "decap_rx",
        /// ARP requests answered by the datapath.
        ArpReply = 4 => "arp_reply",
        /// VXLAN checked by XDP and passed on to TC for decapsulation.
        XdpVxlanPass = 5 => "xdp_vxlan_pass",
        /// Underlay traffic that is not ours, passed untouched.
        UnderlayPass = 6 => "underlay_pass",
        /// New flows to a service VIP given a backend (Maglev).
        LbNewFlow = 7 => "lb_new_flow",
        /// Packets to a service VIP translated to their backend.
        LbDnat = 8 => "lb_dnat",
        /// Replies translated back to the service VIP.
        LbRevNat = 9 => "lb_rev_nat",
        /// Packets to a service without backends, answered with a TCP reset or ICMP unreachable.
        LbRejected = 10 => "lb_rejected",
        /// Sockets connected to a service VIP given a backend at connect time.
        SockLbConnect = 11 => "sock_lb_connect",
        /// Unconnected UDP sends to a VIP given a backend (per socket and VIP).
        SockLbSendmsg = 12 => "sock_lb_sendmsg",
        /// Socket calls (recvmsg, getpeername) that saw the backend and were shown the VIP.
        SockLbRevNat = 13 => "sock_lb_rev_nat",
        /// Per-packet flows whose client is their backend (translated at both ends).
        LbHairpin = 14 => "lb_hairpin",
        /// Direct flows (UDP, or TCP at the SYN) given a source port of their own, their
        /// tuple being a live translated flow's.
        LbDirectRemap = 15 => "lb_direct_remap",
        /// Packets with DF set too big for the underlay once encapsulated, answered with an
        /// ICMP "fragmentation needed" from the gateway (path-MTU discovery).
        IcmpFragNeeded = 16 => "icmp_frag_needed",
        /// Neighbour solicitations answered by the datapath (IPv6's ARP).
        NdpReply = 17 => "ndp_reply",
        /// IPv6 packets too big for the underlay once encapsulated, answered with an ICMPv6
        /// "packet too big" from the gateway (path-MTU discovery).
        Icmp6TooBig = 18 => "icmp6_too_big",
        /// Sent by a container through its gateway to an address of its own host (not of
        /// the overlay), handed to the host's stack.
        ToHost = 19 => "to_host",
        /// DNS queries (and their TCP segments) a container sent to its own network's
        /// gateway, handed to the host's stack for the daemon's DNS server.
        ToDns = 20 => "to_dns",
    }
}

counted_enum! {
    /// Why the datapath dropped a packet. Slot index in the `DROPS` map.
    pub enum DropReason {
        /// Header shorter than its protocol requires, or a bad IPv4 IHL.
        Malformed = 0 => "malformed",
        /// Packet on a container interface that has no endpoint identity.
        UnknownInterface = 1 => "unknown_interface",
        /// Source MAC is not the endpoint's.
        SpoofedMac = 2 => "spoofed_mac",
        /// Source IPv4 is not the endpoint's.
        SpoofedIp = 3 => "spoofed_ip",
        /// ARP whose sender MAC/IP is not the endpoint's.
        SpoofedArp = 4 => "spoofed_arp",
        /// Ethertype the overlay does not carry (it carries ARP, IPv4 and IPv6).
        UnsupportedEthertype = 5 => "unsupported_ethertype",
        /// ARP request for an address that no endpoint of the network has.
        ArpUnknownTarget = 6 => "arp_unknown_target",
        /// ARP that is not an Ethernet/IPv4 request.
        ArpUnsupported = 7 => "arp_unsupported",
        /// Broadcast or multicast that is not ARP: the overlay never floods.
        Broadcast = 8 => "broadcast",
        /// Destination MAC/IP is not in the network's tables.
        UnknownDestination = 9 => "unknown_destination",
        /// Remote endpoint whose VTEP is not known.
        UnknownVtep = 10 => "unknown_vtep",
        /// VXLAN with a VNI that no network uses.
        UnknownVni = 11 => "unknown_vni",
        /// VXLAN header cut short, or without the I flag (reserved bits are ignored on
        /// receipt, RFC 7348).
        VxlanMalformed = 12 => "vxlan_malformed",
        /// Decapsulated frame not addressed to an endpoint on this host.
        DecapNotLocal = 13 => "decap_not_local",
        /// Decapsulated frame whose source is not an endpoint of the sending VTEP.
        DecapSpoofedSource = 14 => "decap_spoofed_source",
        /// bpf_skb_adjust_room refused the encapsulation.
        EncapFailed = 15 => "encap_failed",
        /// bpf_skb_adjust_room refused the decapsulation, or the frame holds more than one packet.
        DecapFailed = 16 => "decap_failed",
        /// A redirect helper refused the packet (a failure later, in the kernel's redirect,
        /// is not visible to the program).
        RedirectFailed = 17 => "redirect_failed",
        /// The network of the endpoint is not configured.
        UnknownNetwork = 18 => "unknown_network",
        /// The datapath has no configuration yet.
        NotConfigured = 19 => "not_configured",
        /// Encapsulated frame would not fit the underlay MTU.
        TooBig = 20 => "too_big",
        /// A service's Maglev slot names no live backend (table being rewritten).
        LbNoBackend = 21 => "lb_no_backend",
        /// Rewriting addresses or checksums for a service flow failed.
        LbNatFailed = 22 => "lb_nat_failed",
        /// A new flow whose own tuple and every remap candidate live flows hold (after
        /// translation it would share one): refused, not merged.
        LbTupleConflict = 23 => "lb_tuple_conflict",
        /// IPv6 source that is not the endpoint's (link-local is allowed in neighbour
        /// discovery only).
        SpoofedIp6 = 24 => "spoofed_ip6",
        /// Neighbour discovery whose source, target or link-layer option is not the
        /// endpoint's own (a forged advertisement, a solicitation in another's name), or
        /// that arrived in VXLAN (never sent across the underlay: forged).
        SpoofedNdp = 25 => "spoofed_ndp",
        /// Neighbour solicitation for an address no endpoint of the network has, or for the
        /// container's own (duplicate address detection: no conflict here, no answer).
        NdpUnknownTarget = 26 => "ndp_unknown_target",
        /// Neighbour discovery the datapath does not answer: router solicitations (the
        /// default route comes with the address), advertisements, redirects, a hop limit
        /// other than 255.
        NdpUnsupported = 27 => "ndp_unsupported",
        /// An IPv6 packet on a network without IPv6.
        Ipv6Disabled = 28 => "ipv6_disabled",
        /// Neighbour discovery or a redirect behind IPv6 extension headers (a receiving
        /// kernel would still process it: forwarded, a forged advertisement would poison
        /// another container's neighbour cache), or a chain of more extension headers than
        /// the datapath looks through.
        Ipv6HiddenNdp = 29 => "ipv6_hidden_ndp",
        /// IPv4 or ARP from a container without an IPv4 address (on an IPv6-only network), or
        /// an inner IPv4 packet claiming to come from one.
        Ipv4Disabled = 30 => "ipv4_disabled",
    }
}

#[cfg(feature = "user")]
unsafe impl aya::Pod for PacketCounter {}
