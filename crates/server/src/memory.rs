//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps what a burst of connections freed: each thread allocates from
//! its own arena, and an arena returns pages only from its top. After 300 half-joined
//! clients or 1,000 slow HTTP connections came and went, the server kept 2–4 times its
//! baseline RSS for good (docs/soak.md). `malloc_trim(0)` walks every arena and releases
//! its free pages; the housekeeping task calls it every few seconds. mimalloc as the global
//! allocator was measured too and kept more (docs/soak.md).

/// Releases the free pages the allocator holds, when it is glibc's. Runs on the
/// housekeeping task, never on a media thread (its duration is traced, not yet measured).
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu", not(feature = "no-trim")))]
    {
        let started = std::time::Instant::now();
        // SAFETY: malloc_trim has no preconditions; it takes each arena's lock in turn.
        let released = unsafe { libc::malloc_trim(0) };
        tracing::trace!(
            released = released != 0,
            took_us = started.elapsed().as_micros() as u64,
            "malloc_trim"
        );
    }
}
