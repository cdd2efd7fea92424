//! Counters shared by the workers and read by whoever reports them (metrics, tests).
//! Relaxed atomics: each counter is independent and read approximately.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($(#[$m:meta])* $name:ident / $snap:ident { $($(#[$fm:meta])* $field:ident: $ty:ident),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Default)]
        pub struct $name { $($(#[$fm])* pub $field: $ty,)* }

        /// A point-in-time copy of the counters.
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
        pub struct $snap { $($(#[$fm])* pub $field: i64,)* }

        impl $name {
            pub fn snapshot(&self) -> $snap {
                $snap { $($field: self.$field.load(Relaxed) as i64,)* }
            }
        }
    };
}

counters!(
    /// Media-plane counters. Gauges are `AtomicI64`, counters `AtomicU64`.
    SfuStats / StatsSnapshot {
        rooms: AtomicI64,
        participants: AtomicI64,
        peer_connections: AtomicI64,
        published_tracks: AtomicI64,
        down_tracks: AtomicI64,
        /// Datagrams received on the media sockets.
        datagrams_in: AtomicU64,
        datagrams_out: AtomicU64,
        bytes_in: AtomicU64,
        bytes_out: AtomicU64,
        /// Datagrams from an address no peer connection knows.
        datagrams_unroutable: AtomicU64,
        /// Datagrams the kernel refused to queue (socket buffer full).
        send_drops: AtomicU64,
        rtp_in: AtomicU64,
        rtp_out: AtomicU64,
        rtp_duplicates: AtomicU64,
        /// Packets a down-track did not forward (waiting for a keyframe, padding, old).
        rtp_dropped: AtomicU64,
        /// Keyframe requests (PLI/FIR) received from subscribers.
        keyframe_requests_in: AtomicU64,
        /// Keyframe requests sent to publishers, after throttling.
        keyframe_requests_out: AtomicU64,
        chat_messages: AtomicU64,
        chat_dropped: AtomicU64,
        /// Signaling events dropped because a client did not read them.
        events_dropped: AtomicU64,
    }
);

impl SfuStats {
    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
    pub fn gauge(c: &AtomicI64, delta: i64) {
        c.fetch_add(delta, Relaxed);
    }
}
