//! Names in a room: a newcomer named like someone already visible there is told apart by
//! a number, "Ada (2)", so that no participant can pass as another. Names compare
//! without case, in their cleaned form ([`DisplayName::comparable`]: NFC, no invisible
//! characters), so "ADA" and "A\u{200B}da" are both "Ada" here.

use confab_proto::DisplayName;
use std::collections::HashSet;

/// `name`, or the first of "name (2)", "name (3)", ... that none of `taken` reads as
/// (the base shortened if the number would not fit in [`DisplayName::MAX_CHARS`]).
pub fn unique_name<'a>(
    name: DisplayName,
    taken: impl IntoIterator<Item = &'a DisplayName>,
) -> DisplayName {
    let taken: HashSet<String> = taken.into_iter().map(DisplayName::comparable).collect();
    if !taken.contains(&name.comparable()) {
        return name;
    }
    // Among taken.len() + 1 numbers at least one is free.
    for n in 2..=taken.len() + 2 {
        let suffix = format!(" ({n})");
        let room = DisplayName::MAX_CHARS - suffix.chars().count();
        let base: String = name.as_str().chars().take(room).collect();
        let Ok(candidate) = DisplayName::parse(&format!("{}{suffix}", base.trim_end())) else {
            continue;
        };
        if !taken.contains(&candidate.comparable()) {
            return candidate;
        }
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<DisplayName> {
        v.iter().map(|n| DisplayName::parse(n).unwrap()).collect()
    }

    #[test]
    fn newcomers_are_numbered_when_their_name_is_taken() {
        let long = "x".repeat(64);
        let long_want = format!("{} (2)", "x".repeat(60));
        // (taken, newcomer, named)
        let cases: &[(&[&str], &str, &str)] = &[
            (&[], "Ada", "Ada"),
            (&["Bob"], "Ada", "Ada"),
            (&["Ada"], "Ada", "Ada (2)"),
            (&["Ada"], "ADA", "ADA (2)"),
            (&["Ada"], "A\u{200B}da", "Ada (2)"),
            (&["Zoe\u{0308}"], "zoë", "zoë (2)"),
            (&["Ada", "Ada (2)"], "ada", "ada (3)"),
            (&["Ada", "Ada (3)"], "Ada", "Ada (2)"),
            (&["Ada (2)"], "Ada (2)", "Ada (2) (2)"),
            (&[&long], &long, &long_want),
        ];
        for (taken, newcomer, want) in cases {
            let got = unique_name(DisplayName::parse(newcomer).unwrap(), &names(taken));
            assert_eq!(got.as_str(), *want, "{taken:?} + {newcomer:?}");
            assert!(got.as_str().chars().count() <= DisplayName::MAX_CHARS);
        }
    }

    #[test]
    fn a_crowd_of_the_same_name_gets_distinct_names() {
        let mut room: Vec<DisplayName> = Vec::new();
        for _ in 0..50 {
            let n = unique_name(DisplayName::parse("Ada").unwrap(), &room);
            room.push(n);
        }
        let distinct: HashSet<String> = room.iter().map(DisplayName::comparable).collect();
        assert_eq!(distinct.len(), 50);
        assert_eq!(room[49].as_str(), "Ada (50)");
    }
}
