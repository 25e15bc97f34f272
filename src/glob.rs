//! Redis glob patterns (`*`, `?`, `[...]`, `\` escapes) matched against channel names, keeping
//! the text each `*` matched so that templates can use it as `{1}` … `{9}`.
//!
//! Matching follows Redis's own matcher (`stringmatchlen`, which PSUBSCRIBE applies) to the
//! byte, edge cases included: a message Redis delivered for a pattern is one the bridge can
//! route by it. Like Redis it reads bytes, not characters (`?` is one byte, and a class
//! compares bytes as C `char`s), a `-` between two bytes of a class makes a range even when
//! the second is a `]` (`[a-]x]` is the range `]`–`a` and `x`), and a class runs to the end
//! of the pattern when no `]` closes it. One difference is kept: Redis matches the empty
//! channel with no pattern but the empty one, so it never delivers it to a pattern route,
//! while the other texts matched here (a payload field's value, a topic a client names) may
//! be empty, and `*` matches them.

use std::ffi::c_char;

/// Matches `channel` against `pattern` the way Redis's PSUBSCRIBE does and returns the text
/// matched by each `*`, in order; `None` when it does not match. A star whose text would
/// split a UTF-8 character (a `?` or a class took part of it) has no text: the captures stop
/// before it, and a template that places it or a later one has no value.
///
/// Each `*` takes the shortest text that lets the rest match (`a:*:*` splits `a:b:c:d` as
/// `b` / `c:d`), as Redis tries them. Only the latest `*` is ever widened: every element
/// between two stars matches exactly one byte, so when the rest fails with the latest star's
/// segment at its earliest place, widening an earlier star cannot help (Redis stops there
/// too). Matching is therefore O(pattern × channel) — no exponential backtracking on the
/// channel names and payload fields that publishers control.
pub fn captures<'a>(pattern: &str, channel: &'a str) -> Option<Vec<&'a str>> {
    let spans = star_spans(pattern.as_bytes(), channel.as_bytes())?;
    Some(
        spans
            .into_iter()
            .map_while(|(start, end)| channel.get(start..end))
            .collect(),
    )
}

/// Whether `pattern` matches `text`, as Redis's PSUBSCRIBE would match it as a channel.
pub fn matches(pattern: &str, text: &str) -> bool {
    star_spans(pattern.as_bytes(), text.as_bytes()).is_some()
}

/// Where each star's text starts and ends in `text`, when `pattern` matches it.
fn star_spans(pattern: &[u8], text: &[u8]) -> Option<Vec<(usize, usize)>> {
    let mut spans: Vec<(usize, usize)> = Vec::new();
    // The latest star: the pattern after it, its ordinal, and where its text ends now.
    let mut latest: Option<(usize, usize, usize)> = None;
    let (mut p, mut t) = (0, 0);
    loop {
        let advanced = match pattern.get(p) {
            Some(b'*') => {
                // Every earlier star has its span: this star's ordinal is their count.
                let ordinal = spans.len();
                spans.push((t, t));
                p += 1;
                latest = Some((p, ordinal, t));
                continue;
            }
            Some(_) => match text.get(t) {
                Some(&byte) => match match_one(pattern, p, byte) {
                    Some(next) => {
                        (p, t) = (next, t + 1);
                        true
                    }
                    None => false,
                },
                None => false,
            },
            None => t == text.len(),
        };
        if advanced {
            if p == pattern.len() && t == text.len() {
                return Some(spans);
            }
            continue;
        }
        // Widen the latest star by one byte and try the rest again.
        let (after, ordinal, end) = latest?;
        if end >= text.len() {
            return None;
        }
        let end = end + 1;
        spans.truncate(ordinal + 1);
        spans[ordinal].1 = end;
        latest = Some((after, ordinal, end));
        (p, t) = (after, end);
    }
}

/// Matches the pattern element at `p` (not a `*`) against `byte`: where the next element
/// starts, or `None`.
fn match_one(pattern: &[u8], p: usize, byte: u8) -> Option<usize> {
    match pattern[p] {
        b'?' => Some(p + 1),
        b'[' => {
            let (next, hit) = class(pattern, p + 1, byte);
            hit.then_some(next)
        }
        // A `\` that ends the pattern is a literal one.
        b'\\' if p + 1 < pattern.len() => (pattern[p + 1] == byte).then_some(p + 2),
        literal => (literal == byte).then_some(p + 1),
    }
}

/// How many `*` of a pattern capture text (escaped ones and those inside `[...]` do not).
pub fn capture_count(pattern: &str) -> usize {
    let pattern = pattern.as_bytes();
    let mut count = 0;
    let mut p = 0;
    while let Some(&element) = pattern.get(p) {
        p = match element {
            b'\\' => p + 2,
            // Ends where matching ends it (a range's bound may be a bare `\` or a `]`).
            b'[' => class(pattern, p + 1, 0).0,
            b'*' => {
                count += 1;
                p + 1
            }
            _ => p + 1,
        };
    }
    count
}

/// Reads the `[...]` class whose body starts at `p` (after the `[`), as Redis does: where the
/// element after it starts, and whether `byte` is in it.
fn class(pattern: &[u8], mut p: usize, byte: u8) -> (usize, bool) {
    let negated = pattern.get(p) == Some(&b'^');
    if negated {
        p += 1;
    }
    let mut hit = false;
    loop {
        let left = pattern.len().saturating_sub(p);
        if left == 0 {
            break;
        }
        match pattern[p] {
            b'\\' if left >= 2 => {
                p += 1;
                hit |= pattern[p] == byte;
            }
            b']' => {
                p += 1;
                break;
            }
            low if left >= 3 && pattern[p + 1] == b'-' => {
                let high = pattern[p + 2];
                // Redis compares C `char`s: signed where they are (x86-64), so that bytes
                // from 0x80 up sort below ASCII there.
                let (low, high) = (low as c_char, high as c_char);
                let (low, high) = if low <= high {
                    (low, high)
                } else {
                    (high, low)
                };
                hit |= (low..=high).contains(&(byte as c_char));
                p += 2;
            }
            literal => hit |= literal == byte,
        }
        p += 1;
    }
    (p, hit != negated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn star_captures_in_order() {
        assert_eq!(captures("job:*", "job:abc"), Some(vec!["abc"]));
        assert_eq!(captures("a:*:*", "a:b:c:d"), Some(vec!["b", "c:d"]));
        assert_eq!(captures("job:*", "job:"), Some(vec![""]));
        assert_eq!(captures("job:*", "jobs:1"), None);
        assert_eq!(captures("exact", "exact"), Some(vec![]));
    }

    #[test]
    fn question_marks_classes_and_escapes() {
        assert_eq!(captures("h?llo", "hello"), Some(vec![]));
        assert_eq!(captures("h[ae]llo", "hallo"), Some(vec![]));
        assert_eq!(captures("h[^e]llo", "hello"), None);
        assert_eq!(captures("h[a-c]llo", "hbllo"), Some(vec![]));
        assert_eq!(captures("a\\*b", "a*b"), Some(vec![]));
        assert_eq!(captures("a\\*b", "axb"), None);
        assert_eq!(captures("ü:*", "ü:é"), Some(vec!["é"]));
    }

    #[test]
    fn bytes_ranges_and_open_classes_read_as_redis_reads_them() {
        // `?` and a class take one byte: `é` is two.
        assert_eq!(captures("?", "é"), None);
        assert_eq!(captures("??", "é"), Some(vec![]));
        assert_eq!(captures("?:*", "é:1"), None);
        assert_eq!(captures("[^a][^a]:*", "é:1"), Some(vec!["1"]));
        // A star whose text would split a character has no text, nor have the later ones.
        assert!(matches("?*", "é"));
        assert_eq!(captures("?*", "é"), Some(vec![]));
        assert_eq!(captures("*:?*:*", "a:é:b"), Some(vec!["a"]));
        // A `-` before a `]` makes a range up to it, and the class reads on.
        for channel in ["]", "_", "a", "x"] {
            assert_eq!(captures("[a-]x]", channel), Some(vec![]), "{channel}");
        }
        for channel in ["-", "b", "-x]", "a-"] {
            assert_eq!(captures("[a-]x]", channel), None, "{channel}");
        }
        // With fewer than three bytes left there is no range, and an open class runs to the
        // pattern's end; a `\\` that ends it is a literal one.
        assert_eq!(captures("[a-", "-"), Some(vec![]));
        assert_eq!(captures("[ab", "b"), Some(vec![]));
        assert_eq!(captures("[ab", "["), None);
        assert_eq!(captures("[a\\", "\\"), Some(vec![]));
        assert_eq!(captures("a\\", "a\\"), Some(vec![]));
        assert_eq!(capture_count("[ab*"), 0);
        // A range compares C `char`s: signed ones put `é`'s second byte below every ASCII
        // byte, so `[é-z]` holds `b` there.
        let signed = c_char::MIN != 0;
        assert_eq!(matches("[é-z]", "b"), signed);
    }

    #[test]
    fn stars_take_the_shortest_text_that_lets_the_rest_match() {
        assert_eq!(captures("*:*", "a:b:c"), Some(vec!["a", "b:c"]));
        assert_eq!(captures("**", "ab"), Some(vec!["", "ab"]));
        assert_eq!(captures("*a*b", "xaxab"), Some(vec!["x", "xa"]));
        assert_eq!(captures("*?", "abc"), Some(vec!["ab"]));
        assert_eq!(captures("*[*]*", "a*b*c"), Some(vec!["a", "b*c"]));
        assert_eq!(captures("a*", "b"), None);
        assert_eq!(captures("*x", "abc"), None);
        assert_eq!(captures("", ""), Some(vec![]));
        assert_eq!(captures("", "a"), None);
    }

    /// The definition, by recursion: each star tries the shortest text first.
    fn reference<'a>(pattern: &[u8], text: &'a str, at: usize, found: &mut Vec<&'a str>) -> bool {
        match pattern.split_first() {
            None => at == text.len(),
            Some((b'*', rest)) => (at..=text.len()).any(|end| {
                found.push(&text[at..end]);
                let ok = reference(rest, text, end, found);
                if !ok {
                    found.pop();
                }
                ok
            }),
            Some((&c, rest)) => {
                at < text.len()
                    && (c == b'?' || text.as_bytes()[at] == c)
                    && reference(rest, text, at + 1, found)
            }
        }
    }

    #[test]
    fn agrees_with_the_recursive_definition_on_every_small_case() {
        let words = |alphabet: &[u8], len: usize| -> Vec<String> {
            let mut all = vec![String::new()];
            for _ in 0..len {
                let longer: Vec<String> = all
                    .iter()
                    .flat_map(|w| alphabet.iter().map(move |&c| format!("{w}{}", c as char)))
                    .collect();
                all.extend(longer);
                all.sort();
                all.dedup();
            }
            all
        };
        for pattern in words(b"*?a:", 4) {
            for text in words(b"a:b", 5) {
                let mut expected = Vec::new();
                let expected =
                    reference(pattern.as_bytes(), &text, 0, &mut expected).then_some(expected);
                assert_eq!(captures(&pattern, &text), expected, "{pattern} ~ {text}");
            }
        }
    }

    #[test]
    fn many_stars_match_in_polynomial_time() {
        // Exponential backtracking would not finish this in any reasonable time.
        let pattern = "*a".repeat(30) + "b";
        let channel = "a".repeat(2000);
        let started = std::time::Instant::now();
        assert_eq!(captures(&pattern, &channel), None);
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    #[test]
    fn counts_only_capturing_stars() {
        assert_eq!(capture_count("job:*"), 1);
        assert_eq!(capture_count("a:*:[*]:\\*:*"), 2);
        // `\` as a range's bound: the next `\]` escapes the `]`, so the class runs on over
        // the `*`, which captures nothing.
        assert_eq!(capture_count(r"[a-\\]*"), 0);
        assert_eq!(captures(r"[a-\\]*", "_"), Some(vec![]));
        assert_eq!(capture_count(r"[a-\\]]*"), 1);
        assert_eq!(captures(r"[a-\\]]*", "_x"), Some(vec!["x"]));
    }
}
