//! Turning a decoded page into items: every match of the pattern is an item,
//! every named group a field, HTML entities unescaped and whitespace trimmed.

use std::borrow::Cow;

use regex::Regex;

/// A compiled pattern with its field names in group order.
#[derive(Debug, Clone)]
pub struct Extractor {
    pattern: Regex,
    /// (capture-group index, field name) for each named group.
    groups: Vec<usize>,
}

/// One extracted item: field values in the order of [`Extractor::fields`].
pub type Item = Vec<String>;

impl Extractor {
    pub fn new(pattern: Regex) -> Extractor {
        let groups = pattern
            .capture_names()
            .enumerate()
            .filter_map(|(index, name)| name.map(|_| index))
            .collect();
        Extractor { pattern, groups }
    }

    /// All items on a page; zero matches is a valid, empty page.
    pub fn extract(&self, text: &str) -> Vec<Item> {
        let mut items = Vec::new();
        self.for_each(text, |values| {
            items.push(values.iter().map(|v| v.to_string()).collect())
        });
        items
    }

    /// Calls `visit` with each item's cleaned field values, borrowed from
    /// `text` where no unescaping was needed: the parse stage renders them
    /// straight into the output format without building an `Item`.
    pub fn for_each<'t>(&self, text: &'t str, mut visit: impl FnMut(&[Cow<'t, str>])) {
        let mut values: Vec<Cow<'t, str>> = Vec::with_capacity(self.groups.len());
        for captures in self.pattern.captures_iter(text) {
            values.clear();
            values.extend(self.groups.iter().map(|&index| {
                captures
                    .get(index)
                    .map_or(Cow::Borrowed(""), |m| clean_borrowed(m.as_str()))
            }));
            visit(&values);
        }
    }
}

/// Unescapes HTML entities and trims surrounding whitespace, borrowing when
/// there is nothing to unescape.
fn clean_borrowed(raw: &str) -> Cow<'_, str> {
    if raw.contains('&') {
        Cow::Owned(html_escape::decode_html_entities(raw).trim().to_string())
    } else {
        Cow::Borrowed(raw.trim())
    }
}

/// Unescapes HTML entities and trims surrounding whitespace.
pub fn clean(raw: &str) -> String {
    if raw.contains('&') {
        html_escape::decode_html_entities(raw).trim().to_string()
    } else {
        raw.trim().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_groups_become_trimmed_unescaped_fields() {
        let pattern =
            Regex::new(r#"<a href="(?P<url>[^"]+)">(?P<title>[^<]*)</a>(?:<i>(?P<tag>\w+)</i>)?"#)
                .unwrap();
        let extractor = Extractor::new(pattern);
        let items = extractor.extract(
            r#"<a href="/b?id=1&amp;x=2">  AT&amp;T &lt;3  </a><i>hot</i> <a href="/2">二</a>"#,
        );
        assert_eq!(
            items,
            vec![
                vec!["/b?id=1&x=2".to_string(), "AT&T <3".into(), "hot".into()],
                vec!["/2".to_string(), "二".into(), String::new()],
            ]
        );
    }

    #[test]
    fn no_match_is_an_empty_page() {
        let extractor = Extractor::new(Regex::new("(?P<x>zzz)").unwrap());
        assert!(extractor.extract("nothing here").is_empty());
    }
}
