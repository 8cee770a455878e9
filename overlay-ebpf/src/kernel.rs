//! Constants of the kernel's BPF interface that aya-ebpf's bindings lack, with names, and
//! the one check of a redirect helper's result.

use aya_ebpf::bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT};
use overlay_common::DropReason;

/// TCX_NEXT / TC_ACT_UNSPEC: not ours, let the next program or the stack have it.
pub const TC_NEXT: i32 = -1;
/// The new outer L3 after decapsulation is IPv4 (BPF_F_ADJ_ROOM_DECAP_L3_IPV4, 6.3+).
pub const BPF_F_ADJ_ROOM_DECAP_L3_IPV4: u64 = 1 << 7;
/// ... and IPv6 (BPF_F_ADJ_ROOM_DECAP_L3_IPV6).
pub const BPF_F_ADJ_ROOM_DECAP_L3_IPV6: u64 = 1 << 8;
/// `bpf_redir_neigh.nh_family` for an IPv4 next hop.
pub const AF_INET: u32 = 2;
/// ... and for an IPv6 one.
pub const AF_INET6: u32 = 10;
/// `bpf_map_update_elem` flag: only if the key has no entry yet.
pub const BPF_NOEXIST: u64 = 1;
/// What a map update with `BPF_NOEXIST` returns (negated) when the key has an entry.
pub const EEXIST: i32 = 17;

/// A redirect helper's return value as the program's verdict: `TC_ACT_REDIRECT`, or a drop
/// counted as `redirect_failed` when the helper refused (`TC_ACT_SHOT`).
#[inline(always)]
pub fn redirected(ret: i64) -> Result<i32, DropReason> {
    if ret == TC_ACT_REDIRECT as i64 {
        Ok(TC_ACT_REDIRECT)
    } else if ret == TC_ACT_SHOT as i64 {
        Err(DropReason::RedirectFailed)
    } else {
        Ok(ret as i32)
    }
}

/// A subprogram's result as one integer (`unpack` turns it back). A `Result` is returned
/// through memory, and LLVM may leave a stack address in r0 on the way out, which the
/// verifier refuses ("cannot return stack pointer to the caller"); an integer is r0 itself.
#[inline(always)]
pub fn pack(r: Result<i32, DropReason>) -> i64 {
    match r {
        Ok(verdict) => verdict as u32 as i64,
        Err(reason) => -(reason as i64) - 1,
    }
}

#[inline(always)]
pub fn unpack(r: i64) -> Result<i32, DropReason> {
    if r >= 0 {
        Ok(r as u32 as i32)
    } else {
        Err(DropReason::from_index((-1 - r) as u32).unwrap_or(DropReason::Malformed))
    }
}
