//! Batched UDP IO for a worker's socket: `recvmmsg` to read up to [`BATCH`] datagrams per
//! system call and `sendmmsg` to send a pass's output to many destinations in one. On
//! loopback most of a datagram's cost is the kernel's delivery work, not the call itself,
//! so this saves a part of the per-packet system-call overhead, not all of it (see
//! docs/benchmarks.md).

use bytes::Bytes;
use nix::sys::socket::{
    ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, sendmmsg,
};
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

/// Segments in one UDP GSO send (the kernel's UDP_MAX_SEGMENTS is 64 or more).
const MAX_SEGMENTS: usize = 64;
/// Bytes in one UDP GSO send (a datagram's payload limit).
const MAX_GSO_BYTES: usize = 65_000;

/// Outgoing datagrams, sent in batches: `sendmmsg`, and UDP GSO (`UDP_SEGMENT`, Linux 4.18)
/// where several consecutive datagrams go to one destination, as a frame's packets to each
/// viewer do. A GSO send hands the kernel one buffer that it cuts into datagrams of the
/// segment size (the last may be shorter), so the per-datagram work of the send path
/// (route, headers, queueing) is done once per destination instead of once per packet.
pub struct SendBatch {
    queue: Vec<(Bytes, SocketAddr, u32)>,
    headers: MultiHeaders<SockaddrStorage>,
    gso_headers: MultiHeaders<SockaddrStorage>,
    /// Whether to use GSO: the socket accepted `UDP_SEGMENT`, and no GSO send failed.
    gso: bool,
}

impl Default for SendBatch {
    fn default() -> Self {
        Self {
            queue: Vec::with_capacity(BATCH),
            headers: MultiHeaders::preallocate(BATCH, None),
            gso_headers: MultiHeaders::preallocate(BATCH, Some(nix::cmsg_space!(u16))),
            gso: false,
        }
    }
}

/// Whether `socket` takes UDP GSO (asks for a segment size of 0: none by default).
pub fn gso_supported(socket: &std::net::UdpSocket) -> bool {
    nix::sys::socket::setsockopt(socket, nix::sys::socket::sockopt::UdpGsoSegment, &0).is_ok()
}

/// What a flush did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    pub datagrams: u64,
    pub bytes: u64,
    /// Refused by the kernel (socket buffer full) or failed: dropped.
    pub dropped: u64,
    /// GSO sends among them (each one buffer cut into several datagrams by the kernel).
    pub segmented: u64,
}

/// One GSO send: datagrams `order[start..start + len]` of the queue, to one destination.
#[derive(Debug, Clone, Copy)]
struct Run {
    segment: u16,
    start: usize,
    len: usize,
}

impl SendBatch {
    pub fn with_gso(gso: bool) -> Self {
        Self {
            gso,
            ..Self::default()
        }
    }

    /// Queues a datagram that must keep its order with the others to `to` (ICE, DTLS,
    /// SCTP, RTCP). These are never segmented: with the connection's handshake datagrams
    /// in GSO sends, a 16 x 16 meeting's median time to first frame was 20 ms longer
    /// (94 vs 116 ms, benches/ab.sh, 4 + 4 runs; cause not found).
    pub fn push(&mut self, data: Bytes, to: SocketAddr) {
        self.queue.push((data, to, 0));
    }

    /// Queues an RTP datagram of stream `ssrc` (not 0): it keeps its order with that
    /// stream's other datagrams to `to`, and may be sent before or after other streams'.
    pub fn push_stream(&mut self, data: Bytes, to: SocketAddr, ssrc: u32) {
        self.queue.push((data, to, ssrc));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Takes out the queued datagrams `take` accepts (it gets each one's bytes and
    /// destination; those to a client on ICE-TCP go down its TCP connection instead).
    pub fn divert(&mut self, mut take: impl FnMut(&Bytes, SocketAddr) -> bool) {
        self.queue.retain(|(data, to, _)| !take(data, *to));
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Sends everything queued, never blocking: what the kernel does not take is dropped.
    /// Each stream's datagrams to a destination leave in the order they were queued.
    pub fn flush(&mut self, socket: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        if self.queue.is_empty() {
            return sent;
        }
        let queue = std::mem::take(&mut self.queue);
        if self.gso && queue.len() > 1 {
            let plan = plan(&queue);
            for wave in &plan.waves {
                let mut plain = wave.single.clone();
                if !wave.runs.is_empty() {
                    let mut failed = Vec::new();
                    self.send_runs(
                        socket,
                        &queue,
                        &plan.order,
                        &wave.runs,
                        &mut sent,
                        &mut failed,
                    );
                    plain.extend(failed);
                }
                self.send_plain(socket, &queue, &plain, &mut sent);
            }
        } else {
            let all: Vec<usize> = (0..queue.len()).collect();
            self.send_plain(socket, &queue, &all, &mut sent);
        }
        self.queue = queue;
        self.queue.clear();
        sent
    }

    /// Sends datagrams `which` of `queue`, one per message, `BATCH` per system call.
    fn send_plain(
        &mut self,
        socket: &UdpSocket,
        queue: &[(Bytes, SocketAddr, u32)],
        which: &[usize],
        sent: &mut Sent,
    ) {
        let fd = socket.as_raw_fd();
        let mut start = 0;
        while start < which.len() {
            let end = (start + BATCH).min(which.len());
            let chunk = &which[start..end];
            let headers = &mut self.headers;
            let r = socket.try_io(Interest::WRITABLE, || {
                let slices: Vec<[IoSlice<'_>; 1]> =
                    chunk.iter().map(|i| [IoSlice::new(&queue[*i].0)]).collect();
                let addrs: Vec<Option<SockaddrStorage>> = chunk
                    .iter()
                    .map(|i| Some(SockaddrStorage::from(queue[*i].1)))
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
    }

    /// Sends each run as one GSO message; runs of one segment size share a system call
    /// (the control message is per call). Datagrams of runs the kernel refused for GSO
    /// itself go to `failed` (sent plainly), and GSO is not tried again.
    fn send_runs(
        &mut self,
        socket: &UdpSocket,
        queue: &[(Bytes, SocketAddr, u32)],
        order: &[usize],
        runs: &[Run],
        sent: &mut Sent,
        failed: &mut Vec<usize>,
    ) {
        if !self.gso {
            for run in runs {
                failed.extend_from_slice(&order[run.start..run.start + run.len]);
            }
            return;
        }
        let fd = socket.as_raw_fd();
        let mut i = 0;
        while i < runs.len() {
            let segment = runs[i].segment;
            let mut end = i + 1;
            while end < runs.len() && end - i < BATCH && runs[end].segment == segment {
                end += 1;
            }
            let chunk = &runs[i..end];
            let headers = &mut self.gso_headers;
            let r = socket.try_io(Interest::WRITABLE, || {
                let slices: Vec<Vec<IoSlice<'_>>> = chunk
                    .iter()
                    .map(|r| {
                        order[r.start..r.start + r.len]
                            .iter()
                            .map(|d| IoSlice::new(&queue[*d].0))
                            .collect()
                    })
                    .collect();
                let addrs: Vec<Option<SockaddrStorage>> = chunk
                    .iter()
                    .map(|r| Some(SockaddrStorage::from(queue[order[r.start]].1)))
                    .collect();
                let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
                let results = sendmmsg(fd, headers, &slices, &addrs, cmsgs, MsgFlags::MSG_DONTWAIT)
                    .map_err(std::io::Error::from)?;
                Ok(results.map(|r| r.bytes).collect::<Vec<_>>())
            });
            match r {
                Ok(lens) if !lens.is_empty() => {
                    for (run, n) in chunk.iter().zip(&lens) {
                        sent.datagrams += run.len as u64;
                        sent.bytes += *n as u64;
                        sent.segmented += 1;
                    }
                    i += lens.len();
                }
                Err(e) if e.kind() != ErrorKind::WouldBlock && sent.segmented == 0 => {
                    // Refused before any GSO send went through (EIO from a device
                    // without checksum offload, say): send plainly from now on.
                    tracing::info!(error = %e, "UDP GSO refused; sending datagram by datagram");
                    self.gso = false;
                    for run in &runs[i..] {
                        failed.extend_from_slice(&order[run.start..run.start + run.len]);
                    }
                    return;
                }
                Ok(_) | Err(_) => {
                    // Buffer full, or an error for this destination: drop its datagrams.
                    sent.dropped += runs[i].len as u64;
                    i += 1;
                }
            }
        }
    }
}

/// How a queue is sent. Its datagrams are grouped by destination and stream (each group
/// in the order queued) and each group is cut into messages: a run of two or more
/// datagrams, all of one size but the last, which may be shorter, goes as one GSO
/// message (RTP streams only: see [`SendBatch::push`]). Message k of every group goes in
/// wave k; within a wave no group has two
/// messages, so its GSO runs can share system calls by segment size (the control message
/// is per call) and its single datagrams can share others, without reordering a stream.
struct Plan {
    /// Datagram indices, grouped.
    order: Vec<usize>,
    waves: Vec<Wave>,
}

#[derive(Default)]
struct Wave {
    /// Sorted by segment size.
    runs: Vec<Run>,
    single: Vec<usize>,
}

fn plan(queue: &[(Bytes, SocketAddr, u32)]) -> Plan {
    let mut first: rustc_hash::FxHashMap<(SocketAddr, u32), usize> = Default::default();
    let mut keyed: Vec<(usize, usize)> = queue
        .iter()
        .enumerate()
        .map(|(i, (_, to, s))| (*first.entry((*to, *s)).or_insert(i), i))
        .collect();
    // Stable: each group's datagrams keep their order.
    keyed.sort_by_key(|(group, _)| *group);
    let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
    let key = |i: usize| (queue[order[i]].1, queue[order[i]].2);
    let len = |i: usize| queue[order[i]].0.len();
    let mut waves: Vec<Wave> = Vec::new();
    let mut s = 0;
    while s < order.len() {
        let group = key(s);
        let mut k = 0;
        while s < order.len() && key(s) == group {
            let segment = len(s);
            let mut e = s + 1;
            let mut total = segment;
            while e < order.len()
                && group.1 != 0
                && e - s < MAX_SEGMENTS
                && key(e) == group
                && len(e - 1) == segment
                && len(e) <= segment
                && total + len(e) <= MAX_GSO_BYTES
            {
                total += len(e);
                e += 1;
            }
            if waves.len() <= k {
                waves.push(Wave::default());
            }
            if e - s == 1 {
                waves[k].single.push(order[s]);
            } else {
                waves[k].runs.push(Run {
                    segment: u16::try_from(segment).unwrap_or(u16::MAX),
                    start: s,
                    len: e - s,
                });
            }
            k += 1;
            s = e;
        }
    }
    for w in &mut waves {
        w.runs.sort_by_key(|r| r.segment);
    }
    Plan { order, waves }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[(usize, u16)]) -> Vec<(Bytes, SocketAddr, u32)> {
        items
            .iter()
            .map(|(len, port)| {
                (
                    Bytes::from(vec![0u8; *len]),
                    SocketAddr::from(([127, 0, 0, 1], *port)),
                    7,
                )
            })
            .collect()
    }

    /// A frame's packets to each of three viewers: one GSO run per viewer, each viewer's
    /// in order, all in one wave.
    #[test]
    fn a_frame_to_each_viewer_is_one_run_per_viewer() {
        let queue = q(&[
            (1100, 1),
            (1100, 2),
            (1100, 3),
            (1100, 1),
            (1100, 2),
            (1100, 3),
            (700, 1),
            (700, 2),
            (700, 3),
        ]);
        let p = plan(&queue);
        assert_eq!(p.waves.len(), 1);
        let w = &p.waves[0];
        assert!(w.single.is_empty());
        assert_eq!(w.runs.len(), 3);
        for r in &w.runs {
            assert_eq!((r.segment, r.len), (1100, 3));
            let which = &p.order[r.start..r.start + r.len];
            let port = queue[which[0]].1.port();
            assert!(which.iter().all(|i| queue[*i].1.port() == port));
            assert!(which.windows(2).all(|w| w[0] < w[1]), "queued order kept");
        }
    }

    /// A shorter datagram ends a run and a longer one after it starts another, in the
    /// next wave; another stream to the same destination is a group of its own.
    #[test]
    fn runs_break_where_sizes_change() {
        let mut queue = q(&[(1000, 1), (500, 1), (1000, 1), (1000, 1), (300, 2)]);
        queue.push((
            Bytes::from(vec![0u8; 90]),
            SocketAddr::from(([127, 0, 0, 1], 1)),
            8,
        ));
        let p = plan(&queue);
        assert_eq!(p.waves.len(), 2);
        let runs = |w: &Wave| {
            w.runs
                .iter()
                .map(|r| (r.segment, r.len))
                .collect::<Vec<_>>()
        };
        assert_eq!(runs(&p.waves[0]), [(1000, 2)]);
        assert_eq!(
            p.waves[0].single,
            vec![4, 5],
            "port 2, and port 1's other stream"
        );
        assert_eq!(runs(&p.waves[1]), [(1000, 2)]);
        let r = p.waves[1].runs[0];
        assert_eq!(&p.order[r.start..r.start + r.len], &[2, 3]);
    }

    /// Datagrams from a GSO send arrive as separate datagrams, in order, with the
    /// payloads they were queued with (when the kernel takes GSO at all).
    #[tokio::test]
    async fn segmented_sends_arrive_as_datagrams() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let gso = gso_supported(&tx);
        tx.set_nonblocking(true).unwrap();
        let tx = UdpSocket::from_std(tx).unwrap();
        let to = rx.local_addr().unwrap();
        let mut batch = SendBatch::with_gso(gso);
        for (i, len) in [1200usize, 1200, 1200, 800].iter().enumerate() {
            batch.push_stream(Bytes::from(vec![i as u8; *len]), to, 1);
        }
        // As in a worker, whose reactor has seen the socket writable before it sends.
        tx.writable().await.unwrap();
        let sent = batch.flush(&tx);
        assert_eq!((sent.datagrams, sent.dropped), (4, 0));
        assert_eq!(sent.segmented, u64::from(gso));
        let mut buf = [0u8; 2000];
        for (i, len) in [1200usize, 1200, 1200, 800].iter().enumerate() {
            let n = rx.recv(&mut buf).unwrap();
            assert_eq!(n, *len);
            assert!(buf[..n].iter().all(|b| *b == i as u8));
        }
    }
}
