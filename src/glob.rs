//! Redis glob patterns (`*`, `?`, `[...]`, `\` escapes) matched against channel names, keeping
//! the text each `*` matched so that templates can use it as `{1}` … `{9}`.

/// Matches `channel` against `pattern` the way Redis's PSUBSCRIBE does and returns the text
/// matched by each `*`, in order; `None` when it does not match.
pub fn captures<'a>(pattern: &str, channel: &'a str) -> Option<Vec<&'a str>> {
    let mut found = Vec::new();
    matches(pattern, channel, channel, &mut found).then_some(found)
}

/// How many `*` of a pattern capture text (escaped ones and those inside `[...]` do not).
pub fn capture_count(pattern: &str) -> usize {
    let mut count = 0;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '[' => skip_class(&mut chars),
            '*' => count += 1,
            _ => {}
        }
    }
    count
}

fn skip_class(chars: &mut std::str::Chars) {
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            ']' => return,
            _ => {}
        }
    }
}

fn matches<'a>(pattern: &str, text: &'a str, whole: &'a str, found: &mut Vec<&'a str>) -> bool {
    let mut p = pattern.chars();
    let mut t = text;
    while let Some(c) = p.next() {
        match c {
            '*' => {
                let rest = p.as_str();
                let start = whole.len() - t.len();
                let depth = found.len();
                // Shortest match first, so that `a:*:*` splits `a:b:c:d` as `b` / `c:d`.
                let ends = t
                    .char_indices()
                    .map(|(i, _)| i)
                    .chain(std::iter::once(t.len()));
                for end in ends {
                    found.truncate(depth);
                    found.push(&whole[start..start + end]);
                    if matches(rest, &t[end..], whole, found) {
                        return true;
                    }
                }
                found.truncate(depth);
                return false;
            }
            '?' => match t.chars().next() {
                Some(ch) => t = &t[ch.len_utf8()..],
                None => return false,
            },
            '[' => {
                let Some(ch) = t.chars().next() else {
                    return false;
                };
                if !class_matches(&mut p, ch) {
                    return false;
                }
                t = &t[ch.len_utf8()..];
            }
            '\\' => {
                let literal = p.next().unwrap_or('\\');
                if !t.starts_with(literal) {
                    return false;
                }
                t = &t[literal.len_utf8()..];
            }
            literal => {
                if !t.starts_with(literal) {
                    return false;
                }
                t = &t[literal.len_utf8()..];
            }
        }
    }
    t.is_empty()
}

/// Consumes a `[...]` class from `p` (after the `[`) and tells whether `ch` is in it.
fn class_matches(p: &mut std::str::Chars, ch: char) -> bool {
    let negated = p.as_str().starts_with('^');
    if negated {
        p.next();
    }
    let mut hit = false;
    while let Some(c) = p.next() {
        match c {
            ']' => break,
            '\\' => {
                if p.next() == Some(ch) {
                    hit = true;
                }
            }
            low => {
                let rest = p.as_str();
                let mut ahead = rest.chars();
                if ahead.next() == Some('-')
                    && let Some(high) = ahead.next().filter(|h| *h != ']')
                {
                    p.next();
                    p.next();
                    let (low, high) = if low <= high {
                        (low, high)
                    } else {
                        (high, low)
                    };
                    hit |= (low..=high).contains(&ch);
                    continue;
                }
                hit |= low == ch;
            }
        }
    }
    hit != negated
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
    fn counts_only_capturing_stars() {
        assert_eq!(capture_count("job:*"), 1);
        assert_eq!(capture_count("a:*:[*]:\\*:*"), 2);
    }
}
