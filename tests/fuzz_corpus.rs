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
        let chat = confab_sfu::chat::parse_chat(&data, 4096).is_ok();
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
