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
    queue: Vec<(Bytes, SocketAddr)>,
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

    pub fn push(&mut self, data: Bytes, to: SocketAddr) {
        self.queue.push((data, to));
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    /// Sends everything queued, never blocking: what the kernel does not take is dropped.
    /// Each destination's datagrams leave in the order they were queued.
    pub fn flush(&mut self, socket: &UdpSocket) -> Sent {
        let mut sent = Sent::default();
        if self.queue.is_empty() {
            return sent;
        }
        let queue = std::mem::take(&mut self.queue);
        let mut plain = Vec::new();
        if self.gso && queue.len() > 1 {
            let plan = plan(&queue);
            plain = plan.single;
            if !plan.runs.is_empty() {
                let mut failed = Vec::new();
                self.send_runs(
                    socket,
                    &queue,
                    &plan.order,
                    &plan.runs,
                    &mut sent,
                    &mut failed,
                );
                plain.extend(failed);
            }
            for d in &plan.ordered {
                self.send_in_order(socket, &queue, &plan.order, d, &mut sent);
            }
        } else {
            plain.extend(0..queue.len());
        }
        self.send_plain(socket, &queue, &plain, &mut sent);
        self.queue = queue;
        self.queue.clear();
        sent
    }

    /// Sends one destination's messages one system call each, in order (a destination
    /// with several messages: batching by segment size could reorder them).
    fn send_in_order(
        &mut self,
        socket: &UdpSocket,
        queue: &[(Bytes, SocketAddr)],
        order: &[usize],
        msgs: &[Run],
        sent: &mut Sent,
    ) {
        use nix::sys::socket::sendmsg;
        let fd = socket.as_raw_fd();
        for m in msgs {
            let which = &order[m.start..m.start + m.len];
            let to = SockaddrStorage::from(queue[which[0]].1);
            let gso = self.gso && m.len > 1;
            let r = socket.try_io(Interest::WRITABLE, || {
                let iov: Vec<IoSlice<'_>> =
                    which.iter().map(|d| IoSlice::new(&queue[*d].0)).collect();
                let segment = m.segment;
                let cmsgs = [ControlMessage::UdpGsoSegments(&segment)];
                let cmsgs: &[ControlMessage<'_>] = if gso { &cmsgs } else { &[] };
                sendmsg(fd, &iov, cmsgs, MsgFlags::MSG_DONTWAIT, Some(&to))
                    .map_err(std::io::Error::from)
            });
            match r {
                Ok(n) => {
                    sent.datagrams += m.len as u64;
                    sent.bytes += n as u64;
                    if gso {
                        sent.segmented += 1;
                    }
                }
                Err(e) if gso && e.kind() != ErrorKind::WouldBlock && sent.segmented == 0 => {
                    tracing::info!(error = %e, "UDP GSO refused; sending datagram by datagram");
                    self.gso = false;
                    self.send_plain(socket, queue, which, sent);
                }
                Err(_) => sent.dropped += m.len as u64,
            }
        }
    }

    /// Sends datagrams `which` of `queue`, one per message, `BATCH` per system call.
    fn send_plain(
        &mut self,
        socket: &UdpSocket,
        queue: &[(Bytes, SocketAddr)],
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
        queue: &[(Bytes, SocketAddr)],
        order: &[usize],
        runs: &[Run],
        sent: &mut Sent,
        failed: &mut Vec<usize>,
    ) {
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

/// How a queue is sent: its datagram indices grouped by destination (each destination's
/// in the order queued), cut into messages (a run of two or more datagrams to one
/// destination, all of one size but the last, which may be shorter, goes as one GSO
/// message). A destination with one message can share a system call with others: GSO
/// runs (`runs`, sorted by segment size: the control message is per call) or single
/// datagrams (`single`); one with several is sent message by message (`ordered`).
struct Plan {
    order: Vec<usize>,
    runs: Vec<Run>,
    single: Vec<usize>,
    ordered: Vec<Vec<Run>>,
}

fn plan(queue: &[(Bytes, SocketAddr)]) -> Plan {
    let mut first: rustc_hash::FxHashMap<SocketAddr, usize> = Default::default();
    let mut keyed: Vec<(usize, usize)> = queue
        .iter()
        .enumerate()
        .map(|(i, (_, to))| (*first.entry(*to).or_insert(i), i))
        .collect();
    // Stable: each destination's datagrams keep their order.
    keyed.sort_by_key(|(dest, _)| *dest);
    let order: Vec<usize> = keyed.into_iter().map(|(_, i)| i).collect();
    let mut plan = Plan {
        order: Vec::new(),
        runs: Vec::new(),
        single: Vec::new(),
        ordered: Vec::new(),
    };
    let mut s = 0;
    while s < order.len() {
        let to = queue[order[s]].1;
        let mut msgs = Vec::new();
        while s < order.len() && queue[order[s]].1 == to {
            let segment = queue[order[s]].0.len();
            let mut e = s + 1;
            let mut total = segment;
            while e < order.len()
                && e - s < MAX_SEGMENTS
                && queue[order[e]].1 == to
                && queue[order[e - 1]].0.len() == segment
                && queue[order[e]].0.len() <= segment
                && total + queue[order[e]].0.len() <= MAX_GSO_BYTES
            {
                total += queue[order[e]].0.len();
                e += 1;
            }
            msgs.push(Run {
                segment: u16::try_from(segment).unwrap_or(u16::MAX),
                start: s,
                len: e - s,
            });
            s = e;
        }
        match msgs[..] {
            [m] if m.len == 1 => plan.single.push(order[m.start]),
            [m] => plan.runs.push(m),
            _ => plan.ordered.push(msgs),
        }
    }
    plan.runs.sort_by_key(|r| r.segment);
    plan.order = order;
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(items: &[(usize, u16)]) -> Vec<(Bytes, SocketAddr)> {
        items
            .iter()
            .map(|(len, port)| {
                (
                    Bytes::from(vec![0u8; *len]),
                    SocketAddr::from(([127, 0, 0, 1], *port)),
                )
            })
            .collect()
    }

    /// A frame's packets to each of three viewers: one GSO run per viewer, each viewer's
    /// in order.
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
        assert!(p.single.is_empty() && p.ordered.is_empty());
        assert_eq!(p.runs.len(), 3);
        for r in &p.runs {
            assert_eq!((r.segment, r.len), (1100, 3));
            let which = &p.order[r.start..r.start + r.len];
            let port = queue[which[0]].1.port();
            assert!(which.iter().all(|i| queue[*i].1.port() == port));
            assert!(which.windows(2).all(|w| w[0] < w[1]), "queued order kept");
        }
    }

    /// A shorter datagram ends a run; a longer one after it starts another; a lone
    /// datagram goes alone.
    #[test]
    fn runs_break_where_sizes_change() {
        let queue = q(&[(1000, 1), (500, 1), (1000, 1), (1000, 1), (300, 2)]);
        let p = plan(&queue);
        assert_eq!(p.single, vec![4]);
        assert!(p.runs.is_empty());
        assert_eq!(p.ordered.len(), 1, "port 1 has two messages, sent in order");
        let msgs = &p.ordered[0];
        assert_eq!(
            msgs.iter().map(|m| (m.segment, m.len)).collect::<Vec<_>>(),
            [(1000, 2), (1000, 2)]
        );
        assert_eq!(&p.order[msgs[0].start..msgs[0].start + 2], &[0, 1]);
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
            batch.push(Bytes::from(vec![i as u8; *len]), to);
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
