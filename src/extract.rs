//! Turning a decoded page into items: every match of the pattern is an item,
//! every named group a field, HTML entities unescaped and whitespace trimmed.
//!
//! Most listing patterns start with a literal (`<td>`, `<li class=`) and are
//! one-pass: at each point of a match, the next byte decides which way the
//! pattern goes (`[^<]*<`, `\d+"`). For those, [`OnePass`] finds the items
//! with a literal search, a lazy-DFA run anchored at each occurrence to find
//! where its match ends, and a one-pass DFA over the match for the groups,
//! instead of the general engine's forward scan, backward scan and capture
//! pass per match. The results are the same (the tests compare the two).
//!
//! Trying each occurrence can cost more than one pass over the page: on
//! hostile text every run can go on to the end (`<li>` ten thousand times
//! and no newline, for `<li>(?P<x>[^\n]*)\n`). So the runs have a budget of
//! a few times the page's length; past it, the general engine (linear in
//! the page) finishes the page from where the fast path stopped.

use std::borrow::Cow;
use std::sync::Mutex;

use regex::Regex;
use regex_automata::dfa::onepass;
use regex_automata::hybrid;
use regex_automata::nfa::thompson;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::util::syntax;
use regex_automata::{Anchored, Input, MatchKind, PatternID, Span};

/// A compiled pattern with its field names in group order.
#[derive(Debug, Clone)]
pub struct Extractor {
    pattern: Regex,
    /// The capture-group index of each named group.
    groups: Vec<usize>,
    /// The fast path, when the pattern allows it.
    one_pass: Option<OnePass>,
}

/// The literals every match starts with, a lazy DFA that finds where a match
/// from a given start ends, and a one-pass DFA for the groups.
#[derive(Debug)]
struct OnePass {
    prefixes: Prefilter,
    ends: hybrid::dfa::DFA,
    /// The lazy DFA's states, built as pages need them and kept.
    ends_cache: Mutex<hybrid::dfa::Cache>,
    groups: onepass::DFA,
    /// The runs' budget: this many bytes per byte of the page, plus
    /// `budget_extra`.
    budget_per_byte: usize,
    budget_extra: usize,
}

impl Clone for OnePass {
    fn clone(&self) -> OnePass {
        OnePass {
            prefixes: self.prefixes.clone(),
            ends: self.ends.clone(),
            ends_cache: Mutex::new(self.ends.create_cache()),
            groups: self.groups.clone(),
            budget_per_byte: self.budget_per_byte,
            budget_extra: self.budget_extra,
        }
    }
}

/// How a fast search ended.
#[derive(Debug, PartialEq, Eq)]
struct Searched {
    /// Where the general engine takes over, when the fast path gave up (the
    /// matches found end before it).
    resume_at: Option<usize>,
    /// Bytes the lazy DFA stepped through, all runs together.
    work: usize,
}

/// The anchored run from one start.
enum Run {
    /// The leftmost-first match ends here.
    Match(usize),
    NoMatch,
    /// Over budget, or the lazy DFA quit (a Unicode word boundary next to a
    /// non-ASCII character) or gave up on its cache.
    GaveUp,
}

impl OnePass {
    /// `None` when the pattern is not one-pass, or its matches do not all
    /// start with one of a few non-empty literals.
    fn new(pattern: &str) -> Option<OnePass> {
        // The same syntax options as `Regex::new`.
        let hir = syntax::parse(pattern).ok()?;
        let prefixes = Prefilter::from_hir_prefix(MatchKind::LeftmostFirst, &hir)?;
        let nfa = thompson::Compiler::new().build_from_hir(&hir).ok()?;
        let groups = onepass::DFA::new_from_nfa(nfa.clone()).ok()?;
        let ends = hybrid::dfa::DFA::builder()
            .configure(
                hybrid::dfa::DFA::config()
                    .match_kind(MatchKind::LeftmostFirst)
                    .unicode_word_boundary(true),
            )
            .build_from_nfa(nfa)
            .ok()?;
        let ends_cache = Mutex::new(ends.create_cache());
        Some(OnePass {
            prefixes,
            ends,
            ends_cache,
            groups,
            budget_per_byte: 4,
            budget_extra: 64 << 10,
        })
    }

    /// Every match's slots, `2 * groups` per match, appended to `found`, in
    /// the order of the general engine's `captures_iter`.
    ///
    /// A match starts with one of the prefix literals, so the leftmost match
    /// is the anchored match at the first occurrence of a literal where there
    /// is one; the lazy DFA gives its leftmost-first end, and the one-pass
    /// DFA run over exactly that span gives its groups. Matches cannot be
    /// empty (the literals are not), so the next search starts where the
    /// match ended.
    fn find_all(&self, text: &str, found: &mut Vec<Option<NonMaxUsize>>) -> Searched {
        let haystack = text.as_bytes();
        let slot_count = 2 * self
            .groups
            .get_nfa()
            .group_info()
            .group_len(PatternID::ZERO);
        let budget = self.budget_per_byte * haystack.len() + self.budget_extra;
        let mut ends_cache = self.ends_cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut groups_cache = self.groups.create_cache();
        let mut work = 0;
        let mut at = 0;
        while at < haystack.len() {
            let Some(candidate) = self.prefixes.find(haystack, Span::from(at..haystack.len()))
            else {
                break;
            };
            let start = candidate.start;
            let end = match self.run(&mut ends_cache, haystack, start, &mut work, budget) {
                Run::Match(end) => end,
                Run::NoMatch => {
                    at = start + 1;
                    continue;
                }
                Run::GaveUp => {
                    return Searched {
                        resume_at: Some(at),
                        work,
                    }
                }
            };
            let input = Input::new(haystack)
                .span(start..end)
                .anchored(Anchored::Yes);
            let base = found.len();
            found.resize(base + slot_count, None);
            let matched = self
                .groups
                .try_search_slots(&mut groups_cache, &input, &mut found[base..])
                .ok()
                .flatten()
                .is_some();
            if !matched || end <= start {
                // Cannot happen (both DFAs are built from one NFA); the
                // general engine decides.
                found.truncate(base);
                return Searched {
                    resume_at: Some(at),
                    work,
                };
            }
            at = end;
        }
        Searched {
            resume_at: None,
            work,
        }
    }

    /// Runs the lazy DFA anchored at `start` until it dies, and returns
    /// where the last match it passed ends (matches show one byte late).
    fn run(
        &self,
        cache: &mut hybrid::dfa::Cache,
        haystack: &[u8],
        start: usize,
        work: &mut usize,
        budget: usize,
    ) -> Run {
        let input = Input::new(haystack)
            .span(start..haystack.len())
            .anchored(Anchored::Yes);
        let Ok(mut state) = self.ends.start_state_forward(cache, &input) else {
            return Run::GaveUp;
        };
        let mut last = None;
        for (at, &byte) in haystack.iter().enumerate().skip(start) {
            *work += 1;
            if *work > budget {
                return Run::GaveUp;
            }
            state = match self.ends.next_state(cache, state, byte) {
                Ok(next) => next,
                Err(_) => return Run::GaveUp,
            };
            if state.is_tagged() {
                if state.is_match() {
                    last = Some(at);
                } else if state.is_dead() {
                    return last.map_or(Run::NoMatch, Run::Match);
                } else if state.is_quit() {
                    return Run::GaveUp;
                }
            }
        }
        match self.ends.next_eoi_state(cache, state) {
            Ok(state) if state.is_match() => Run::Match(haystack.len()),
            Ok(_) => last.map_or(Run::NoMatch, Run::Match),
            Err(_) => Run::GaveUp,
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
        let Some(one_pass) = &self.one_pass else {
            for captures in self.pattern.captures_iter(text) {
                self.visit_captures(&captures, &mut values, &mut visit);
            }
            return;
        };
        let mut found = Vec::new();
        let searched = one_pass.find_all(text, &mut found);
        let slot_count = 2 * self.pattern.captures_len();
        // Group bounds of a UTF-8 pattern on UTF-8 text are character
        // boundaries; should one not be, the general engine does the page.
        let mut resume_at = searched.resume_at;
        if found
            .iter()
            .flatten()
            .all(|at| text.is_char_boundary(at.get()))
        {
            for slots in found.chunks(slot_count) {
                values.clear();
                values.extend(self.groups.iter().map(|&index| {
                    match (slots[2 * index], slots[2 * index + 1]) {
                        (Some(start), Some(end)) => clean_borrowed(&text[start.get()..end.get()]),
                        _ => Cow::Borrowed(""),
                    }
                }));
                visit(&values);
            }
        } else {
            resume_at = Some(0);
        }
        // The rest of the page with the general engine. This pattern's
        // matches are never empty (they start with a literal), so each
        // search starts where the last match ended.
        let Some(mut at) = resume_at else {
            return;
        };
        while let Some(captures) = self.pattern.captures_at(text, at) {
            self.visit_captures(&captures, &mut values, &mut visit);
            let end = captures.get(0).map_or(text.len(), |m| m.end());
            at = if end > at {
                end
            } else {
                // Unreachable for these patterns; never loop in place.
                match text[at..].chars().next() {
                    Some(c) => at + c.len_utf8(),
                    None => break,
                }
            };
        }
    }

    fn visit_captures<'t>(
        &self,
        captures: &regex::Captures<'t>,
        values: &mut Vec<Cow<'t, str>>,
        visit: &mut impl FnMut(&[Cow<'t, str>]),
    ) {
        values.clear();
        values.extend(self.groups.iter().map(|&index| {
            captures
                .get(index)
                .map_or(Cow::Borrowed(""), |m| clean_borrowed(m.as_str()))
        }));
        visit(values);
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

    proptest::proptest! {
        /// Giving up anywhere (a tiny budget) and finishing with the general
        /// engine gives the same items.
        #[test]
        fn giving_up_anywhere_gives_the_same_items(
            which in 0..ONE_PASS.len(),
            pieces in proptest::collection::vec(0..PIECES.len(), 0..60),
            budget in 0usize..400,
        ) {
            let text: String = pieces.iter().map(|&i| PIECES[i]).collect();
            let pattern = Regex::new(ONE_PASS[which]).unwrap();
            let mut fast = Extractor::new(pattern.clone());
            let one_pass = fast.one_pass.as_mut().unwrap();
            one_pass.budget_per_byte = 0;
            one_pass.budget_extra = budget;
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
    fn hostile_text_cannot_make_the_fast_path_quadratic() {
        // Every `<li>` starts a run that only fails at the end of the line:
        // trying them all would be quadratic. The budget stops the fast path
        // and the general engine finishes, with the same items.
        let pattern = Regex::new(r"<li>(?P<x>[^\n]*)\n;").unwrap();
        let text = format!("<li>a\n;{}\n<li>c\n;", "<li>ab".repeat(30_000));
        let fast = Extractor::new(pattern.clone());
        let one_pass = fast.one_pass.as_ref().expect("one-pass");
        let searched = one_pass.find_all(&text, &mut Vec::new());
        let budget = 4 * text.len() + (64 << 10);
        assert!(
            matches!(searched.resume_at, Some(at) if (7..100).contains(&at)),
            "gave up a few runs after the first item: {searched:?}"
        );
        assert!(searched.work <= budget + 1, "{} > {budget}", searched.work);
        assert_eq!(fast.extract(&text), vec![vec!["a"], vec!["c"]]);
        assert_eq!(
            fast.extract(&text),
            Extractor::general(pattern).extract(&text)
        );

        let pattern = Regex::new(r"id=(?P<v>[^;]*);").unwrap();
        let text = "id=1&".repeat(100_000);
        let fast = Extractor::new(pattern.clone());
        assert!(fast.is_one_pass());
        assert!(fast.extract(&text).is_empty());

        // An ordinary page stays on the fast path, looking at each byte of
        // its items about once.
        let example = crate::config::Config::parse(
            include_str!("../data/wooyun.toml"),
            std::path::Path::new("wooyun.toml"),
        )
        .unwrap();
        let site = crate::fixture::Site::default();
        let page = String::from_utf8(crate::fixture::page_body(&site, 3)).unwrap();
        let fast = Extractor::new(example.pattern.clone());
        let searched = fast
            .one_pass
            .as_ref()
            .unwrap()
            .find_all(&page, &mut Vec::new());
        assert_eq!(searched.resume_at, None);
        assert!(
            searched.work < page.len(),
            "{} of {}",
            searched.work,
            page.len()
        );
        assert_eq!(fast.extract(&page).len(), 20);
        assert_eq!(
            fast.extract(&page),
            Extractor::general(example.pattern).extract(&page)
        );
    }

    #[test]
    fn no_match_is_an_empty_page() {
        let extractor = Extractor::new(Regex::new("(?P<x>zzz)").unwrap());
        assert!(extractor.extract("nothing here").is_empty());
    }
}
