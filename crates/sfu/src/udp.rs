//! Batched UDP IO for a worker's socket: `recvmmsg` to read up to [`BATCH`] datagrams per
//! system call and `sendmmsg` to send a pass's output to many destinations in one. On
//! loopback most of a datagram's cost is the kernel's delivery work, not the call itself,
//! so this saves a part of the per-packet system-call overhead, not all of it (see
//! docs/benchmarks.md).

use bytes::Bytes;
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg};
use std::io::{ErrorKind, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Datagrams per system call.
pub const BATCH: usize = 32;
/// Largest datagram read; larger ones are truncated and dropped.
pub const MAX_DATAGRAM: usize = 1500;

/// Asks for `bytes` of kernel buffer each way: a worker's one socket carries every
/// participant's media, and the default (about 200 KB) overflows in bursts of tens of
/// thousands of packets per second. Forced past `net.core.*mem_max` when the process may
/// (CAP_NET_ADMIN); otherwise the kernel caps it. Returns what the kernel granted.
pub fn set_buffers(socket: &std::net::UdpSocket, bytes: usize) -> (usize, usize) {
    use nix::sys::socket::{getsockopt, setsockopt, sockopt};
    if bytes > 0 {
        if setsockopt(socket, sockopt::RcvBufForce, &bytes).is_err() {
            let _ = setsockopt(socket, sockopt::RcvBuf, &bytes);
        }
        if setsockopt(socket, sockopt::SndBufForce, &bytes).is_err() {
            let _ = setsockopt(socket, sockopt::SndBuf, &bytes);
        }
    }
    (
        getsockopt(socket, sockopt::RcvBuf).unwrap_or(0),
        getsockopt(socket, sockopt::SndBuf).unwrap_or(0),
    )
}

/// Receive buffers and headers, allocated once per worker.
pub struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    headers: MultiHeaders<SockaddrStorage>,
    /// (length, source, truncated) of each datagram of the last batch.
    got: Vec<(usize, SocketAddr, bool)>,
}

impl Default for RecvBatch {
    fn default() -> Self {
        Self {
            bufs: (0..BATCH).map(|_| vec![0u8; MAX_DATAGRAM + 1]).collect(),
            headers: MultiHeaders::preallocate(BATCH, None),
            got: Vec::with_capacity(BATCH),
        }
    }
}

impl RecvBatch {
    /// Reads up to [`BATCH`] datagrams without blocking. `Ok(0)` when none is waiting.
    pub fn recv(&mut self, socket: &UdpSocket) -> std::io::Result<usize> {
        self.got.clear();
        let fd = socket.as_raw_fd();
        let Self {
            bufs, headers, got, ..
        } = self;
        let r = socket.try_io(Interest::READABLE, || {
            let mut slices: Vec<[IoSliceMut<'_>; 1]> =
                bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            let results = recvmmsg(fd, headers, slices.iter_mut(), MsgFlags::MSG_DONTWAIT, None)
                .map_err(std::io::Error::from)?;
            for r in results {
                let addr = r
                    .address
                    .and_then(|a: SockaddrStorage| to_std(&a))
                    .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                got.push((r.bytes, addr, r.bytes > MAX_DATAGRAM));
            }
            Ok(())
        });
        match r {
            Ok(()) => Ok(self.got.len()),
            Err(e) if e.kind() == ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// The datagrams of the last batch: (bytes, source), oversized ones skipped.
    pub fn datagrams(&self) -> impl Iterator<Item = (&[u8], SocketAddr)> {
        self.got
            .iter()
            .zip(&self.bufs)
            .filter(|((_, _, truncated), _)| !truncated)
            .map(|((n, from, _), b)| (&b[..*n], *from))
    }
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        Some(SocketAddr::from((v4.ip(), v4.port())))
    } else {
        a.as_sockaddr_in6()
            .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
    }
}

/// Outgoing datagrams of a pass, sent in batches.
pub struct SendBatch {
    queue: Vec<(Bytes, SocketAddr)>,
    headers: MultiHeaders<SockaddrStorage>,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            queue: Vec::with_capacity(BATCH),
            headers: MultiHeaders::preallocate(BATCH, None),
        }
    }
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    /// Refused by the kernel (socket buffer full) or failed: dropped.
    pub dropped: u64,
}

impl SendBatch {
    pub fn push(&mut self, data: Bytes, to: SocketAddr) {
        self.queue.push((data, to));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Sends everything queued, never blocking: what the kernel does not take is dropped.
    pub fn flush(&mut self, socket: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        let fd = socket.as_raw_fd();
        let mut start = 0;
        while start < self.queue.len() {
            let end = (start + BATCH).min(self.queue.len());
            let chunk = &self.queue[start..end];
            let headers = &mut self.headers;
            let r = socket.try_io(Interest::WRITABLE, || {
                let slices: Vec<[IoSlice<'_>; 1]> =
                    chunk.iter().map(|(d, _)| [IoSlice::new(d)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = chunk
                    .iter()
                    .map(|(_, to)| Some(SockaddrStorage::from(*to)))
                    .collect();
                let results = sendmmsg(fd, headers, &slices, &addrs, [], MsgFlags::MSG_DONTWAIT)
                    .map_err(std::io::Error::from)?;
                Ok(results.map(|r| r.bytes).collect::<Vec<_>>())
            });
            match r {
                Ok(lens) if !lens.is_empty() => {
                    sent.datagrams += lens.len() as u64;
                    sent.bytes += lens.iter().map(|n| *n as u64).sum::<u64>();
                    start += lens.len();
                }
                Ok(_) | Err(_) => {
                    // The kernel took nothing (buffer full, or an error such as an ICMP
                    // report for this destination): drop one and go on with the rest.
                    sent.dropped += 1;
                    start += 1;
                }
            }
        }
        self.queue.clear();
        sent
    }
}
