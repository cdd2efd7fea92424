#![no_main]
// The body is shared with tests/fuzz_corpus.rs: see fuzz/src/lib.rs.
libfuzzer_sys::fuzz_target!(|data: &[u8]| confab_fuzz::stun(data));
