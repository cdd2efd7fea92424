//! What the worker reads in a publisher's offer that rtc does not hand back: the simulcast
//! encodings each media section negotiates (RFC 8851 `a=rid:<id> send`, ordered as in
//! RFC 8853 `a=simulcast:send`), and the section's stream and track ids (`a=msid`). Also
//! the one rewrite of an offer the peer layer needs ([`without_stream_ids`]). Text in,
//! values out: no rtc types, so it is tested on SDP strings.

use std::collections::HashMap;

/// One audio or video section of an offer that is not stopped (port 0) and has a mid.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MediaSection {
    pub mid: String,
    /// The rids of `a=rid:<id> send` lines: in the order of `a=simulcast:send` (the
    /// sender's encodings, lowest first in every browser's and our clients' convention),
    /// then any not listed there in declaration order. Empty without simulcast.
    pub send_rids: Vec<String>,
    /// `a=msid:<stream id> <track id>`.
    pub msid: Option<(String, String)>,
    /// The section sends media (`sendonly` or `sendrecv`, the default; not `recvonly` or
    /// `inactive`).
    pub sends: bool,
}

/// The audio and video sections of `sdp`, in order.
pub fn media_sections(sdp: &str) -> Vec<MediaSection> {
    let mut out = Vec::new();
    let mut current: Option<Parsing> = None;
    for line in sdp.lines().map(str::trim_end) {
        if let Some(m) = line.strip_prefix("m=") {
            out.extend(current.take().and_then(Parsing::finish));
            let mut words = m.split(' ');
            let media = words.next().unwrap_or("");
            let port = words.next().unwrap_or("0");
            // Data channels and stopped (port 0) sections negotiate no media.
            current =
                ((media == "audio" || media == "video") && port != "0").then(Parsing::default);
        } else if let Some(p) = current.as_mut() {
            p.line(line);
        }
    }
    out.extend(current.and_then(Parsing::finish));
    out
}

/// How many audio and video sections of an offer send media: the tracks a publisher asks
/// to send. Stopped or receive-only sections do not count.
pub fn sending_media_sections(sdp: &str) -> usize {
    media_sections(sdp).iter().filter(|s| s.sends).count()
}

/// Why a client's offer is refused before it reaches a media thread.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferRefusal {
    /// More media sections (of any kind and direction) than a participant may offer.
    #[error("the offer has {n} media sections; at most {max} are allowed")]
    TooManySections { n: usize, max: usize },
    /// `publish.tracks` names mids that the offer lacks.
    #[error("publish names mids {0:?} that the offer does not contain")]
    UnknownMids(Vec<String>),
}

/// Checks a `publish` offer in one pass over its lines, without parsing it: at most
/// `max_sections` `m=` lines (receive-only, stopped and data sections count: each costs
/// the media thread work when parsed), and every mid of `tracks` present.
///
/// Why: the offer is parsed on the media thread that forwards every packet of its rooms;
/// this check runs on the signaling side, so what a client may ask of a media thread is
/// bounded before it gets there.
pub fn check_offer<'a>(
    sdp: &str,
    tracks: impl IntoIterator<Item = &'a str>,
    max_sections: usize,
) -> Result<(), OfferRefusal> {
    let mut sections = 0usize;
    let mut mids: Vec<&str> = Vec::new();
    for line in sdp.lines() {
        if line.starts_with("m=") {
            sections += 1;
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            mids.push(mid.trim());
        }
    }
    if sections > max_sections {
        return Err(OfferRefusal::TooManySections {
            n: sections,
            max: max_sections,
        });
    }
    let unknown: Vec<String> = tracks
        .into_iter()
        .filter(|t| !mids.contains(t))
        .map(str::to_owned)
        .collect();
    if unknown.is_empty() {
        Ok(())
    } else {
        Err(OfferRefusal::UnknownMids(unknown))
    }
}

/// The number of `m=` sections of `sdp` (one pass, no parsing).
pub fn section_count(sdp: &str) -> usize {
    sdp.lines().filter(|l| l.starts_with("m=")).count()
}

/// The ICE username fragment of `sdp` (the first `a=ice-ufrag`: the server bundles every
/// section on one transport).
pub fn ice_ufrag(sdp: &str) -> Option<&str> {
    sdp.lines()
        .find_map(|l| l.strip_prefix("a=ice-ufrag:"))
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

/// Per mid, the simulcast rids the offer sends (only sections that have some).
pub fn send_rids(sdp: &str) -> HashMap<String, Vec<String>> {
    media_sections(sdp)
        .into_iter()
        .filter(|s| !s.send_rids.is_empty())
        .map(|s| (s.mid, s.send_rids))
        .collect()
}

#[derive(Default)]
struct Parsing {
    mid: Option<String>,
    rids: Vec<String>,
    simulcast_send: Vec<String>,
    msid: Option<(String, String)>,
    receive_only: bool,
}

impl Parsing {
    fn line(&mut self, line: &str) {
        if line == "a=recvonly" || line == "a=inactive" {
            self.receive_only = true;
        } else if let Some(mid) = line.strip_prefix("a=mid:") {
            self.mid = Some(mid.trim().to_owned());
        } else if let Some(rid) = line.strip_prefix("a=rid:") {
            // a=rid:<rid-id> <direction> [pt=..;max-width=..]
            let mut words = rid.split_whitespace();
            if let (Some(id), Some("send")) = (words.next(), words.next())
                && valid_rid(id)
                && !self.rids.iter().any(|r| r == id)
            {
                self.rids.push(id.to_owned());
            }
        } else if let Some(sc) = line.strip_prefix("a=simulcast:") {
            // a=simulcast:send q;h;~f [recv ...]: `;` separates streams, `,` alternatives,
            // `~` marks one that starts paused (still negotiated).
            let mut words = sc.split_whitespace();
            while let (Some(dir), Some(list)) = (words.next(), words.next()) {
                if dir == "send" {
                    self.simulcast_send.extend(
                        list.split([';', ','])
                            .map(|id| id.trim_start_matches('~').to_owned()),
                    );
                }
            }
        } else if let Some(msid) = line.strip_prefix("a=msid:") {
            let mut words = msid.split_whitespace();
            if let (Some(stream), Some(track)) = (words.next(), words.next()) {
                self.msid = Some((stream.to_owned(), track.to_owned()));
            }
        }
    }

    fn finish(self) -> Option<MediaSection> {
        let mid = self.mid.filter(|m| !m.is_empty())?;
        let mut send_rids: Vec<String> = self
            .simulcast_send
            .iter()
            .filter(|id| self.rids.contains(id))
            .cloned()
            .collect();
        send_rids.dedup();
        for r in self.rids {
            if !send_rids.contains(&r) {
                send_rids.push(r);
            }
        }
        Some(MediaSection {
            mid,
            send_rids,
            msid: self.msid,
            sends: !self.receive_only,
        })
    }
}

/// RFC 8851 rid-id: alphanumerics, `-` and `_`, at most 255 characters (browsers use 1-16).
fn valid_rid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 255
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The payload types whose `a=rtpmap` names a codec starting with `prefix` (lower case,
/// with the slash: `"opus/"`), anywhere in `sdp`.
fn payload_types<'a>(sdp: &'a str, prefix: &str) -> Vec<&'a str> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=rtpmap:"))
        .filter_map(|r| r.split_once(' '))
        .filter(|(_, codec)| codec.to_ascii_lowercase().starts_with(prefix))
        .map(|(pt, _)| pt)
        .collect()
}

/// `sdp` with Opus discontinuous transmission asked for (`usedtx=1` added to each Opus
/// payload type's `a=fmtp` line that does not say), every other line unchanged.
///
/// Why (see `Peer::answer_offer`): rtc 0.21 answers a codec with the offer's format
/// parameters, not its own; an answer that says `usedtx=1` is what makes the publisher's
/// encoder send silence as one packet every 400 ms instead of fifty a second.
pub fn with_opus_dtx(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let opus = payload_types(sdp, "opus/");
    let mut out = String::with_capacity(sdp.len() + 16 * opus.len());
    for l in sdp.lines() {
        let l = l.trim_end_matches('\r');
        out.push_str(l);
        if let Some((pt, params)) = l.strip_prefix("a=fmtp:").and_then(|f| f.split_once(' '))
            && opus.contains(&pt)
            && !params.split(';').any(|p| p.trim().starts_with("usedtx="))
        {
            out.push_str(";usedtx=1");
        }
        out.push_str(eol);
    }
    out
}

/// `sdp` with each audio section's redundant-audio payload type (`red/48000/2` whose
/// `a=fmtp` names an Opus payload type) moved to the front of its `m=` line, every other
/// line unchanged.
///
/// Why (see `Peer::answer_offer`): rtc 0.21 answers codecs in the offer's order, and a
/// browser sends RED only when the answer lists it before Opus. With it, a packet the
/// publisher's uplink loses comes back out of the next one (`rtp::red::RedDecoder`).
pub fn with_red_first(sdp: &str) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    let (opus, red) = (payload_types(sdp, "opus/"), payload_types(sdp, "red/"));
    let red: Vec<&str> = sdp
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("a=fmtp:"))
        .filter_map(|f| f.split_once(' '))
        .filter(|(pt, params)| {
            red.contains(pt)
                && params
                    .split('/')
                    .next()
                    .is_some_and(|p| opus.contains(&p.trim()))
        })
        .map(|(pt, _)| pt)
        .collect();
    let mut out = String::with_capacity(sdp.len());
    for l in sdp.lines() {
        let l = l.trim_end_matches('\r');
        match l.strip_prefix("m=audio ") {
            Some(rest) if !red.is_empty() => {
                // port, proto, then the payload types
                let mut f = rest.split(' ');
                let (port, proto) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                let pts: Vec<&str> = f.collect();
                let (first, others): (Vec<&str>, Vec<&str>) =
                    pts.iter().partition(|pt| red.contains(pt));
                out.push_str("m=audio ");
                out.push_str(port);
                out.push(' ');
                out.push_str(proto);
                for pt in first.iter().chain(&others) {
                    out.push(' ');
                    out.push_str(pt);
                }
            }
            _ => out.push_str(l),
        }
        out.push_str(eol);
    }
    out
}

/// `sdp` without the stream identification (`a=msid`, `a=ssrc`, `a=ssrc-group`) of the
/// sections whose mid is in `mids`; every other line, and the line endings, unchanged.
///
/// Why (see `Peer::answer_offer`): rtc 0.21 rebuilds the receiver of every section it finds
/// a stream id in, forgetting the simulcast SSRCs it learned; a section without one is left
/// as it is.
pub fn without_stream_ids(sdp: &str, mids: &[String]) -> String {
    let eol = if sdp.contains("\r\n") { "\r\n" } else { "\n" };
    // Sections as line ranges, with their mid (which may come after the msid line).
    let lines: Vec<&str> = sdp.lines().collect();
    let mut drop = vec![false; lines.len()];
    let mut start = None;
    let flush = |start: Option<usize>, end: usize, drop: &mut Vec<bool>| {
        let Some(s) = start else { return };
        let mid = lines[s..end]
            .iter()
            .find_map(|l| l.trim_end().strip_prefix("a=mid:"))
            .map(str::trim);
        if mid.is_some_and(|m| mids.iter().any(|x| x == m)) {
            for (i, l) in lines.iter().enumerate().take(end).skip(s) {
                if l.starts_with("a=msid:")
                    || l.starts_with("a=ssrc:")
                    || l.starts_with("a=ssrc-group:")
                {
                    drop[i] = true;
                }
            }
        }
    };
    for (i, l) in lines.iter().enumerate() {
        if l.starts_with("m=") {
            flush(start, i, &mut drop);
            start = Some(i);
        }
    }
    flush(start, lines.len(), &mut drop);
    let mut out = String::with_capacity(sdp.len());
    for (l, d) in lines.iter().zip(drop) {
        if !d {
            out.push_str(l.trim_end_matches('\r'));
            out.push_str(eol);
        }
    }
    out
}

#[cfg(test)]
mod tests {

    #[test]
    fn opus_is_asked_for_dtx_once() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63\r\na=rtpmap:111 opus/48000/2\r\n\
                     a=fmtp:111 minptime=10;useinbandfec=1\r\na=rtpmap:63 red/48000/2\r\n\
                     a=fmtp:63 111/111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
                     a=rtpmap:96 VP8/90000\r\na=fmtp:96 max-fr=30\r\n";
        let out = with_opus_dtx(offer);
        assert!(out.contains("a=fmtp:111 minptime=10;useinbandfec=1;usedtx=1\r\n"));
        assert!(out.contains("a=fmtp:63 111/111\r\n"), "RED untouched");
        assert!(out.contains("a=fmtp:96 max-fr=30\r\n"), "video untouched");
        assert_eq!(out.len(), offer.len() + ";usedtx=1".len());
        assert_eq!(with_opus_dtx(&out), out, "said already: unchanged");
        let off = offer.replace("useinbandfec=1", "useinbandfec=1;usedtx=0");
        assert_eq!(with_opus_dtx(&off), off, "a client that says no is heard");
    }

    #[test]
    fn red_that_wraps_opus_goes_first_in_the_audio_sections() {
        let offer = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 63 9 0\r\na=rtpmap:111 opus/48000/2\r\n\
                     a=rtpmap:63 red/48000/2\r\na=fmtp:63 111/111\r\n\
                     m=video 9 UDP/TLS/RTP/SAVPF 96 63\r\na=rtpmap:96 VP8/90000\r\n";
        let out = with_red_first(offer);
        assert!(
            out.contains("m=audio 9 UDP/TLS/RTP/SAVPF 63 111 9 0\r\n"),
            "{out}"
        );
        assert!(
            out.contains("m=video 9 UDP/TLS/RTP/SAVPF 96 63\r\n"),
            "video untouched"
        );
        assert_eq!(out.len(), offer.len());
        // RED of something that is not Opus, or no RED: unchanged.
        let g722 = offer.replace("a=fmtp:63 111/111", "a=fmtp:63 9/9");
        assert_eq!(with_red_first(&g722), g722);
        let plain = "v=0\nm=audio 9 UDP/TLS/RTP/SAVPF 111\na=rtpmap:111 opus/48000/2\n";
        assert_eq!(with_red_first(plain), plain);
    }

    use super::*;

    #[test]
    fn the_ice_ufrag_is_read_from_the_first_section() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=ice-ufrag:abcd\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=ice-ufrag:efgh\r\n";
        assert_eq!(ice_ufrag(sdp), Some("abcd"));
        assert_eq!(ice_ufrag("v=0\r\na=ice-ufrag:\r\n"), None);
        assert_eq!(ice_ufrag("v=0\r\n"), None);
    }

    #[test]
    fn offers_are_checked_before_parsing() {
        let sdp =
            "v=0\r\nm=audio 9 X 111\r\na=mid:0\r\nm=video 9 X 96\r\na=mid:1\r\na=recvonly\r\n";
        assert_eq!(check_offer(sdp, ["0", "1"], 2), Ok(()));
        assert_eq!(
            check_offer(sdp, ["0"], 1),
            Err(OfferRefusal::TooManySections { n: 2, max: 1 })
        );
        assert_eq!(
            check_offer(sdp, ["0", "7"], 2),
            Err(OfferRefusal::UnknownMids(vec!["7".into()]))
        );
        // Receive-only sections count: each costs a parse on the media thread.
        let storm: String = std::iter::once("v=0\r\n".to_string())
            .chain((0..590).map(|i| format!("m=video 9 X 96\r\na=mid:{i}\r\na=recvonly\r\n")))
            .collect();
        assert!(matches!(
            check_offer(&storm, [], 16),
            Err(OfferRefusal::TooManySections { n: 590, max: 16 })
        ));
        assert_eq!(section_count(&storm), 590);
        assert_eq!(check_offer("", [], 0), Ok(()));
    }

    #[test]
    fn sending_sections_are_counted() {
        let sdp = "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=sendonly\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:1\r\na=sendrecv\r\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\r\na=mid:2\r\na=inactive\r\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\r\na=mid:3\r\na=sendonly\r\n\
            m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=mid:4\r\n\
            m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:5\r\n";
        // mid 0, 1 and 5 (sendrecv by default); not the inactive, stopped or data ones.
        assert_eq!(sending_media_sections(sdp), 3);
        assert_eq!(sending_media_sections(""), 0);
        assert_eq!(sending_media_sections("m=video 9 X 96\na=recvonly"), 0);
    }

    /// The shape of Chromium's camera offer with three encodings, plus audio and data.
    const CHROMIUM: &str = "v=0\r\n\
        o=- 1 2 IN IP4 127.0.0.1\r\n\
        s=-\r\n\
        t=0 0\r\n\
        a=group:BUNDLE 0 1 2\r\n\
        m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
        a=mid:0\r\n\
        a=sendonly\r\n\
        a=msid:stream-a audio-a\r\n\
        a=ssrc:1111 cname:x\r\n\
        m=video 9 UDP/TLS/RTP/SAVPF 96\r\n\
        a=mid:1\r\n\
        a=sendonly\r\n\
        a=msid:stream-a video-a\r\n\
        a=rid:q send\r\n\
        a=rid:h send\r\n\
        a=rid:f send\r\n\
        a=simulcast:send q;h;f\r\n\
        m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n\
        a=mid:2\r\n";

    #[test]
    fn sections_rids_and_msid() {
        let s = media_sections(CHROMIUM);
        assert_eq!(s.len(), 2, "audio and video, not the data section: {s:?}");
        assert_eq!(s[0].mid, "0");
        assert!(s[0].send_rids.is_empty());
        assert_eq!(s[0].msid, Some(("stream-a".into(), "audio-a".into())));
        assert_eq!(s[1].mid, "1");
        assert_eq!(s[1].send_rids, ["q", "h", "f"]);
        let by_mid = send_rids(CHROMIUM);
        assert_eq!(by_mid.len(), 1);
        assert_eq!(by_mid["1"], ["q", "h", "f"]);
    }

    #[test]
    fn rid_lines_table() {
        let section = |body: &str| {
            let sdp = format!("v=0\nm=video 9 UDP/TLS/RTP/SAVPF 96\na=mid:v\n{body}");
            media_sections(&sdp)
                .into_iter()
                .next()
                .map(|s| s.send_rids)
                .unwrap_or_default()
        };
        let cases: &[(&str, &[&str])] = &[
            // Negotiated but not all sending yet: all three are the layer set.
            (
                "a=rid:q send\na=rid:h send\na=rid:f send\n",
                &["q", "h", "f"],
            ),
            // Parameters after the direction.
            (
                "a=rid:lo send pt=96;max-width=320\na=rid:hi send max-fps=30\n",
                &["lo", "hi"],
            ),
            // Receive rids are not the publisher's layers.
            ("a=rid:q send\na=rid:x recv\n", &["q"]),
            // Order from a=simulcast (a paused `~` one included), not from the rid lines.
            (
                "a=rid:f send\na=rid:q send\na=rid:h send\na=simulcast:send q;~h;f\n",
                &["q", "h", "f"],
            ),
            // Alternatives, and a rid declared but not in a=simulcast: kept at the end.
            (
                "a=rid:a send\na=rid:b send\na=rid:c send\na=simulcast:send b,a\n",
                &["b", "a", "c"],
            ),
            // a=simulcast naming an undeclared rid adds nothing.
            ("a=rid:q send\na=simulcast:send q;zz\n", &["q"]),
            // Duplicates, malformed and empty lines.
            (
                "a=rid:q send\na=rid:q send\na=rid:bad!id send\na=rid:\na=rid:h\n",
                &["q"],
            ),
            // CRLF endings.
            ("a=rid:q send\r\na=rid:h send\r\n", &["q", "h"]),
            ("", &[]),
        ];
        for (body, want) in cases {
            assert_eq!(section(body), *want, "{body:?}");
        }
    }

    #[test]
    fn stopped_and_midless_sections_are_skipped() {
        let sdp = "v=0\n\
            m=video 0 UDP/TLS/RTP/SAVPF 96\na=mid:0\na=rid:q send\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\na=rid:q send\n\
            m=video 9 UDP/TLS/RTP/SAVPF 96\na=rid:r send\na=mid:2\n";
        let s = media_sections(sdp);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].mid, "2");
        assert_eq!(s[0].send_rids, ["r"]);
        assert!(media_sections("").is_empty());
        assert!(media_sections("garbage\r\nm=\r\na=mid:\r\n").is_empty());
    }

    #[test]
    fn stream_ids_are_removed_from_the_named_sections_only() {
        let sdp = CHROMIUM.replace(
            "a=msid:stream-a video-a\r\n",
            "a=msid:stream-a video-a\r\na=ssrc-group:FID 5 6\r\na=ssrc:5 msid:stream-a video-a\r\n",
        );
        let out = without_stream_ids(&sdp, &["1".to_owned()]);
        let video = &out[out.find("m=video").unwrap()..out.find("m=application").unwrap()];
        assert!(!video.contains("a=msid"), "{video}");
        assert!(!video.contains("a=ssrc"), "{video}");
        assert!(video.contains("a=rid:f send\r\na=simulcast:send q;h;f\r\n"));
        // The audio section keeps its own; nothing else changes.
        assert!(out.contains("a=msid:stream-a audio-a\r\na=ssrc:1111 cname:x\r\n"));
        assert_eq!(media_sections(&out)[1].send_rids, ["q", "h", "f"]);
        assert_eq!(media_sections(&out)[1].msid, None);
        assert_eq!(
            out.len(),
            CHROMIUM.len() - "a=msid:stream-a video-a\r\n".len()
        );
        // No mid named: unchanged.
        assert_eq!(without_stream_ids(CHROMIUM, &[]), CHROMIUM);
        assert_eq!(
            without_stream_ids("v=0\nm=audio 9 X 111\na=mid:0\na=msid:s t\n", &["0".into()]),
            "v=0\nm=audio 9 X 111\na=mid:0\n"
        );
    }
}
