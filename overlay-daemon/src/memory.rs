//! Giving freed memory back to the system.

/// A full pass (or a DNS zone rebuilt whole) frees tens of MB of temporary tables at 100k
/// endpoints; glibc keeps freed memory in its arenas unless asked to give it back.
pub fn release_freed() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}
