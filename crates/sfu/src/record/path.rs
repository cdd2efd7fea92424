//! File names made from names: every path a recording writes is a directory the server
//! chose joined with names that clients influence (the room id, participant and track
//! ids, what a manifest says). [`join`] is the one way they meet: it takes `name` only
//! when it is exactly one ordinary path component, so the result is provably inside
//! `dir` — never `..`, `.`, a nested path, an absolute path, a hidden file or a name
//! the file system would refuse.

use std::path::{Component, Path, PathBuf};

/// Longest file name most file systems take (ext4, XFS, APFS: 255 bytes).
pub const MAX_NAME_BYTES: usize = 255;

/// `name` when it is safe as one file or directory name, else `None`: not empty, at most
/// [`MAX_NAME_BYTES`], no separator (`/` or `\`), no NUL or other control character, not
/// starting with a dot, and exactly one [`Component::Normal`].
pub fn safe_component(name: &str) -> Option<&str> {
    let plain = !name.is_empty()
        && name.len() <= MAX_NAME_BYTES
        && !name.starts_with('.')
        && !name
            .chars()
            .any(|c| c == '/' || c == '\\' || c.is_control());
    if !plain {
        return None;
    }
    let mut parts = Path::new(name).components();
    match (parts.next(), parts.next()) {
        (Some(Component::Normal(n)), None) if n == name => Some(name),
        _ => None,
    }
}

/// `dir/name`, when `name` is a [`safe_component`]; an `InvalidInput` error otherwise.
pub fn join(dir: &Path, name: &str) -> std::io::Result<PathBuf> {
    match safe_component(name) {
        Some(n) => Ok(dir.join(n)),
        None => Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{name:?} is not a safe file name"),
        )),
    }
}

/// The names the tests try to escape a directory with.
#[cfg(test)]
pub(crate) fn hostile_names() -> Vec<String> {
    vec![
        "..".into(),
        ".".into(),
        "../escaped".into(),
        "../../escaped".into(),
        "a/b".into(),
        "a/../../escaped".into(),
        "a\\b".into(),
        "..\\escaped".into(),
        "/tmp/escaped".into(),
        "/".into(),
        "nul\0byte".into(),
        "new\nline".into(),
        ".hidden".into(),
        "".into(),
        "x".repeat(MAX_NAME_BYTES + 1),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_single_plain_names_pass() {
        for ok in [
            "a",
            "PA_1f-TR_02.ivf",
            "room-1.2",
            "2026-11-25T203015.123Z",
            "é",
        ] {
            assert_eq!(safe_component(ok), Some(ok), "{ok}");
            assert_eq!(
                join(Path::new("/rec"), ok).unwrap(),
                Path::new("/rec").join(ok)
            );
        }
        assert!(safe_component(&"x".repeat(MAX_NAME_BYTES)).is_some());
        for bad in hostile_names() {
            assert_eq!(safe_component(&bad), None, "{bad:?}");
            let e = join(Path::new("/rec"), &bad).unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidInput);
        }
    }
}
