//! Page-range syntax: `7`, `1..10` (end excluded), `1..=295`, and `1..` (open,
//! only in a config's `pages`). Pure functions, unit-tested below.

use std::fmt;

/// A set of consecutive page numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRange {
    /// `start..=end`, both included; never empty.
    Closed { start: u64, end: u64 },
    /// `start..`: grows until a run of empty pages ends it.
    Open { start: u64 },
}

impl PageRange {
    /// The first page.
    pub fn start(&self) -> u64 {
        match *self {
            PageRange::Closed { start, .. } | PageRange::Open { start } => start,
        }
    }

    pub fn is_open(&self) -> bool {
        matches!(self, PageRange::Open { .. })
    }
}

impl fmt::Display for PageRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            PageRange::Closed { start, end } if start == end => write!(f, "{start}"),
            PageRange::Closed { start, end } => write!(f, "{start}..={end}"),
            PageRange::Open { start } => write!(f, "{start}.."),
        }
    }
}

/// The largest page number a range may hold: 10^15, far below where the
/// range arithmetic (`end + 1`, a look-ahead past the frontier) could
/// overflow a `u64`, and below 2^53, so every page number is exact in the
/// JSON output whatever reads it.
pub const MAX_PAGE: u64 = 1_000_000_000_000_000;

/// Where a range is written, which decides the forms it may take and how a
/// suggestion is spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeSyntax {
    /// A config's `pages`: open ranges allowed; suggestions are TOML
    /// strings (`"1..=5"`).
    Config,
    /// A command's argument (`enqueue`): closed ranges only; suggestions
    /// are written bare (`1..=5`).
    Command,
}

impl RangeSyntax {
    /// A range as the user should write it here.
    fn spell(self, range: &str) -> String {
        match self {
            RangeSyntax::Config => format!("\"{range}\""),
            RangeSyntax::Command => range.to_string(),
        }
    }

    /// The forms accepted here, for a message.
    fn forms(self) -> &'static str {
        match self {
            RangeSyntax::Config => {
                "\"1..=295\" (end included), \"1..296\" (end excluded), \"7\", or \"1..\" (open)"
            }
            RangeSyntax::Command => "1..=295 (end included), 1..296 (end excluded) or 7",
        }
    }
}

/// Parses one range as a config's `pages` takes it. The error is a
/// sentence for the user.
pub fn parse_range(text: &str) -> Result<PageRange, String> {
    parse_range_in(text, RangeSyntax::Config)
}

/// Parses one range written in `syntax`: pages from 1 to [`MAX_PAGE`], never
/// empty; an open range only in a config. The error is one sentence that
/// says what to write instead.
pub fn parse_range_in(text: &str, syntax: RangeSyntax) -> Result<PageRange, String> {
    let raw = text.trim();
    let text = &crate::util::shown(raw);
    let write = |range: &str| syntax.spell(range);
    let number = |part: &str| -> Result<u64, String> {
        let part = part.trim();
        let digits = !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit());
        match part.parse::<u64>() {
            Ok(page) if page <= MAX_PAGE => Ok(page),
            _ if digits => Err(format!(
                "'{text}': page {part} is past the largest page number, {MAX_PAGE}; \
                 write pages from 1 to {MAX_PAGE}"
            )),
            _ => Err(format!(
                "'{text}' is not a page range: '{}' is not a page number; write {}",
                crate::util::shown(part),
                syntax.forms()
            )),
        }
    };
    let (start, end, open) = match raw.split_once("..") {
        None => {
            let page = number(raw)?;
            (page, page, false)
        }
        Some((left, right)) => {
            let start = number(left)?;
            if let Some(end) = right.strip_prefix('=') {
                (start, number(end)?, false)
            } else if right.trim().is_empty() {
                (start, start, true)
            } else {
                let end = number(right)?;
                if end == start {
                    return Err(format!(
                        "'{text}' is an empty page range: '..' leaves out the end; write {} to include page {end}",
                        write(&format!("{start}..={end}"))
                    ));
                }
                // A reversed `5..1` is refused below, suggesting `1..=5`.
                (start, if end > start { end - 1 } else { end }, false)
            }
        }
    };
    if start == 0 || (end == 0 && !open) {
        let fixed = match start.max(end) {
            _ if open => "1..".to_string(),
            0 | 1 => "1".to_string(),
            last => format!("1..={last}"),
        };
        return Err(format!(
            "'{text}' holds page 0, and pages are numbered from 1; write {}",
            write(&fixed)
        ));
    }
    if end < start {
        return Err(format!(
            "'{text}' is an empty page range: the end is before the start; write {}",
            write(&format!("{end}..={start}"))
        ));
    }
    match (open, syntax) {
        (true, RangeSyntax::Config) => Ok(PageRange::Open { start }),
        (true, RangeSyntax::Command) => Err(format!(
            "'{text}' is an open range; this command takes closed ranges: write {} with the last page to queue",
            write(&format!("{start}..=N"))
        )),
        (false, _) => Ok(PageRange::Closed { start, end }),
    }
}

/// Parses a list of closed ranges (as `enqueue` takes them); open ranges are
/// refused because a command-line enqueue has no empty-page rule to end them.
pub fn parse_closed_ranges(texts: &[String]) -> Result<Vec<PageRange>, String> {
    texts
        .iter()
        .map(|text| parse_range_in(text, RangeSyntax::Command))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn command(text: &str) -> Result<PageRange, String> {
        parse_range_in(text, RangeSyntax::Command)
    }

    #[test]
    fn parses_every_form() {
        assert_eq!(parse_range("7"), Ok(PageRange::Closed { start: 7, end: 7 }));
        assert_eq!(
            parse_range("1..=295"),
            Ok(PageRange::Closed { start: 1, end: 295 })
        );
        assert_eq!(
            parse_range("400..410"),
            Ok(PageRange::Closed {
                start: 400,
                end: 409
            })
        );
        assert_eq!(parse_range(" 3.. "), Ok(PageRange::Open { start: 3 }));
        assert_eq!(
            parse_range("1000000000000000"),
            Ok(PageRange::Closed {
                start: MAX_PAGE,
                end: MAX_PAGE
            })
        );
        assert_eq!(command("2..=5"), Ok(PageRange::Closed { start: 2, end: 5 }));
    }

    #[test]
    fn refuses_garbage_and_empty_ranges() {
        for bad in [
            "",
            "a",
            "1..x",
            "..5",
            "5..=4",
            "5..5",
            "-1",
            "1...3",
            "1..=",
            "18446744073709551616",
        ] {
            assert!(parse_range(bad).is_err(), "{bad:?} should be refused");
        }
    }

    /// Each refusal says what to write, in the syntax of where it was
    /// written; the suggestion itself parses.
    #[test]
    fn each_refusal_suggests_a_range_that_parses() {
        let cases = [
            ("5..1", "the end is before the start; write \"1..=5\""),
            ("5..=1", "the end is before the start; write \"1..=5\""),
            ("5..5", "'..' leaves out the end; write \"5..=5\" to include page 5"),
            ("0", "holds page 0, and pages are numbered from 1; write \"1\""),
            ("0..=5", "numbered from 1; write \"1..=5\""),
            ("0..", "numbered from 1; write \"1..\""),
            ("5..0", "numbered from 1; write \"1..=5\""),
            (
                "18446744073709551614..",
                "page 18446744073709551614 is past the largest page number, 1000000000000000; write pages from 1 to 1000000000000000",
            ),
            ("1000000000000001", "past the largest page number"),
            (
                "abc",
                "'abc' is not a page range: 'abc' is not a page number; write \"1..=295\" (end included), \"1..296\" (end excluded), \"7\", or \"1..\" (open)",
            ),
        ];
        for (text, expected) in cases {
            let err = parse_range(text).unwrap_err();
            assert!(err.contains(expected), "{text}: {err}");
            assert!(!err.contains('\n'), "{err}");
            if let Some(suggested) = err.split("; write \"").nth(1) {
                let suggested = suggested.split('"').next().unwrap();
                assert!(parse_range(suggested).is_ok(), "{text}: {suggested}");
            }
        }
    }

    #[test]
    fn a_command_suggests_closed_ranges_written_bare() {
        let err = command("abc").unwrap_err();
        assert!(
            err.ends_with("write 1..=295 (end included), 1..296 (end excluded) or 7"),
            "{err}"
        );
        assert!(
            !err.split([' ', ',']).any(|word| word.ends_with("..")),
            "enqueue refuses open ranges, so none is suggested: {err}"
        );
        assert!(command("5..1").unwrap_err().ends_with("write 1..=5"));
        assert!(command("0..=3").unwrap_err().ends_with("write 1..=3"));
    }

    #[test]
    fn display_round_trips() {
        for text in ["7", "1..=295", "3.."] {
            assert_eq!(parse_range(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn enqueue_refuses_open_ranges() {
        let err = parse_closed_ranges(&["1..".to_string()]).unwrap_err();
        assert_eq!(
            err,
            "'1..' is an open range; this command takes closed ranges: write 1..=N with the last page to queue"
        );
    }
}
