//! Turning a decoded page into items: every match of the pattern is an item,
//! every named group a field, HTML entities unescaped and whitespace trimmed.
//!
//! Three engines find the matches, the first that takes the pattern:
//!
//! - [`Sequence`] (`sequence.rs`): a pattern that is a plain sequence of
//!   literals, classes and greedy class repetitions, each variable one
//!   followed by something it cannot match (`<td>(?P<x>[^<]*)</td>\s*<a`),
//!   is matched step by step with `memchr` and byte tables: no automaton.
//! - [`OnePass`] (`one_pass.rs`): a pattern that starts with a literal and
//!   is one-pass (`(?:<i>(?P<tag>\w+)</i>)?`, alternatives the next byte
//!   decides) is matched with a literal search, a lazy DFA for each match's
//!   end and a one-pass DFA for its groups.
//! - Otherwise the regex crate's general engine.
//!
//! The results are the same (the tests compare each path with the regex
//! crate). Trying each occurrence of the leading literal can cost more than
//! one pass over the page: on hostile text every run can go on to the end
//! (`<li>` ten thousand times and no newline, for `<li>(?P<x>[^\n]*)\n`).
//! So both fast paths have a budget of a few times the page's length; past
//! it, the general engine (linear in the page) finishes the page from where
//! the fast path stopped.

mod one_pass;
mod sequence;

use std::borrow::Cow;

use regex::Regex;
use regex_automata::util::primitives::NonMaxUsize;
// The same syntax options as `Regex::new`.
use regex_automata::util::syntax;
use regex_syntax::hir::Hir;

use one_pass::OnePass;
use sequence::Sequence;

/// A compiled pattern with its field names in group order.
#[derive(Debug, Clone)]
pub struct Extractor {
    pattern: Regex,
    /// The capture-group index of each named group.
    groups: Vec<usize>,
    /// The fast path, when the pattern allows one.
    fast: Option<Fast>,
}

#[derive(Debug, Clone)]
enum Fast {
    Sequence(Box<Sequence>),
    OnePass(Box<OnePass>),
}

/// Which engine finds an extractor's matches (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sequence,
    OnePass,
    General,
}

impl Engine {
    pub fn describe(self) -> &'static str {
        match self {
            Engine::Sequence => "sequence",
            Engine::OnePass => "one-pass",
            Engine::General => "general regex",
        }
    }
}

/// How a fast search ended.
#[derive(Debug, PartialEq, Eq)]
struct Searched {
    /// Where the general engine takes over, when the fast path gave up (the
    /// matches found end before it).
    resume_at: Option<usize>,
    /// Bytes the runs stepped through, all together.
    work: usize,
}

/// One extracted item: field values in the order of [`Extractor::fields`].
pub type Item = Vec<String>;

impl Extractor {
    /// The fastest engine that takes the pattern (see [`Extractor::with_engine`]
    /// on options).
    pub fn new(pattern: Regex) -> Extractor {
        let pattern = with_default_options(pattern);
        let hir = syntax::parse(pattern.as_str()).ok();
        [Engine::Sequence, Engine::OnePass, Engine::General]
            .into_iter()
            .find_map(|engine| Extractor::build(&pattern, hir.as_ref(), engine))
            .expect("the general engine takes every pattern")
    }

    /// An extractor on this engine, when it takes the pattern (the general
    /// engine takes all); for comparing the engines.
    ///
    /// What counts is the pattern's text, read with `Regex::new`'s default
    /// options (the fast paths parse it again): options set through
    /// `RegexBuilder` are not kept, by any engine. Write them as inline
    /// flags (`(?i)`), as a job's config does.
    pub fn with_engine(pattern: Regex, engine: Engine) -> Option<Extractor> {
        let pattern = with_default_options(pattern);
        let hir = match engine {
            Engine::General => None,
            _ => syntax::parse(pattern.as_str()).ok(),
        };
        Extractor::build(&pattern, hir.as_ref(), engine)
    }

    /// An extractor on `engine` for a pattern with default options and its
    /// syntax tree (parsed once for all the engines tried).
    fn build(pattern: &Regex, hir: Option<&Hir>, engine: Engine) -> Option<Extractor> {
        let groups = pattern
            .capture_names()
            .enumerate()
            .filter_map(|(index, name)| name.map(|_| index))
            .collect();
        let slot_count = 2 * pattern.captures_len();
        let fast = match engine {
            Engine::Sequence => Some(Fast::Sequence(Box::new(
                Sequence::new(hir?).filter(|s| s.slot_count() == slot_count)?,
            ))),
            Engine::OnePass => Some(Fast::OnePass(Box::new(OnePass::new(hir?)?))),
            Engine::General => None,
        };
        Some(Extractor {
            pattern: pattern.clone(),
            groups,
            fast,
        })
    }

    /// The same extractor without a fast path (for comparing).
    pub fn general(pattern: Regex) -> Extractor {
        Extractor::with_engine(pattern, Engine::General).expect("takes every pattern")
    }

    /// Which engine finds the matches.
    pub fn engine(&self) -> Engine {
        match self.fast {
            Some(Fast::Sequence(_)) => Engine::Sequence,
            Some(Fast::OnePass(_)) => Engine::OnePass,
            None => Engine::General,
        }
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
        // Room for 32 matches (a listing page's worth) from the start.
        let mut found: Vec<Option<NonMaxUsize>> = match self.fast {
            Some(_) => Vec::with_capacity(64 * self.pattern.captures_len()),
            None => Vec::new(),
        };
        let searched = match &self.fast {
            Some(Fast::Sequence(sequence)) => sequence.find_all(text, &mut found),
            Some(Fast::OnePass(one_pass)) => one_pass.find_all(text, &mut found),
            None => {
                for captures in self.pattern.captures_iter(text) {
                    self.visit_captures(&captures, &mut values, &mut visit);
                }
                return;
            }
        };
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
        // The rest of the page with the general engine. These patterns'
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

/// The same pattern text compiled with `Regex::new`'s default options (it
/// compiled once, so it does again), which is how the fast paths read it.
fn with_default_options(pattern: Regex) -> Regex {
    Regex::new(pattern.as_str()).unwrap_or(pattern)
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

    /// Patterns of the kind listing pages need, with the engine each takes:
    /// plain sequences (with bounded, unbounded, optional and exact runs,
    /// Unicode classes, case folding), then one-pass patterns that are not
    /// sequences (an optional group, alternatives, look-around).
    const PATTERNS: &[(&str, Engine)] = &[
        (
            r#"<td>(?P<date>\d{4}-\d{2}-\d{2})</td>\s*<td><a href="(?P<url>/b/\d+)"[^>]*>(?P<title>[^<]*)</a></td>"#,
            Engine::Sequence,
        ),
        (
            r#"<a href="(?P<url>[^"]*)">(?P<title>[^<]*)</a>"#,
            Engine::Sequence,
        ),
        (r#"<li>(?P<x>[^\n]*)\n;"#, Engine::Sequence),
        (r#"id=(?P<id>\d+)(?P<rest>[^\d<]{2,})<"#, Engine::Sequence),
        (
            r#"(?i)<TD>(?P<x>\w{1,3})\s*(?P<y>[^\s\w<]*)<"#,
            Engine::Sequence,
        ),
        (r#"x(?P<a>\d{0,2})(?P<b>[a-z]*)-"#, Engine::Sequence),
        (r#"二(?P<n>[^二]+)"#, Engine::Sequence),
        (r#"<b>(?P<x>[^<]{2,})<"#, Engine::Sequence),
        (
            r#"<a href="(?P<url>[^"]*)">(?P<title>[^<]*)</a>(?:<i>(?P<tag>\w+)</i>)?"#,
            Engine::OnePass,
        ),
        (r#"(?:li|td)>(?P<x>[^<]*)<"#, Engine::OnePass),
        (r#"\bid=(?P<id>\d+)\b"#, Engine::OnePass),
        (
            r#"td>(?P<a>[^<]*)</td>|li>(?P<b>[^<]*)</li>"#,
            Engine::OnePass,
        ),
    ];

    fn fast_engines(pattern: &Regex) -> Vec<Extractor> {
        [Engine::Sequence, Engine::OnePass]
            .into_iter()
            .filter_map(|engine| Extractor::with_engine(pattern.clone(), engine))
            .collect()
    }

    impl Extractor {
        fn set_budget(&mut self, per_byte: usize, extra: usize) {
            match self.fast.as_mut().expect("a fast engine") {
                Fast::Sequence(s) => (s.budget_per_byte, s.budget_extra) = (per_byte, extra),
                Fast::OnePass(o) => (o.budget_per_byte, o.budget_extra) = (per_byte, extra),
            }
        }

        fn search(&self, text: &str) -> Searched {
            match self.fast.as_ref().expect("a fast engine") {
                Fast::Sequence(s) => s.find_all(text, &mut Vec::new()),
                Fast::OnePass(o) => o.find_all(text, &mut Vec::new()),
            }
        }
    }

    #[test]
    fn each_pattern_takes_the_fastest_engine_that_can_match_it_exactly() {
        let example = crate::config::Config::parse(
            include_str!("../../data/wooyun.toml"),
            std::path::Path::new("wooyun.toml"),
        )
        .expect("the example job parses");
        assert_eq!(Extractor::new(example.pattern).engine(), Engine::Sequence);
        for &(pattern, engine) in PATTERNS {
            let regex = Regex::new(pattern).unwrap();
            assert_eq!(Extractor::new(regex).engine(), engine, "{pattern}");
        }
        // A run followed by what it can match itself (`\d{2,3}\d`, `[^<]*`
        // then `[a<]`) has choices: not a sequence. Nor are lazy runs, or
        // patterns with no leading literal.
        for pattern in [
            r"<b>(?P<x>\d{2,3})\d",
            r"<b>(?P<x>[^<]*)(?P<y>[a<])",
            r"<b>(?P<x>[^<]*?)<",
            r"<b>(?P<x>(?:ab)*)<",
            r"(?P<n>\d+)<",
        ] {
            let regex = Regex::new(pattern).unwrap();
            assert!(
                Extractor::with_engine(regex, Engine::Sequence).is_none(),
                "{pattern}"
            );
        }
        // Not one-pass (`.*?` and `<` overlap; both branches start with
        // `<`), and no literal to start from: the general engine.
        for pattern in [
            r"<b>(?P<x>.*?)</b>",
            r"<td>(?P<a>[^<]*)</td>|<li>(?P<b>[^<]*)</li>",
            r"(?P<n>\d+)",
            r"(?P<n>x*)",
        ] {
            let extractor = Extractor::new(Regex::new(pattern).unwrap());
            assert_eq!(extractor.engine(), Engine::General, "{pattern}");
        }
        let general = Extractor::new(Regex::new(r"<b>(?P<x>.*?)</b>").unwrap());
        assert_eq!(
            general.extract("<b> a </b><b>b</b>"),
            vec![vec!["a"], vec!["b"]]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]
        /// Both fast paths find exactly what `regex` finds, on text made of
        /// the pieces the patterns care about (so matches, near-misses and
        /// overlapping candidates are common).
        #[test]
        fn the_fast_paths_agree_with_regex(
            which in 0..PATTERNS.len(),
            pieces in proptest::collection::vec(0..PIECES.len(), 0..80),
        ) {
            let text: String = pieces.iter().map(|&i| PIECES[i]).collect();
            let pattern = Regex::new(PATTERNS[which].0).unwrap();
            let expected = Extractor::general(pattern.clone()).extract(&text);
            for fast in fast_engines(&pattern) {
                proptest::prop_assert_eq!(&fast.extract(&text), &expected, "{:?}", fast.engine());
            }
        }
    }

    proptest::proptest! {
        /// Giving up anywhere (a tiny budget) and finishing with the general
        /// engine gives the same items.
        #[test]
        fn giving_up_anywhere_gives_the_same_items(
            which in 0..PATTERNS.len(),
            pieces in proptest::collection::vec(0..PIECES.len(), 0..60),
            budget in 0usize..400,
        ) {
            let text: String = pieces.iter().map(|&i| PIECES[i]).collect();
            let pattern = Regex::new(PATTERNS[which].0).unwrap();
            let expected = Extractor::general(pattern.clone()).extract(&text);
            for mut fast in fast_engines(&pattern) {
                fast.set_budget(0, budget);
                proptest::prop_assert_eq!(&fast.extract(&text), &expected, "{:?}", fast.engine());
            }
        }
    }

    const PIECES: &[&str] = &[
        "<td>",
        "</td>",
        "<TD>",
        "<Td>",
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
        "ab",
        "id=",
        " ",
        "\n",
        ";",
        "é",
        "二",
        // Unicode whitespace, a Unicode digit and word character.
        "\u{3000}",
        "٣",
        "ǅ",
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
        "id=3٣ab<",
        "x12abc-",
        "<li>a\n;",
        "<b>",
        "<b>é<",
    ];

    #[test]
    fn hostile_text_cannot_make_the_fast_paths_quadratic() {
        // Every `<li>` starts a run that only fails at the end of the line:
        // trying them all would be quadratic. The budget stops the fast path
        // and the general engine finishes, with the same items.
        let pattern = Regex::new(r"<li>(?P<x>[^\n]*)\n;").unwrap();
        let text = format!("<li>a\n;{}\n<li>c\n;", "<li>ab".repeat(30_000));
        let budget = 4 * text.len() + (64 << 10);
        let expected = Extractor::general(pattern.clone()).extract(&text);
        assert_eq!(expected, vec![vec!["a"], vec!["c"]]);
        let engines = fast_engines(&pattern);
        assert_eq!(engines.len(), 2);
        for fast in engines {
            let searched = fast.search(&text);
            assert!(
                matches!(searched.resume_at, Some(at) if (7..100).contains(&at)),
                "{:?} gave up a few runs after the first item: {searched:?}",
                fast.engine()
            );
            // A run is not cut short: the last one may pass the budget by
            // at most the text's length.
            assert!(
                searched.work <= budget + text.len(),
                "{:?}: {} > {budget}",
                fast.engine(),
                searched.work
            );
            assert_eq!(fast.extract(&text), expected);
        }

        // Many groups make each candidate cost more than the bytes it looks
        // at; that counts too (found by review: 2 s for this page).
        let pattern = Regex::new(&format!("a{}b", "()".repeat(1000))).unwrap();
        let text = "a".repeat(200_000);
        let fast = Extractor::with_engine(pattern.clone(), Engine::Sequence).unwrap();
        let searched = fast.search(&text);
        assert!(
            matches!(searched.resume_at, Some(at) if at < 2_000),
            "{searched:?}"
        );
        assert!(fast.extract(&text).is_empty());

        let pattern = Regex::new(r"id=(?P<v>[^;]*);").unwrap();
        let text = "id=1&".repeat(100_000);
        for fast in fast_engines(&pattern) {
            assert!(fast.extract(&text).is_empty());
        }

        // An ordinary page stays on the fast paths, looking at each byte of
        // its items about once.
        let example = crate::config::Config::parse(
            include_str!("../../data/wooyun.toml"),
            std::path::Path::new("wooyun.toml"),
        )
        .unwrap();
        let site = crate::fixture::Site::default();
        let page = String::from_utf8(crate::fixture::page_body(&site, 3)).unwrap();
        let expected = Extractor::general(example.pattern.clone()).extract(&page);
        assert_eq!(expected.len(), 20);
        for fast in fast_engines(&example.pattern) {
            let searched = fast.search(&page);
            assert_eq!(searched.resume_at, None);
            assert!(
                searched.work < page.len(),
                "{:?}: {} of {}",
                fast.engine(),
                searched.work,
                page.len()
            );
            assert_eq!(fast.extract(&page), expected);
        }
    }

    #[test]
    fn every_engine_reads_the_pattern_text_alone() {
        // A RegexBuilder option is not in the text: no engine keeps it, so
        // the engines cannot disagree over it (the fast paths parse the
        // text again). Inline flags are in the text.
        let built = regex::RegexBuilder::new(r"<td>(?P<x>[^<]*)<")
            .case_insensitive(true)
            .build()
            .unwrap();
        let inline = Regex::new(r"(?i)<td>(?P<x>[^<]*)<").unwrap();
        for engine in [Engine::Sequence, Engine::OnePass, Engine::General] {
            let extractor = Extractor::with_engine(built.clone(), engine).unwrap();
            assert!(extractor.extract("<TD>hi</TD>").is_empty(), "{engine:?}");
            let extractor = Extractor::with_engine(inline.clone(), engine);
            if let Some(extractor) = extractor {
                assert_eq!(extractor.extract("<TD>hi</TD>"), vec![vec!["hi"]]);
            }
        }
    }

    #[test]
    fn no_match_is_an_empty_page() {
        let extractor = Extractor::new(Regex::new("(?P<x>zzz)").unwrap());
        assert!(extractor.extract("nothing here").is_empty());
    }
}
