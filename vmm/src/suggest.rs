//! The nearest known name to a misspelt one, for "did you mean" messages.

/// Levenshtein distance between `a` and `b`, by characters.
pub fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate nearest to `name`, when it is close enough to be a slip of the fingers (at
/// most a third of its length in edits, at least one).
pub fn nearest<'a>(name: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).max(1);
    candidates
        .into_iter()
        .map(|c| (distance(&name.to_ascii_lowercase(), &c.to_ascii_lowercase()), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_and_nearest_names() {
        assert_eq!(distance("helo", "hello"), 1);
        assert_eq!(distance("on_exitt", "on_exit"), 1);
        assert_eq!(distance("kitten", "sitting"), 3);
        assert_eq!(distance("", "abc"), 3);
        assert_eq!(nearest("helo", ["exit-code", "hello", "hv"]), Some("hello"));
        assert_eq!(nearest("vmx-basc", ["vmx-basic", "vmx-bench"]), Some("vmx-basic"));
        assert_eq!(nearest("On_Exit", ["on_exit"]), Some("on_exit"));
        assert_eq!(nearest("zzzz", ["hello"]), None);
    }
}
