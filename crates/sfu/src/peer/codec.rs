//! A published track's codec, as needed to open down-tracks for it, and its serialised
//! form (relayed copies on other nodes re-publish tracks from it).

use crate::rtp::Codec;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters};

/// The codec of a published track, as needed to open down-tracks for it. Serialised
/// (for the relayed copies on other nodes) as mime type, clock, channels, fmtp line,
/// feedback and payload type.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(into = "CodecWire", from = "CodecWire")]
pub struct TrackCodec {
    pub codec: Codec,
    pub rtp: RTCRtpCodec,
    /// The payload type the publisher sends it with.
    pub payload_type: u8,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CodecWire {
    mime: String,
    clock_rate: u32,
    channels: u16,
    fmtp: String,
    feedback: Vec<(String, String)>,
    pt: u8,
}

impl From<TrackCodec> for CodecWire {
    fn from(c: TrackCodec) -> Self {
        CodecWire {
            mime: c.rtp.mime_type,
            clock_rate: c.rtp.clock_rate,
            channels: c.rtp.channels,
            fmtp: c.rtp.sdp_fmtp_line,
            feedback: c
                .rtp
                .rtcp_feedback
                .into_iter()
                .map(|f| (f.typ, f.parameter))
                .collect(),
            pt: c.payload_type,
        }
    }
}

impl From<CodecWire> for TrackCodec {
    fn from(w: CodecWire) -> Self {
        TrackCodec {
            codec: Codec::from_mime(&w.mime),
            rtp: RTCRtpCodec {
                mime_type: w.mime,
                clock_rate: w.clock_rate,
                channels: w.channels,
                sdp_fmtp_line: w.fmtp,
                rtcp_feedback: w
                    .feedback
                    .into_iter()
                    .map(
                        |(typ, parameter)| rtc::rtp_transceiver::rtp_sender::RTCPFeedback {
                            typ,
                            parameter,
                        },
                    )
                    .collect(),
            },
            payload_type: w.pt,
        }
    }
}

/// The negotiated codec of mime type `mime` (case aside), if any.
pub(super) fn by_mime<'a>(
    codecs: &'a [RTCRtpCodecParameters],
    mime: &str,
) -> Option<&'a RTCRtpCodecParameters> {
    codecs
        .iter()
        .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
}

/// The payload type of the negotiated RTX codec (RFC 4588) that repairs payload type `apt`.
pub(super) fn rtx_for(codecs: &[RTCRtpCodecParameters], apt: u8) -> Option<u8> {
    codecs
        .iter()
        .filter(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case("video/rtx"))
        .find(|c| {
            c.rtp_codec.sdp_fmtp_line.split(';').any(|p| {
                p.trim()
                    .strip_prefix("apt=")
                    .is_some_and(|v| v.trim().parse() == Ok(apt))
            })
        })
        .map(|c| c.payload_type)
}
