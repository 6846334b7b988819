//! The fastest path: a pattern that is a plain sequence of literals and
//! repeated character classes, matched step by step without an automaton.
//!
//! Listing patterns are mostly this: `<td>`, a group of `[^<]*`, `</td>`,
//! `\s*`, another literal. When every variable repetition is followed by
//! something that cannot start with one of its own characters (`[^<]*`
//! then `<`), the greedy run is the only way the match can go, so the
//! backtracking semantics of the regex crate reduce to "take the longest
//! run, then go on": no choice is ever revisited. Literals are compared,
//! runs of a class ending at a few ASCII bytes are found with `memchr`, and
//! other classes are stepped a byte (or, past ASCII, a character) at a time.
//!
//! The checks that make this exact are made once, when the pattern is
//! compiled ([`Sequence::new`]); a pattern that fails any of them takes the
//! one-pass path or the general engine instead.

use memchr::memmem;
use regex_automata::util::primitives::NonMaxUsize;
use regex_syntax::hir::{self, Hir, HirKind};

use super::Searched;

/// A compiled sequence pattern: the literal every match starts with, and
/// the steps of a match.
#[derive(Debug, Clone)]
pub(super) struct Sequence {
    first: memmem::Finder<'static>,
    steps: Vec<Step>,
    /// `2 * groups`, group 0 (the whole match) included.
    slot_count: usize,
    /// The runs' budget: this many bytes per byte of the page, plus
    /// `budget_extra` (as the one-pass path's).
    pub(super) budget_per_byte: usize,
    pub(super) budget_extra: usize,
}

#[derive(Debug, Clone)]
enum Step {
    Literal(Box<[u8]>),
    /// `min..=max` characters of a class, greedily.
    Repeat {
        class: Box<Class>,
        min: usize,
        max: Option<usize>,
    },
    /// A group starts or ends here: the slot to set.
    Mark(usize),
}

/// A set of characters, for stepping through UTF-8 text.
#[derive(Debug, Clone)]
struct Class {
    /// Which ASCII bytes are in it.
    ascii: [bool; 128],
    /// The non-ASCII characters in it, as sorted, disjoint ranges.
    wide: Vec<(char, char)>,
    /// Every non-ASCII character is in it, and at most three ASCII bytes
    /// are not (`[^<]`, `[^"]`): a run ends at the first of those bytes.
    stops: Option<Vec<u8>>,
    /// The same set, for the compile-time checks.
    unicode: hir::ClassUnicode,
}

impl Class {
    fn new(unicode: hir::ClassUnicode) -> Class {
        let mut ascii = [false; 128];
        let mut wide = Vec::new();
        for range in unicode.iter() {
            let (start, end) = (range.start(), range.end());
            for byte in (start as u32)..=(end as u32).min(127) {
                ascii[byte as usize] = true;
            }
            if end as u32 >= 128 {
                wide.push((start.max('\u{80}'), end));
            }
        }
        let all_wide = wide.first() == Some(&('\u{80}', char::MAX));
        let outside: Vec<u8> = (0u8..128).filter(|&b| !ascii[b as usize]).collect();
        let stops = (all_wide && (1..=3).contains(&outside.len())).then_some(outside);
        Class {
            ascii,
            wide,
            stops,
            unicode,
        }
    }

    fn contains(&self, c: char) -> bool {
        if c.is_ascii() {
            return self.ascii[c as usize];
        }
        self.wide
            .binary_search_by(|&(start, end)| {
                if end < c {
                    std::cmp::Ordering::Less
                } else if start > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    /// The end of the longest run of at most `max` characters of this class
    /// from `at`, and how many characters it has when that is needed: at
    /// least `min` of them is all that is asked.
    fn run(&self, text: &str, at: usize, min: usize, max: Option<usize>) -> (usize, usize) {
        let bytes = text.as_bytes();
        if let (Some(stops), None) = (&self.stops, max) {
            let rest = &bytes[at..];
            let length = match stops[..] {
                [a] => memchr::memchr(a, rest),
                [a, b] => memchr::memchr2(a, b, rest),
                [a, b, c] => memchr::memchr3(a, b, c, rest),
                _ => unreachable!("one to three stop bytes"),
            }
            .unwrap_or(rest.len());
            let end = at + length;
            let count = if min <= 1 {
                usize::from(length > 0)
            } else {
                // Characters are the bytes that do not continue one.
                rest[..length].iter().filter(|&&b| b & 0xC0 != 0x80).count()
            };
            return (end, count);
        }
        let (mut end, mut count) = (at, 0);
        while max.is_none_or(|max| count < max) {
            let Some(&byte) = bytes.get(end) else { break };
            if byte < 0x80 {
                if !self.ascii[byte as usize] {
                    break;
                }
                end += 1;
            } else {
                // `end` is a character boundary: it only ever moves by
                // whole characters from one.
                let Some(c) = text.get(end..).and_then(|rest| rest.chars().next()) else {
                    break;
                };
                if !self.contains(c) {
                    break;
                }
                end += c.len_utf8();
            }
            count += 1;
        }
        (end, count)
    }
}

impl Sequence {
    /// `None` unless the pattern is a sequence of literals, classes, greedy
    /// repetitions of one class and groups, starts with a literal, and every
    /// variable repetition is followed by something none of its characters
    /// can start.
    pub(super) fn new(hir: &Hir) -> Option<Sequence> {
        let mut steps = vec![Step::Mark(0)];
        flatten(hir, &mut steps)?;
        steps.push(Step::Mark(1));
        let first = match steps.iter().find(|step| !matches!(step, Step::Mark(_)))? {
            Step::Literal(bytes) if !bytes.is_empty() => memmem::Finder::new(bytes).into_owned(),
            _ => return None,
        };
        for (index, step) in steps.iter().enumerate() {
            if let Step::Repeat { class, min, max } = step {
                if Some(*min) != *max && !follows_apart(&class.unicode, &steps[index + 1..])? {
                    return None;
                }
            }
        }
        let slot_count = steps
            .iter()
            .filter_map(|step| match step {
                Step::Mark(slot) => Some(slot + 1),
                _ => None,
            })
            .max()
            .unwrap_or(2);
        Some(Sequence {
            first,
            steps,
            slot_count,
            budget_per_byte: 4,
            budget_extra: 64 << 10,
        })
    }

    /// `2 * groups`, group 0 included: the slots each match fills.
    pub(super) fn slot_count(&self) -> usize {
        self.slot_count
    }

    /// Every match's slots, `slot_count` per match, appended to `found`, in
    /// the order of the general engine's `captures_iter` (see
    /// `OnePass::find_all`: the same contract).
    pub(super) fn find_all(&self, text: &str, found: &mut Vec<Option<NonMaxUsize>>) -> Searched {
        let haystack = text.as_bytes();
        let budget = self.budget_per_byte * haystack.len() + self.budget_extra;
        let mut work = 0;
        let mut at = 0;
        while at < haystack.len() {
            let Some(offset) = self.first.find(&haystack[at..]) else {
                break;
            };
            let start = at + offset;
            // Each candidate also costs its steps (group marks, slots), so
            // that a pattern of many groups cannot make a page slow without
            // reaching the budget.
            work += self.steps.len();
            let base = found.len();
            found.resize(base + self.slot_count, None);
            match self.match_at(text, start, &mut found[base..], &mut work) {
                Some(end) => at = end,
                None => {
                    found.truncate(base);
                    at = start + 1;
                }
            }
            if work > budget {
                // The match just found (if any) is complete and kept; the
                // general engine goes on from where the next search would.
                return Searched {
                    resume_at: Some(at),
                    work,
                };
            }
        }
        Searched {
            resume_at: None,
            work,
        }
    }

    /// The end of the match starting at `start`, with its slots set.
    fn match_at(
        &self,
        text: &str,
        start: usize,
        slots: &mut [Option<NonMaxUsize>],
        work: &mut usize,
    ) -> Option<usize> {
        let haystack = text.as_bytes();
        let mut at = start;
        for step in &self.steps {
            match step {
                Step::Literal(literal) => {
                    *work += literal.len();
                    if !haystack[at..].starts_with(literal) {
                        return None;
                    }
                    at += literal.len();
                }
                Step::Repeat { class, min, max } => {
                    let (end, count) = class.run(text, at, *min, *max);
                    *work += end - at + 1;
                    if count < *min {
                        return None;
                    }
                    at = end;
                }
                Step::Mark(slot) => slots[*slot] = NonMaxUsize::new(at),
            }
        }
        // A match is never empty: it starts with a non-empty literal.
        (at > start).then_some(at)
    }
}

/// Appends the steps of `hir`; `None` when it is not a plain sequence.
fn flatten(hir: &Hir, steps: &mut Vec<Step>) -> Option<()> {
    match hir.kind() {
        HirKind::Empty => {}
        HirKind::Literal(hir::Literal(bytes)) => {
            // Literals of a `&str` pattern are UTF-8; checked all the same,
            // since the checks below read their first character.
            std::str::from_utf8(bytes).ok()?;
            match steps.last_mut() {
                Some(Step::Literal(previous)) => {
                    *previous = [&previous[..], &bytes[..]].concat().into();
                }
                _ => steps.push(Step::Literal(bytes.clone())),
            }
        }
        HirKind::Class(class) => steps.push(Step::Repeat {
            class: Box::new(Class::new(unicode_class(class)?)),
            min: 1,
            max: Some(1),
        }),
        HirKind::Repetition(repetition) => {
            if !repetition.greedy {
                return None;
            }
            let class = match repetition.sub.kind() {
                HirKind::Class(class) => unicode_class(class)?,
                HirKind::Literal(hir::Literal(bytes)) => {
                    let text = std::str::from_utf8(bytes).ok()?;
                    let mut chars = text.chars();
                    let (Some(c), None) = (chars.next(), chars.next()) else {
                        return None;
                    };
                    hir::ClassUnicode::new([hir::ClassUnicodeRange::new(c, c)])
                }
                _ => return None,
            };
            steps.push(Step::Repeat {
                class: Box::new(Class::new(class)),
                min: usize::try_from(repetition.min).ok()?,
                max: match repetition.max {
                    Some(max) => Some(usize::try_from(max).ok()?),
                    None => None,
                },
            });
        }
        HirKind::Capture(capture) => {
            let group = usize::try_from(capture.index).ok()?;
            steps.push(Step::Mark(2 * group));
            flatten(&capture.sub, steps)?;
            steps.push(Step::Mark(2 * group + 1));
        }
        HirKind::Concat(subs) => {
            for sub in subs {
                flatten(sub, steps)?;
            }
        }
        // Look-around depends on what surrounds a match, alternatives on
        // choices: both are left to the automata.
        HirKind::Look(_) | HirKind::Alternation(_) => return None,
    }
    Some(())
}

/// A class as Unicode characters. A byte class in a pattern for `&str` text
/// only holds ASCII (the regex crate refuses others); `None` should one not.
fn unicode_class(class: &hir::Class) -> Option<hir::ClassUnicode> {
    match class {
        hir::Class::Unicode(class) => Some(class.clone()),
        hir::Class::Bytes(class) => {
            let ranges = class
                .iter()
                .map(|range| {
                    (range.end() < 0x80).then(|| {
                        hir::ClassUnicodeRange::new(
                            char::from(range.start()),
                            char::from(range.end()),
                        )
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(hir::ClassUnicode::new(ranges))
        }
    }
}

/// Whether no character of `class` can start what `rest` matches (`Some`),
/// so that a greedy run of `class` is the only way a match can go. `None`
/// when `rest` starts with something this module does not read.
fn follows_apart(class: &hir::ClassUnicode, rest: &[Step]) -> Option<bool> {
    let mut starts = hir::ClassUnicode::empty();
    for step in rest {
        match step {
            Step::Mark(_) => {}
            Step::Literal(bytes) => {
                let c = std::str::from_utf8(bytes).ok()?.chars().next()?;
                starts.union(&hir::ClassUnicode::new([hir::ClassUnicodeRange::new(c, c)]));
                break;
            }
            Step::Repeat { class, min, .. } => {
                starts.union(&class.unicode);
                if *min > 0 {
                    break;
                }
            }
        }
    }
    // With nothing after it that must match, the greedy run still decides:
    // the regex crate tries the longest run first, and the rest matches
    // there too.
    starts.intersect(class);
    Some(starts.ranges().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn class(pattern: &str) -> Class {
        let hir = regex_automata::util::syntax::parse(pattern).unwrap();
        match hir.kind() {
            HirKind::Class(class) => Class::new(unicode_class(class).unwrap()),
            other => panic!("{pattern} is not a class: {other:?}"),
        }
    }

    #[test]
    fn negated_ascii_classes_end_runs_with_memchr_and_others_step() {
        assert_eq!(class(r"[^<]").stops, Some(vec![b'<']));
        assert_eq!(class(r#"[^"<>]"#).stops, Some(vec![b'"', b'<', b'>']));
        // Unicode `\s` and `\d` hold some non-ASCII characters, not all.
        for stepped in [r"\s", r"\d", r"[^\d<]", r"[^<>&']", r"(?-u:[^<])"] {
            let Ok(hir) = regex_automata::util::syntax::parse(stepped) else {
                continue;
            };
            if let HirKind::Class(c) = hir.kind() {
                if let Some(unicode) = unicode_class(c) {
                    assert_eq!(Class::new(unicode).stops, None, "{stepped}");
                }
            }
        }
        let digits = class(r"\d");
        let text = "12٣4x";
        assert_eq!(digits.run(text, 0, 1, None), (5, 4));
        assert_eq!(digits.run(text, 0, 1, Some(2)), (2, 2));
        assert_eq!(digits.run(text, 5, 0, None), (5, 0));
        let not_lt = class(r"[^<]");
        assert_eq!(not_lt.run("二三<", 0, 2, None), (6, 2));
        assert_eq!(not_lt.run("二三<", 0, 1, None).0, 6);
        assert_eq!(not_lt.run("<", 0, 1, None), (0, 0));
    }
}
