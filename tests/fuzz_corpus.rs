//! Every file of the fuzz corpus (`fuzz/corpus/<target>/`) through the same entry points as
//! the cargo-fuzz targets, so that `cargo test` on stable replays the seeds and every crash
//! ever found (each is added to the corpus once fixed). The fuzzing itself is
//! `scripts/fuzz.sh`.

#[path = "../fuzz/src/lib.rs"]
mod entry;

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn every_corpus_file_runs_through_its_target() {
    for (target, run) in entry::TARGETS {
        let files = corpus(target);
        assert!(files.len() >= 3, "{target}: only {} seeds", files.len());
        for path in files {
            let data = read(&path);
            // A panic names the file: the input to reproduce with `cargo fuzz run <target> <file>`.
            eprintln!("{target}: {}", path.display());
            run(&data);
        }
    }
}

/// The seeds are worth something only if they get past the parsers: the real browser
/// messages decode and the real SDP is accepted where the server would accept it.
#[test]
fn seeds_reach_past_the_parsers() {
    use confab_proto::ClientMessage;

    let mut decoded = 0;
    for path in corpus("signal") {
        let data = read(&path);
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = String::from_utf8(data.clone()).expect("signal seeds are UTF-8");
        let ok = ClientMessage::decode(&text).is_ok();
        let chat = confab_sfu::chat::parse_chat(&data, 4096).1.is_ok();
        // Seeds are named for what they hold: valid messages, chat frames, or crashes/bad input.
        if name.starts_with("chat-") {
            assert!(chat, "{name} is not a valid chat frame");
        } else if !name.starts_with("bad-") && !name.starts_with("crash-") {
            assert!(ok, "{name} does not decode");
            decoded += 1;
        }
    }
    assert!(decoded >= 5, "only {decoded} valid signaling seeds");

    let (mut offers, mut answers) = (0, 0);
    for path in corpus("sdp") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (offer_ok, answer_ok) = entry::sdp_outcome(&read(&path));
        if name.starts_with("offer-") {
            assert!(offer_ok, "{name} refused as a publish offer");
            offers += 1;
        }
        if name.starts_with("answer-") {
            assert!(answer_ok, "{name} refused as the subscriber's answer");
            answers += 1;
        }
    }
    assert!(
        offers >= 2 && answers >= 1,
        "{offers} offers, {answers} answers"
    );

    let mut parsed = 0;
    for path in corpus("rtp") {
        use rtc::shared::marshal::Unmarshal;
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let data = read(&path);
        if name.starts_with("vp8-") || name.starts_with("opus-") {
            let pkt = rtc::rtp::Packet::unmarshal(&mut bytes::BytesMut::from(&data[..]))
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            // A keyframe starts in its first packet; its continuations carry no header.
            if name.starts_with("vp8-keyframe-first") {
                assert!(
                    confab_sfu::rtp::Codec::Vp8.is_keyframe(&pkt.payload),
                    "{name}"
                );
            }
            parsed += 1;
        }
    }
    assert!(parsed >= 3, "only {parsed} real RTP seeds");

    for path in corpus("rtcp") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("bad-") || name.starts_with("crash-") {
            continue;
        }
        let data = read(&path);
        rtc::rtcp::packet::unmarshal(&mut bytes::BytesMut::from(&data[..]))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// A short, bounded fuzz run that fits in CI (coverage-guided fuzzing needs a nightly
/// sanitizer build: `scripts/fuzz.sh`). Random mutations of the seeds (bit flips, byte
/// changes, insertions, deletions, truncation, splices of two seeds) go through every
/// target for about two seconds each. The RNG seed is printed: a failure replays with
/// `FUZZ_SEED=<n> cargo test --test fuzz_corpus mutated`.
#[test]
fn mutated_seeds_never_panic() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("FUZZ_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let budget = std::time::Duration::from_millis(
        std::env::var("FUZZ_MS_PER_TARGET")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2000),
    );
    for (target, run) in entry::TARGETS {
        let seeds: Vec<Vec<u8>> = corpus(target).iter().map(|p| read(p)).collect();
        let start = std::time::Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < budget {
            let mut data = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..=8) {
                mutate(&mut rng, &mut data, &seeds);
            }
            run(&data);
            runs += 1;
        }
        eprintln!("{target}: {runs} mutated inputs");
        assert!(runs > 0);
    }
}

fn mutate(rng: &mut impl rand::Rng, data: &mut Vec<u8>, seeds: &[Vec<u8>]) {
    const INTERESTING: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\n'];
    let len = data.len();
    match rng.random_range(0..7) {
        0 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 if len > 0 => {
            let i = rng.random_range(0..len);
            data[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
        }
        2 => {
            let i = rng.random_range(0..=len);
            data.insert(i, rng.random());
        }
        3 if len > 0 => {
            let i = rng.random_range(0..len);
            let n = rng.random_range(1..=(len - i).min(16));
            data.drain(i..i + n);
        }
        4 if len > 0 => data.truncate(rng.random_range(0..len)),
        5 => {
            // Splice: our head, another seed's tail.
            let other = &seeds[rng.random_range(0..seeds.len())];
            let cut = rng.random_range(0..=len);
            let from = rng.random_range(0..=other.len());
            data.truncate(cut);
            data.extend_from_slice(&other[from..]);
        }
        _ if len >= 2 => {
            // A length or counter field pushed to an extreme.
            let i = rng.random_range(0..len - 1);
            let v: u16 = if rng.random() { 0xffff } else { 0 };
            data[i..i + 2].copy_from_slice(&v.to_be_bytes());
        }
        _ => data.push(rng.random()),
    }
}
