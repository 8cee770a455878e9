//! Per-CPU packet/byte counters. Every drop is counted with its reason.

use crate::maps::{DROPS, TRAFFIC};
use overlay_common::{Direction, DropReason};

#[inline(always)]
pub fn count(direction: Direction, bytes: u32) {
    if let Some(c) = TRAFFIC.get_ptr_mut(direction as u32) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
pub fn count_drop(reason: DropReason, bytes: u32) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}
