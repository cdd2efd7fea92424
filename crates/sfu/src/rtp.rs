//! Pure RTP helpers: sequence-number widening with duplicate detection, codec payload
//! inspection (keyframes, VP8 descriptors) and the sequence/timestamp munger.

pub mod codec;
pub mod munger;
pub mod seq;

pub use codec::Codec;
pub use munger::Munger;
pub use seq::{SeqResult, SeqTracker};
