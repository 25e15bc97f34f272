//! Redis glob patterns (`*`, `?`, `[...]`, `\` escapes) matched against channel names, keeping
//! the text each `*` matched so that templates can use it as `{1}` … `{9}`.

/// Matches `channel` against `pattern` the way Redis's PSUBSCRIBE does and returns the text
/// matched by each `*`, in order; `None` when it does not match.
///
/// Each `*` takes the shortest text that lets the rest match (`a:*:*` splits `a:b:c:d` as
/// `b` / `c:d`). Only the latest `*` is ever widened: every element between two stars matches
/// exactly one character, so when the rest fails with the latest star's segment at its
/// earliest place, widening an earlier star cannot help. Matching is therefore
/// O(pattern × channel) — no exponential backtracking on the channel names and payload
/// fields that publishers control.
pub fn captures<'a>(pattern: &str, channel: &'a str) -> Option<Vec<&'a str>> {
    // Per star: where its text starts and ends in `channel`.
    let mut spans: Vec<(usize, usize)> = Vec::new();
    // The latest star: the pattern after it, its ordinal, and where its text ends now.
    let mut latest: Option<(usize, usize, usize)> = None;
    let (mut p, mut t) = (0, 0);
    loop {
        let advanced = match pattern[p..].chars().next() {
            Some('*') => {
                // Every earlier star has its span: this star's ordinal is their count.
                let ordinal = spans.len();
                spans.push((t, t));
                p += 1;
                latest = Some((p, ordinal, t));
                continue;
            }
            Some(_) => match_one(pattern, &mut p, channel, &mut t),
            None => t == channel.len(),
        };
        if advanced {
            if p == pattern.len() && t == channel.len() {
                return Some(
                    spans
                        .iter()
                        .map(|&(start, end)| &channel[start..end])
                        .collect(),
                );
            }
            continue;
        }
        // Widen the latest star by one character and try the rest again.
        let (after, ordinal, end) = latest?;
        let next = channel[end..].chars().next()?;
        let end = end + next.len_utf8();
        spans.truncate(ordinal + 1);
        spans[ordinal].1 = end;
        latest = Some((after, ordinal, end));
        (p, t) = (after, end);
    }
}

/// Matches the one pattern element at `p` (not a `*`) against the character at `t`,
/// advancing both on success.
fn match_one(pattern: &str, p: &mut usize, text: &str, t: &mut usize) -> bool {
    let mut elements = pattern[*p..].chars();
    let Some(ch) = text[*t..].chars().next() else {
        return false;
    };
    let hit = match elements.next() {
        Some('?') => true,
        Some('[') => class_matches(&mut elements, ch),
        Some('\\') => elements.next().unwrap_or('\\') == ch,
        Some(literal) => literal == ch,
        None => false,
    };
    if hit {
        *p = pattern.len() - elements.as_str().len();
        *t += ch.len_utf8();
    }
    hit
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
            // Consumed by the very code that matches it: a class ends where matching says
            // (a range's bound may be a bare `\`, after which `\]` is an escaped `]`).
            '[' => {
                class_matches(&mut chars, '\0');
            }
            '*' => count += 1,
            _ => {}
        }
    }
    count
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
