//! Muxing one participant's recorded camera and microphone into one file, in sync: the
//! manifest's wall-clock start times become ffmpeg input offsets, and the streams are
//! copied, never re-encoded. `confab mux <recording dir>` runs it.

use super::file::{FileEntry, Manifest};
use confab_proto::{MediaKind, TrackSource};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MuxError {
    #[error("cannot read {0}: {1}")]
    Manifest(PathBuf, String),
    #[error("the recording has no participant {0} (it has: {1})")]
    NoSuchParticipant(String, String),
    #[error("the recording has several participants; choose one with --participant: {0}")]
    WhichParticipant(String),
    #[error("participant {0} has no camera or microphone recording")]
    NothingToMux(String),
    #[error("cannot run ffmpeg: {0}")]
    Ffmpeg(String),
    /// The manifest names a file or participant that is no plain file name (it was
    /// edited): nothing outside the recording's directory is read or written.
    #[error("the manifest names {0:?}, which is not a file name in the recording's directory")]
    UnsafeName(String),
}

/// What to run: `ffmpeg <args>`, writing `output`.
#[derive(Debug, Clone, PartialEq)]
pub struct MuxPlan {
    pub participant_id: String,
    pub output: PathBuf,
    pub args: Vec<OsString>,
}

/// Reads `<dir>/manifest.json`.
pub fn read_manifest(dir: &Path) -> Result<Manifest, MuxError> {
    let path = dir.join("manifest.json");
    let bytes =
        std::fs::read(&path).map_err(|e| MuxError::Manifest(path.clone(), e.to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| MuxError::Manifest(path, e.to_string()))
}

/// The ffmpeg command that muxes `participant`'s camera video and microphone audio (the
/// largest file of each, when a track was published more than once) into `output`, by
/// default `<dir>/<participant>.webm` (`.mkv` for H.264). `participant` may be left out
/// when the recording has only one.
pub fn plan(
    dir: &Path,
    manifest: &Manifest,
    participant: Option<&str>,
    output: Option<&Path>,
) -> Result<MuxPlan, MuxError> {
    let mut ids: Vec<&str> = manifest
        .files
        .iter()
        .map(|f| f.participant_id.as_str())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    let id = match participant {
        Some(p) if ids.contains(&p) => p,
        Some(p) => return Err(MuxError::NoSuchParticipant(p.into(), ids.join(", "))),
        None if ids.len() == 1 => ids[0],
        None => return Err(MuxError::WhichParticipant(ids.join(", "))),
    };
    let largest = |kind: MediaKind, source: TrackSource| -> Option<&FileEntry> {
        manifest
            .files
            .iter()
            .filter(|f| f.participant_id == id && f.kind == kind && f.source == source)
            .max_by_key(|f| f.bytes)
    };
    let inputs: Vec<&FileEntry> = [
        largest(MediaKind::Video, TrackSource::Camera),
        largest(MediaKind::Audio, TrackSource::Microphone),
    ]
    .into_iter()
    .flatten()
    .collect();
    let Some(base) = inputs.iter().map(|f| f.start_unix_ms).min() else {
        return Err(MuxError::NothingToMux(id.into()));
    };
    let h264 = inputs
        .iter()
        .any(|f| f.codec.eq_ignore_ascii_case("video/H264"));
    let output = match output {
        Some(o) => o.to_path_buf(),
        None => {
            let name = format!("{id}.{}", if h264 { "mkv" } else { "webm" });
            super::path::join(dir, &name).map_err(|_| MuxError::UnsafeName(name))?
        }
    };
    let mut args: Vec<OsString> = ["-hide_banner", "-loglevel", "error", "-y"]
        .iter()
        .map(OsString::from)
        .collect();
    for f in &inputs {
        let offset = (f.start_unix_ms - base) as f64 / 1000.0;
        args.push("-itsoffset".into());
        args.push(format!("{offset:.3}").into());
        args.push("-i".into());
        let input =
            super::path::join(dir, &f.path).map_err(|_| MuxError::UnsafeName(f.path.clone()))?;
        args.push(input.into());
    }
    for i in 0..inputs.len() {
        args.push("-map".into());
        args.push(i.to_string().into());
    }
    args.push("-c".into());
    args.push("copy".into());
    args.push(output.clone().into());
    Ok(MuxPlan {
        participant_id: id.into(),
        output,
        args,
    })
}

/// Plans and runs ffmpeg; returns the file written.
pub fn run(
    dir: &Path,
    participant: Option<&str>,
    output: Option<&Path>,
) -> Result<PathBuf, MuxError> {
    let manifest = read_manifest(dir)?;
    let plan = plan(dir, &manifest, participant, output)?;
    let out = std::process::Command::new("ffmpeg")
        .args(&plan.args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| MuxError::Ffmpeg(e.to_string()))?;
    if !out.status.success() {
        return Err(MuxError::Ffmpeg(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(plan.output)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str, kind: MediaKind, source: TrackSource, start: i64, bytes: u64) -> FileEntry {
        let video = kind == MediaKind::Video;
        FileEntry {
            path: format!("{p}-{start}.{}", if video { "ivf" } else { "ogg" }),
            participant_id: p.into(),
            participant_name: p.into(),
            track_id: format!("TR_{start}"),
            kind,
            source,
            codec: if video { "video/VP8" } else { "audio/opus" }.into(),
            start_unix_ms: start,
            start_from_sender_report: true,
            packets: 1,
            bytes,
            gaps: 0,
        }
    }

    fn manifest(files: Vec<FileEntry>) -> Manifest {
        Manifest {
            room: "r".into(),
            started_unix_ms: 0,
            finished_unix_ms: 0,
            dropped_packets: 0,
            files,
        }
    }

    fn strings(p: &MuxPlan) -> Vec<String> {
        p.args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn offsets_come_from_the_start_times() {
        let m = manifest(vec![
            entry("PA_a", MediaKind::Audio, TrackSource::Microphone, 1_000, 10),
            entry("PA_a", MediaKind::Video, TrackSource::Camera, 1_250, 10),
            // Not muxed: a screen share, and a smaller copy of the camera.
            entry("PA_a", MediaKind::Video, TrackSource::Screen, 900, 10),
            entry("PA_a", MediaKind::Video, TrackSource::Camera, 5_000, 5),
        ]);
        let p = plan(Path::new("/rec"), &m, None, None).unwrap();
        assert_eq!(p.output, Path::new("/rec/PA_a.webm"));
        assert_eq!(
            strings(&p),
            [
                "-hide_banner",
                "-loglevel",
                "error",
                "-y",
                "-itsoffset",
                "0.250",
                "-i",
                "/rec/PA_a-1250.ivf",
                "-itsoffset",
                "0.000",
                "-i",
                "/rec/PA_a-1000.ogg",
                "-map",
                "0",
                "-map",
                "1",
                "-c",
                "copy",
                "/rec/PA_a.webm"
            ]
        );
    }

    #[test]
    fn the_participant_must_be_clear() {
        let m = manifest(vec![
            entry("PA_a", MediaKind::Audio, TrackSource::Microphone, 0, 1),
            entry("PA_b", MediaKind::Audio, TrackSource::Microphone, 0, 1),
            entry("PA_c", MediaKind::Video, TrackSource::Screen, 0, 1),
        ]);
        let dir = Path::new("/rec");
        assert_eq!(
            plan(dir, &m, None, None),
            Err(MuxError::WhichParticipant("PA_a, PA_b, PA_c".into()))
        );
        assert!(matches!(
            plan(dir, &m, Some("PA_x"), None),
            Err(MuxError::NoSuchParticipant(..))
        ));
        assert_eq!(
            plan(dir, &m, Some("PA_c"), None),
            Err(MuxError::NothingToMux("PA_c".into()))
        );
        // Audio only is fine.
        let p = plan(dir, &m, Some("PA_b"), Some(Path::new("/tmp/b.webm"))).unwrap();
        assert_eq!(p.output, Path::new("/tmp/b.webm"));
        assert_eq!(strings(&p).iter().filter(|a| *a == "-i").count(), 1);
    }

    #[test]
    fn an_edited_manifest_cannot_point_outside_the_directory() {
        let dir = Path::new("/rec");
        for bad in crate::record::path::hostile_names() {
            // As a participant id, it would name the output file.
            let m = manifest(vec![entry(
                &bad,
                MediaKind::Audio,
                TrackSource::Microphone,
                0,
                1,
            )]);
            match plan(dir, &m, None, None) {
                Err(MuxError::UnsafeName(_)) => {}
                other => panic!("participant {bad:?}: {other:?}"),
            }
            // As a file, it would be read.
            let mut e = entry("PA_a", MediaKind::Audio, TrackSource::Microphone, 0, 1);
            e.path = bad.clone();
            match plan(dir, &manifest(vec![e]), None, None) {
                Err(MuxError::UnsafeName(n)) => assert_eq!(n, bad),
                other => panic!("file {bad:?}: {other:?}"),
            }
        }
    }
}
