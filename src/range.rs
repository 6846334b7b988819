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

/// Parses one range. The error is a sentence for the user.
pub fn parse_range(text: &str) -> Result<PageRange, String> {
    let text = text.trim();
    let number = |part: &str| -> Result<u64, String> {
        part.trim().parse::<u64>().map_err(|_| {
            format!("'{text}' is not a page range: '{part}' is not a page number (write 7, 1..=295, 1..10 or 1..)")
        })
    };
    let Some((left, right)) = text.split_once("..") else {
        let page = number(text)?;
        return Ok(PageRange::Closed {
            start: page,
            end: page,
        });
    };
    let start = number(left)?;
    if let Some(end) = right.strip_prefix('=') {
        let end = number(end)?;
        if end < start {
            return Err(format!(
                "'{text}' is an empty page range: the end is before the start"
            ));
        }
        Ok(PageRange::Closed { start, end })
    } else if right.trim().is_empty() {
        Ok(PageRange::Open { start })
    } else {
        let end = number(right)?;
        if end <= start {
            return Err(format!(
                "'{text}' is an empty page range: '..' excludes the end (write {start}..={end} to include it)"
            ));
        }
        Ok(PageRange::Closed {
            start,
            end: end - 1,
        })
    }
}

/// Parses a list of closed ranges (as `enqueue` takes them); open ranges are
/// refused because a command-line enqueue has no empty-page rule to end them.
pub fn parse_closed_ranges(texts: &[String]) -> Result<Vec<PageRange>, String> {
    texts
        .iter()
        .map(|text| match parse_range(text)? {
            PageRange::Open { .. } => Err(format!(
                "'{text}' is an open range; enqueue takes closed ranges such as 1..=295"
            )),
            range => Ok(range),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
            parse_range("0..=0"),
            Ok(PageRange::Closed { start: 0, end: 0 })
        );
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

    #[test]
    fn display_round_trips() {
        for text in ["7", "1..=295", "3.."] {
            assert_eq!(parse_range(text).unwrap().to_string(), text);
        }
    }

    #[test]
    fn enqueue_refuses_open_ranges() {
        let err = parse_closed_ranges(&["1..".to_string()]).unwrap_err();
        assert!(err.contains("open range"), "{err}");
    }
}
