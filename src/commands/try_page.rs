//! `pagecrawl try --config F --page N`: fetch one page, show what the
//! pattern extracts, touch no state. The way to debug a pattern.
//!
//! On a terminal (or with `--pretty`) each item is shown field by field,
//! then the first match with what each group captured highlighted; piped
//! (or with `--json`) the items are JSON Lines, as `export` writes them.
//! When the pattern matches nothing, it says where the page and the pattern
//! part ways: undecodable characters (a wrong charset), or whether the text
//! just before the first group occurs in the page at all, with a snippet.
//!
//! Text from the page never reaches a terminal raw: control characters
//! (an escape sequence, NUL, a C1 CSI) and the bidirectional overrides that
//! reorder a line are shown as Rust writes them in a string, `\u{1b}`,
//! `\0`, `\n`, `\u{202e}`. The JSON Lines view escapes as JSON does.

use std::borrow::Cow;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Instant;

use anyhow::{anyhow, Result};
use regex::Regex;

use crate::charset;
use crate::config::Config;
use crate::exit_code::Exit;
use crate::extract::{clean, Engine, Extractor};
use crate::http::{FetchError, Fetcher};
use crate::output::{render, Format};

/// How `try` shows the items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// Field by field, with the first match highlighted.
    Pretty { color: bool },
    /// JSON Lines, as in the output file.
    Jsonl,
}

impl View {
    /// `--json`, `--pretty`, or what suits stdout: the readable view on a
    /// terminal, JSON Lines in a pipe.
    pub fn choose(json: bool, pretty: bool) -> View {
        let terminal = std::io::stdout().is_terminal();
        let color = terminal && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
        match (json, pretty) {
            (true, _) => View::Jsonl,
            (false, true) => View::Pretty { color },
            (false, false) if terminal => View::Pretty { color },
            (false, false) => View::Jsonl,
        }
    }
}

pub fn command(config_path: &Path, page: u64, view: View) -> Result<Exit> {
    let config = Config::load(config_path)?;
    let url = config.page_url(page);
    let started = Instant::now();
    let response = Fetcher::new(&config)
        .fetch(&url)
        .map_err(|e| anyhow!("fetching page {page} ({url}): {e}{}", fetch_hint(&e)))?;
    let elapsed = started.elapsed();
    let (text, encoding) = charset::decode(
        response.content_type.as_deref(),
        &response.body,
        config.charset,
    );
    let source = CharsetSource::of(response.content_type.as_deref(), &response.body);
    let extractor = Extractor::new(config.pattern.clone());
    let mut items = extractor.extract(&text);
    // As the crawl writes them: `absolute` fields (and a detail link)
    // resolved against the page's URL.
    if let Ok(base) = url::Url::parse(&url) {
        for item in &mut items {
            for &index in &config.absolute {
                if let Some(link) = crate::pipeline::absolute(&base, &item[index]) {
                    item[index] = link;
                }
            }
        }
    }
    if let (Some(detail), false) = (&config.detail, items.is_empty()) {
        eprintln!(
            "pagecrawl: page {page}: {} items from {url}; following the first {} to their detail pages",
            items.len(),
            items.len().min(DETAIL_TRIES)
        );
        return try_details(&config, detail, page, &items, view);
    }
    match view {
        View::Jsonl => super::write_stdout(&render(Format::Jsonl, page, &config.fields, &items))?,
        View::Pretty { color } => {
            let paint = Paint { color };
            let mut shown = pretty_items(page, &config.fields, &items, paint);
            if let Some(first) = highlight_first_match(&config.pattern, &text, paint) {
                shown.push_str(&first);
            }
            super::write_stdout(shown.as_bytes())?;
        }
    }
    eprintln!(
        "pagecrawl: page {page}: {} items ({} bytes, {} from {}, {:.0?}) from {url}",
        items.len(),
        response.body.len(),
        encoding.name(),
        source.describe(),
        elapsed
    );
    if let Some(hint) = charset_hint(&text, encoding.name(), source) {
        eprint!("{hint}");
    }
    if items.is_empty() {
        if let Some(hint) = past_the_end_hint(&config, page, &extractor) {
            eprintln!("{hint}");
        } else {
            eprint!("{}", no_match_hints(&config.pattern_text, &text, &url));
        }
        // As grep: a pattern that matched nothing is not a success.
        return Ok(Exit::Failure);
    } else if extractor.engine() == Engine::General {
        eprintln!(
            "hint: this pattern runs on the general regex engine; one that starts with literal text \
             and uses negated classes like `[^<]*` instead of `.*?` is extracted several times as \
             fast (README: How it works, Parse pool)"
        );
    }
    Ok(Exit::Success)
}

/// How many items `try` follows to their detail pages.
const DETAIL_TRIES: usize = 3;

/// `try` with `[detail]`: the first items merged with their detail
/// pages, and where the detail pattern fails on one. Exit 1 when any
/// shown item's detail page failed or matched nothing.
fn try_details(
    config: &Config,
    detail: &crate::config::detail::Detail,
    page: u64,
    items: &[Vec<String>],
    view: View,
) -> Result<Exit> {
    use crate::output::{render_merged, Merge};
    let fetcher = Fetcher::new(config);
    let mut failed = false;
    let mut out = Vec::new();
    for (index, item) in items.iter().take(DETAIL_TRIES).enumerate() {
        let link = &item[detail.link];
        let fetched = fetcher.fetch(link);
        let response = match fetched {
            Ok(response) => response,
            Err(e) => {
                failed = true;
                eprintln!(
                    "pagecrawl: item {index}: detail page {link}: {e}{}",
                    fetch_hint(&e)
                );
                continue;
            }
        };
        let (text, _) = charset::decode(
            response.content_type.as_deref(),
            &response.body,
            config.charset,
        );
        match crate::pipeline::detail_values(detail, &text) {
            Some(values) => {
                let empty: Vec<&str> = detail
                    .fields
                    .iter()
                    .zip(&values.fields)
                    .filter(|(_, v)| v.is_empty())
                    .map(|(name, _)| name.as_str())
                    .collect();
                if !empty.is_empty() {
                    eprintln!(
                        "pagecrawl: item {index}: on {link} the detail pattern left {} empty",
                        empty.join(", ")
                    );
                }
                match view {
                    View::Jsonl => render_merged(
                        &mut out,
                        Format::Jsonl,
                        page,
                        &config.fields,
                        item,
                        detail,
                        Merge::Values(&values),
                    ),
                    View::Pretty { .. } => {
                        out.extend_from_slice(format!("item {index} (page {page})\n").as_bytes());
                        let names = config.fields.iter().chain(&detail.fields);
                        for (name, value) in names.zip(item.iter().chain(&values.fields)) {
                            out.extend_from_slice(
                                format!("  {name:<12} {}\n", printable(value)).as_bytes(),
                            );
                        }
                        for (field, list) in detail.collect.iter().zip(&values.lists) {
                            let name = &field.name;
                            let list: Vec<String> =
                                list.iter().map(|v| printable(v).into_owned()).collect();
                            out.extend_from_slice(
                                format!("  {name:<12} [{}]\n", list.join(", ")).as_bytes(),
                            );
                        }
                    }
                }
            }
            None => {
                failed = true;
                let hints = no_match_hints(detail.pattern.as_str(), &text, link).replacen(
                    "the pattern matched",
                    "the detail pattern matched",
                    1,
                );
                eprintln!("pagecrawl: item {index}: detail page {link}:");
                eprint!("{hints}");
            }
        }
    }
    super::write_stdout(&out)?;
    Ok(if failed { Exit::Failure } else { Exit::Success })
}

/// When page `page` (past the first) matched nothing but page 1 has
/// items, the page is probably past the end of the listing, not a pattern
/// that fails: says so (one more request, to page 1).
fn past_the_end_hint(config: &Config, page: u64, extractor: &Extractor) -> Option<String> {
    if page <= 1 {
        return None;
    }
    let first = config.page_url(1);
    let response = Fetcher::new(config).fetch(&first).ok()?;
    let (text, _) = charset::decode(
        response.content_type.as_deref(),
        &response.body,
        config.charset,
    );
    let items = extractor.extract(&text).len();
    (items > 0).then(|| {
        format!(
            "pagecrawl: page 1 has {items} items with this pattern: page {page} is probably past the end of the listing"
        )
    })
}

/// Where the charset a page was decoded with came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CharsetSource {
    Header,
    ByteOrderMark,
    Meta,
    /// Nothing declared one: the config's `charset`.
    Fallback,
}

impl CharsetSource {
    /// The same order as `charset::detect`.
    fn of(content_type: Option<&str>, body: &[u8]) -> CharsetSource {
        if content_type.and_then(charset::from_content_type).is_some() {
            CharsetSource::Header
        } else if encoding_rs::Encoding::for_bom(body).is_some() {
            CharsetSource::ByteOrderMark
        } else if charset::from_meta(body).is_some() {
            CharsetSource::Meta
        } else {
            CharsetSource::Fallback
        }
    }

    fn describe(self) -> &'static str {
        match self {
            CharsetSource::Header => "the Content-Type header",
            CharsetSource::ByteOrderMark => "a byte-order mark",
            CharsetSource::Meta => "the page's <meta> tag",
            CharsetSource::Fallback => "the `charset` key",
        }
    }
}

/// A hint after a fetch error that usually means the server refuses
/// crawlers.
fn fetch_hint(error: &FetchError) -> &'static str {
    match error {
        FetchError::Status {
            status: 401 | 403 | 429 | 503,
            ..
        } => {
            "; the server may be refusing crawlers: try a browser-like `user_agent`, the `headers` \
             a browser sends (a Cookie), a lower `concurrency` and a `rate_limit` (README: Troubleshooting)"
        }
        FetchError::Status { status: 404, .. } => {
            "; check `url` and that the page number exists on the site"
        }
        _ => "",
    }
}

/// ANSI colors, or none.
#[derive(Debug, Clone, Copy)]
struct Paint {
    color: bool,
}

/// Colors for the groups, in order (then again from the start).
const GROUP_COLORS: [&str; 6] = ["32", "33", "36", "35", "34", "31"];

impl Paint {
    fn wrap(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    fn dim(&self, text: &str) -> String {
        self.wrap("2", text)
    }

    fn bold(&self, text: &str) -> String {
        self.wrap("1", text)
    }

    /// A captured value in its group's color; without colors, in
    /// brackets with the group's name so it still stands out.
    fn group(&self, index: usize, name: &str, text: &str) -> String {
        if self.color {
            self.wrap(
                &format!("1;{}", GROUP_COLORS[index % GROUP_COLORS.len()]),
                text,
            )
        } else {
            format!("[{name}: {text}]")
        }
    }
}

/// Each item, field by field.
fn pretty_items(page: u64, fields: &[String], items: &[Vec<String>], paint: Paint) -> String {
    let width = fields.iter().map(|f| f.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for (number, item) in items.iter().enumerate() {
        out.push_str(&paint.bold(&format!("page {page}, item {}", number + 1)));
        out.push('\n');
        for (index, (field, value)) in fields.iter().zip(item).enumerate() {
            let value = if value.is_empty() {
                paint.dim("(empty)")
            } else {
                paint.wrap(GROUP_COLORS[index % GROUP_COLORS.len()], &printable(value))
            };
            let field = paint.dim(&format!("{field:<width$}"));
            out.push_str(&format!("  {field}  {value}\n"));
        }
    }
    out
}

/// The first match as it stands in the page (whitespace collapsed, long
/// stretches between groups shortened), each group's capture highlighted.
fn highlight_first_match(pattern: &Regex, text: &str, paint: Paint) -> Option<String> {
    let captures = pattern.captures(text)?;
    let whole = captures.get(0)?;
    let mut groups: Vec<(usize, &str, usize, usize)> = pattern
        .capture_names()
        .enumerate()
        .filter_map(|(index, name)| {
            let found = captures.get(index)?;
            Some((index, name?, found.start(), found.end()))
        })
        .collect();
    groups.sort_by_key(|&(_, _, start, _)| start);
    let mut shown = String::new();
    let mut at = whole.start();
    for (order, &(_, name, start, end)) in groups.iter().enumerate() {
        if start < at {
            continue; // nested in a group already shown
        }
        shown.push_str(&paint.dim(&printable(&shorten(&collapse(&text[at..start]), 60))));
        shown.push_str(&paint.group(
            order,
            name,
            &printable(&clean(&collapse(&text[start..end]))),
        ));
        at = end;
    }
    shown.push_str(&paint.dim(&printable(&shorten(&collapse(&text[at..whole.end()]), 60))));
    let legend: Vec<String> = groups
        .iter()
        .enumerate()
        .map(|(order, &(_, name, _, _))| {
            if paint.color {
                paint.group(order, name, name)
            } else {
                name.to_string()
            }
        })
        .collect();
    Some(format!(
        "\nthe first match (at byte {}), with what each group captured ({}):\n  {shown}\n",
        whole.start(),
        legend.join(", ")
    ))
}

/// Garbled text, matched or not: bytes the charset could not decode.
fn charset_hint(text: &str, encoding: &str, source: CharsetSource) -> Option<String> {
    let undecodable = text.chars().filter(|&c| c == '\u{FFFD}').count();
    if undecodable == 0 {
        return None;
    }
    Some(if source == CharsetSource::Fallback {
        format!(
            "pagecrawl: hint: {undecodable} characters could not be decoded as {encoding}, and the page does not \
             say which charset it is in: set `charset` in the config (e.g. \"gbk\", \"shift_jis\", \"windows-1252\")\n"
        )
    } else {
        format!(
            "pagecrawl: hint: {undecodable} characters could not be decoded as {encoding}, which {} declares: \
             the site declares the wrong charset (the `charset` key applies only when nothing is declared)\n",
            source.describe()
        )
    })
}

/// Why a pattern may have matched nothing, as lines for stderr.
fn no_match_hints(pattern: &str, text: &str, url: &str) -> String {
    let mut out = String::from("pagecrawl: the pattern matched nothing on this page.\n");
    match literal_before_first_group(pattern) {
        Some(literal) => match text.find(&literal) {
            Some(at) => {
                let count = text.matches(&literal).count();
                out.push_str(&format!(
                    "  hint: the text before the first group, {literal:?}, occurs {count} time{} in the page; \
                     the pattern fails after it. The first, at byte {at}:\n    {}\n",
                    if count == 1 { "" } else { "s" },
                    printable(&shorten(&collapse(&text[at..]), 240))
                ));
            }
            None => out.push_str(&format!(
                "  hint: the text before the first group, {literal:?}, is not in the page at all. \
                 The page starts with:\n    {}\n",
                printable(&shorten(&collapse(text), 240))
            )),
        },
        None => out.push_str(&format!(
            "  hint: the page starts with:\n    {}\n",
            printable(&shorten(&collapse(text), 240))
        )),
    }
    out.push_str(&format!(
        "  hint: compare the pattern with the page source as the server sends it (curl '{url}'), not with \
         the browser's inspector: a page built by JavaScript has no items in its HTML\n"
    ));
    out
}

/// The literal text the pattern requires just before its first named group
/// (`<td>` in `<td>(?P<date>...)`), if any: what to look for in a page the
/// pattern does not match.
fn literal_before_first_group(pattern: &str) -> Option<String> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut run = String::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        match c {
            '\\' => {
                let next = *chars.get(index + 1)?;
                if next.is_ascii_alphanumeric() {
                    run.clear(); // \d, \s, \b, \x..: not literal text
                } else {
                    run.push(next);
                }
                index += 2;
                continue;
            }
            '(' => {
                let rest: String = chars[index..].iter().take(4).collect();
                let named = rest.starts_with("(?P<")
                    || (rest.starts_with("(?<")
                        && !rest.starts_with("(?<=")
                        && !rest.starts_with("(?<!"));
                if named {
                    break;
                }
                // Another group: what it holds may vary. Skip its opening
                // syntax (`(?:`, `(?i)`) up to ':' or ')'.
                run.clear();
                if rest.starts_with("(?") {
                    while index < chars.len() && chars[index] != ':' && chars[index] != ')' {
                        index += 1;
                    }
                }
            }
            '[' => {
                run.clear();
                index += 1;
                if chars.get(index) == Some(&'^') {
                    index += 1;
                }
                if chars.get(index) == Some(&']') {
                    index += 1;
                }
                while index < chars.len() && chars[index] != ']' {
                    if chars[index] == '\\' {
                        index += 1;
                    }
                    index += 1;
                }
            }
            '*' | '+' | '?' | '{' => {
                // A quantifier makes the atom before it optional or
                // repeated: the run so far is not reliably literal.
                run.clear();
                if c == '{' {
                    while index < chars.len() && chars[index] != '}' {
                        index += 1;
                    }
                }
            }
            '.' | '^' | '$' | '|' | ')' => run.clear(),
            _ => run.push(c),
        }
        index += 1;
    }
    if index >= chars.len() {
        return None; // no named group found
    }
    let run: String = run
        .chars()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    (!run.trim().is_empty()).then_some(run)
}

/// Runs of whitespace (newlines included) as one space.
fn collapse(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            space = true;
            continue;
        }
        if std::mem::take(&mut space) {
            out.push(' ');
        }
        out.push(c);
    }
    if space {
        out.push(' ');
    }
    out
}

/// Whether a character from the page must not reach a terminal as it is:
/// a control character (C0, DEL, C1), or one that reorders the line
/// (bidirectional embeddings, overrides and isolates).
fn unprintable(c: char) -> bool {
    c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Page text as it can be shown on a terminal: each [`unprintable`]
/// character as Rust escapes it (`\u{1b}`, `\0`, `\t`); the rest as it is.
fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(unprintable) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unprintable(c) {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// At most `limit` characters, marking what was cut.
fn shorten(text: &str, limit: usize) -> String {
    if text.chars().count() <= limit {
        return text.to_string();
    }
    let head: String = text.chars().take(limit).collect();
    format!("{head}…")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_literal_before_the_first_group_is_found() {
        let cases = [
            (r#"<td>(?P<date>\d{4})</td>"#, Some("<td>")),
            (r#"<a href="(?P<url>[^"]+)">"#, Some("<a href=\"")),
            (r#"\s*<td><a href="(?<url>/bugs)"#, Some("<td><a href=\"")),
            (r#"id=\d+&amp;(?P<x>\w+)"#, Some("&amp;")),
            (r#"a\.b\?(?P<x>y)"#, Some("a.b?")),
            (r#"(?i)<li>(?P<x>.*)"#, Some("<li>")),
            (r#"<li>\s*(?P<x>.*)"#, None),
            (r#"<td>x?(?P<x>y)"#, None),
            (r#"[<>](?P<x>y)"#, None),
            (r#"(?P<x>y)"#, None),
            (r#"no group here"#, None),
            (r#"(?:<b>|<i>)(?P<x>y)"#, None),
        ];
        for (pattern, expected) in cases {
            assert_eq!(
                literal_before_first_group(pattern).as_deref(),
                expected,
                "{pattern}"
            );
        }
    }

    #[test]
    fn hints_point_at_the_charset_and_where_the_pattern_fails() {
        let page = "<html><body><table>\n  <tr><td>2016-12-11</td><td>no link</td></tr></table>";
        let hints = no_match_hints(
            r#"<td>(?P<date>[^<]+)</td><td><a href="(?P<url>[^"]+)">"#,
            page,
            "http://127.0.0.1/p?page=1",
        );
        assert!(hints.contains("matched nothing"), "{hints}");
        assert!(
            hints.contains("\"<td>\", occurs 2 times in the page; the pattern fails after it. The first, at byte 26:\n    <td>2016-12-11</td><td>no link</td></tr></table>\n"),
            "{hints}"
        );
        let garbled = no_match_hints(r#"<h1>(?P<t>.+)</h1>"#, "\u{FFFD}\u{FFFD}abc", "u");
        assert!(
            garbled.contains("\"<h1>\", is not in the page at all. The page starts with:\n    \u{FFFD}\u{FFFD}abc\n"),
            "{garbled}"
        );
    }

    #[test]
    fn garbled_text_gets_a_charset_hint_that_names_who_declared_it() {
        assert_eq!(
            charset_hint("plain text", "UTF-8", CharsetSource::Fallback),
            None
        );
        let fallback =
            charset_hint("\u{FFFD}\u{FFFD}abc", "UTF-8", CharsetSource::Fallback).unwrap();
        assert!(
            fallback
                .contains("2 characters could not be decoded as UTF-8, and the page does not say")
                && fallback.contains("set `charset`"),
            "{fallback}"
        );
        let declared = charset_hint("\u{FFFD}", "UTF-8", CharsetSource::Meta).unwrap();
        assert!(
            declared.contains(
                "which the page's <meta> tag declares: the site declares the wrong charset"
            ),
            "{declared}"
        );
    }

    #[test]
    fn the_first_match_shows_each_capture_in_place() {
        let pattern = Regex::new(r#"<a href="(?P<url>[^"]+)">\s*(?P<title>[^<]*)</a>"#).unwrap();
        let text = "junk <a href=\"/b/1\">\n   AT&amp;T  </a> <a href=\"/b/2\">two</a>";
        let plain = highlight_first_match(&pattern, text, Paint { color: false }).unwrap();
        assert_eq!(
            plain,
            "\nthe first match (at byte 5), with what each group captured (url, title):\n  \
             <a href=\"[url: /b/1]\"> [title: AT&T]</a>\n"
        );
        let colored = highlight_first_match(&pattern, text, Paint { color: true }).unwrap();
        assert!(colored.contains("\x1b[1;32m/b/1\x1b[0m"), "{colored:?}");
        assert!(colored.contains("\x1b[1;33mAT&T\x1b[0m"), "{colored:?}");
        assert_eq!(
            highlight_first_match(&pattern, "nothing", Paint { color: false }),
            None
        );
    }

    #[test]
    fn control_characters_from_the_page_are_shown_escaped() {
        assert_eq!(printable("plain 二 é"), "plain 二 é");
        assert!(matches!(printable("plain"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}[2Jb\0c\u{7f}d\u{9b}e\tf\u{202e}g"),
            r"a\u{1b}[2Jb\0c\u{7f}d\u{9b}e\tf\u{202e}g"
        );
        // Combining marks and quotes stay as they are.
        assert_eq!(printable("e\u{301} \"q\" \\"), "e\u{301} \"q\" \\");
    }

    #[test]
    fn items_are_listed_field_by_field() {
        let fields = vec!["url".to_string(), "title".to_string()];
        let items = vec![vec!["/b/1".to_string(), String::new()]];
        assert_eq!(
            pretty_items(3, &fields, &items, Paint { color: false }),
            "page 3, item 1\n  url    /b/1\n  title  (empty)\n"
        );
    }
}
