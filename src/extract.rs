//! Turning a decoded page into items: every match of the pattern is an item,
//! every named group a field, HTML entities unescaped and whitespace trimmed.
//!
//! Most listing patterns start with a literal (`<td>`, `<li class=`) and are
//! one-pass: at each point of a match, the next byte decides which way the
//! pattern goes (`[^<]*<`, `\d+"`). For those, [`OnePass`] finds the items
//! with a literal search and one anchored one-pass run at each occurrence,
//! instead of the general engine's forward scan, backward scan and capture
//! pass per match; the results are the same (the tests compare the two), in
//! well under half the time. Other patterns use `regex` as it is.

use std::borrow::Cow;

use regex::Regex;
use regex_automata::dfa::onepass;
use regex_automata::nfa::thompson;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, Span};

/// A compiled pattern with its field names in group order.
#[derive(Debug, Clone)]
pub struct Extractor {
    pattern: Regex,
    /// The capture-group index of each named group.
    groups: Vec<usize>,
    /// The fast path, when the pattern allows it.
    one_pass: Option<OnePass>,
}

/// A one-pass DFA of the pattern and a search for the literals every match
/// starts with.
#[derive(Debug, Clone)]
struct OnePass {
    dfa: onepass::DFA,
    prefixes: Prefilter,
}

impl OnePass {
    /// `None` when the pattern is not one-pass, or its matches do not all
    /// start with one of a few non-empty literals.
    fn new(pattern: &str) -> Option<OnePass> {
        // The same syntax options as `Regex::new`.
        let hir = syntax::parse(pattern).ok()?;
        let prefixes = Prefilter::from_hir_prefix(MatchKind::LeftmostFirst, &hir)?;
        let nfa = thompson::Compiler::new().build_from_hir(&hir).ok()?;
        let dfa = onepass::DFA::new_from_nfa(nfa).ok()?;
        Some(OnePass { dfa, prefixes })
    }

    /// Every match's slots, `2 * groups` per match, appended to `found`, in
    /// the order of the general engine's `captures_iter`.
    ///
    /// A match starts with one of the prefix literals, so the leftmost match
    /// is the anchored match at the first occurrence of a literal where there
    /// is one. A one-pass DFA gives that match's leftmost-first end and
    /// groups. Matches cannot be empty (the literals are not), so the next
    /// search starts where the match ended.
    fn find_all(&self, text: &str, found: &mut Vec<Option<NonMaxUsize>>) {
        let haystack = text.as_bytes();
        let slot_count = 2 * self
            .dfa
            .get_nfa()
            .group_info()
            .group_len(regex_automata::PatternID::ZERO);
        let mut cache = self.dfa.create_cache();
        let mut at = 0;
        while at < haystack.len() {
            let Some(candidate) = self.prefixes.find(haystack, Span::from(at..haystack.len()))
            else {
                break;
            };
            let input = Input::new(haystack)
                .span(candidate.start..haystack.len())
                .anchored(Anchored::Yes);
            let base = found.len();
            found.resize(base + slot_count, None);
            let matched = self
                .dfa
                .try_search_slots(&mut cache, &input, &mut found[base..])
                .ok()
                .flatten()
                .is_some();
            match found[base + 1] {
                Some(end) if matched => at = end.get().max(candidate.start + 1),
                _ => {
                    found.truncate(base);
                    at = candidate.start + 1;
                }
            }
        }
    }
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
        let one_pass = OnePass::new(pattern.as_str());
        Extractor {
            pattern,
            groups,
            one_pass,
        }
    }

    /// The same extractor without the one-pass fast path (for comparing the
    /// two).
    pub fn general(pattern: Regex) -> Extractor {
        Extractor {
            one_pass: None,
            ..Extractor::new(pattern)
        }
    }

    /// Whether the one-pass fast path is used (see the module comment).
    pub fn is_one_pass(&self) -> bool {
        self.one_pass.is_some()
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
        if let Some(one_pass) = &self.one_pass {
            let mut found = Vec::new();
            one_pass.find_all(text, &mut found);
            let slot_count = 2 * self.pattern.captures_len();
            // Group bounds of a UTF-8 pattern on UTF-8 text are character
            // boundaries; should one not be, the general engine decides.
            if found
                .iter()
                .flatten()
                .all(|at| text.is_char_boundary(at.get()))
            {
                for slots in found.chunks(slot_count) {
                    values.clear();
                    values.extend(self.groups.iter().map(|&index| {
                        match (slots[2 * index], slots[2 * index + 1]) {
                            (Some(start), Some(end)) => {
                                clean_borrowed(&text[start.get()..end.get()])
                            }
                            _ => Cow::Borrowed(""),
                        }
                    }));
                    visit(&values);
                }
                return;
            }
        }
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

    /// Patterns of the kind listing pages need, each one-pass with a
    /// literal prefix, plus one with look-around and one with alternatives.
    const ONE_PASS: &[&str] = &[
        r#"<td>(?P<date>\d{4}-\d{2}-\d{2})</td>\s*<td><a href="(?P<url>/b/\d+)"[^>]*>(?P<title>[^<]*)</a></td>"#,
        r#"<a href="(?P<url>[^"]*)">(?P<title>[^<]*)</a>(?:<i>(?P<tag>\w+)</i>)?"#,
        r#"(?:li|td)>(?P<x>[^<]*)<"#,
        r#"\bid=(?P<id>\d+)\b"#,
        r#"td>(?P<a>[^<]*)</td>|li>(?P<b>[^<]*)</li>"#,
    ];

    #[test]
    fn listing_patterns_take_the_one_pass_path_and_others_do_not() {
        let example = crate::config::Config::parse(
            include_str!("../data/wooyun.toml"),
            std::path::Path::new("wooyun.toml"),
        )
        .expect("the example job parses");
        assert!(Extractor::new(example.pattern).is_one_pass());
        for pattern in ONE_PASS {
            assert!(
                Extractor::new(Regex::new(pattern).unwrap()).is_one_pass(),
                "{pattern}"
            );
        }
        // Not one-pass (`.*?` and `<` overlap; both branches start with
        // `<`), and no literal to start from.
        for pattern in [
            r"<b>(?P<x>.*?)</b>",
            r"<td>(?P<a>[^<]*)</td>|<li>(?P<b>[^<]*)</li>",
            r"(?P<n>\d+)",
            r"(?P<n>x*)",
        ] {
            let extractor = Extractor::new(Regex::new(pattern).unwrap());
            assert!(!extractor.is_one_pass(), "{pattern}");
        }
        let general = Extractor::new(Regex::new(r"<b>(?P<x>.*?)</b>").unwrap());
        assert_eq!(
            general.extract("<b> a </b><b>b</b>"),
            vec![vec!["a"], vec!["b"]]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]
        /// The fast path finds exactly what `regex` finds, on text made of
        /// the pieces the patterns care about (so matches, near-misses and
        /// overlapping candidates are common).
        #[test]
        fn the_one_pass_path_agrees_with_regex(
            which in 0..ONE_PASS.len(),
            pieces in proptest::collection::vec(0..PIECES.len(), 0..80),
        ) {
            let text: String = pieces.iter().map(|&i| PIECES[i]).collect();
            let pattern = Regex::new(ONE_PASS[which]).unwrap();
            let fast = Extractor::new(pattern.clone());
            proptest::prop_assert!(fast.is_one_pass());
            proptest::prop_assert_eq!(
                fast.extract(&text),
                Extractor::general(pattern).extract(&text)
            );
        }
    }

    const PIECES: &[&str] = &[
        "<td>",
        "</td>",
        "<li>",
        "</li>",
        "<a href=\"",
        "\">",
        "</a>",
        "<i>",
        "</i>",
        "/b/",
        "2024-01-02",
        "-",
        "7",
        "42",
        "x",
        "id=",
        " ",
        "\n",
        "é",
        "二",
        "&amp;",
        "<",
        ">",
        "\"",
        "title=\"t\"",
        // Whole items, so that matches (and matches cut short) are common.
        "<td>2024-01-02</td>\n<td><a href=\"/b/7\" title=\"t\">  x &amp; 二 </a></td>",
        "<a href=\"/q?a=1&amp;b\">t</a><i>hot</i>",
        "td>é</td>li>x</li>",
        "id=12 ",
    ];

    #[test]
    fn no_match_is_an_empty_page() {
        let extractor = Extractor::new(Regex::new("(?P<x>zzz)").unwrap());
        assert!(extractor.extract("nothing here").is_empty());
    }
}
