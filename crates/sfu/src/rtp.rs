//! Pure RTP helpers: sequence-number widening with duplicate detection, codec payload
//! inspection (keyframes, VP8 descriptors), the sequence/timestamp munger and audio
//! redundancy (RED).

pub mod codec;
pub mod munger;
pub mod red;
pub mod seq;

pub use codec::Codec;
pub use munger::Munger;
pub use seq::{SeqResult, SeqTracker};
