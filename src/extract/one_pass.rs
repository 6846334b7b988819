//! The one-pass path: for a pattern whose matches all start with one of a
//! few literals and which is one-pass (at each point of a match, the next
//! byte decides which way the pattern goes), a literal search, a lazy-DFA
//! run anchored at each occurrence to find where its match ends, and a
//! one-pass DFA over the match for the groups, instead of the general
//! engine's forward scan, backward scan and capture pass per match.

use std::sync::Mutex;

use regex_automata::dfa::onepass;
use regex_automata::hybrid;
use regex_automata::nfa::thompson;
use regex_automata::util::prefilter::Prefilter;
use regex_automata::util::primitives::NonMaxUsize;
use regex_automata::{Anchored, Input, MatchKind, PatternID, Span};
use regex_syntax::hir::Hir;

use super::Searched;

/// The literals every match starts with, a lazy DFA that finds where a match
/// from a given start ends, and a one-pass DFA for the groups.
#[derive(Debug)]
pub(super) struct OnePass {
    prefixes: Prefilter,
    ends: hybrid::dfa::DFA,
    /// The lazy DFA's states, built as pages need them and kept.
    ends_cache: Mutex<hybrid::dfa::Cache>,
    groups: onepass::DFA,
    /// The runs' budget: this many bytes per byte of the page, plus
    /// `budget_extra`.
    pub(super) budget_per_byte: usize,
    pub(super) budget_extra: usize,
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
    pub(super) fn new(hir: &Hir) -> Option<OnePass> {
        let prefixes = Prefilter::from_hir_prefix(MatchKind::LeftmostFirst, hir)?;
        let nfa = thompson::Compiler::new().build_from_hir(hir).ok()?;
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
    pub(super) fn find_all(&self, text: &str, found: &mut Vec<Option<NonMaxUsize>>) -> Searched {
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
