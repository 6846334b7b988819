//! The parse pool: decode each body to UTF-8, extract items, and render them
//! in the output format, so the commit stage only appends bytes.

use std::cell::Cell;

use crossbeam_channel::{Receiver, Sender};

use super::{Fetched, Parsed, Rendered, Shared, Task};
use crate::config::Config;
use crate::extract::Extractor;
use crate::{charset, output};

/// What one thread needs to turn fetched pages into rendered items.
pub(super) struct Parser {
    config: Config,
    extractor: Extractor,
    key_index: Option<usize>,
    /// The last page's rendered bytes and items: the next page's buffers
    /// start that large, instead of growing by doubling.
    last_size: Cell<(usize, usize)>,
    /// Items as values, not rendered (see [`Parser::keeping_values`]).
    values: bool,
}

impl Parser {
    /// A parser that keeps each item's values instead of rendering it when
    /// `values` (a `[detail]` job, whose items wait for their detail page,
    /// or a backend that stores items as values).
    pub(super) fn keeping_values(config: &Config, values: bool) -> Parser {
        let key_index = config
            .key
            .as_ref()
            .and_then(|key| config.fields.iter().position(|f| f == key));
        Parser {
            config: config.clone(),
            extractor: Extractor::new(config.pattern.clone()),
            key_index,
            last_size: Cell::new((0, 0)),
            values,
        }
    }

    pub(super) fn parse(&self, message: Fetched) -> Parsed {
        let config = &self.config;
        match message {
            Fetched::Body {
                task: Task::Detail(id),
                attempts,
                url,
                response,
            } => {
                let url = url.unwrap_or_else(|| "".into());
                let (text, _) = charset::decode(
                    response.content_type.as_deref(),
                    &response.body,
                    config.charset,
                );
                match config.detail.as_ref().and_then(|d| detail_values(d, &text)) {
                    Some(values) => Parsed::Detail {
                        id,
                        attempts,
                        bytes: response.body.len() as u64,
                        url,
                        values,
                    },
                    None => Parsed::Failure {
                        task: Task::Detail(id),
                        attempts,
                        url: Some(url),
                        error: crate::http::FetchError::NoMatch,
                    },
                }
            }
            Fetched::Body {
                task: Task::Page(page),
                attempts,
                response,
                ..
            } => {
                let (text, _) = charset::decode(
                    response.content_type.as_deref(),
                    &response.body,
                    config.charset,
                );
                let (bytes, items) = self.last_size.get();
                let mut rendered = Rendered {
                    bytes: Vec::with_capacity(bytes + bytes / 8),
                    ends: Vec::with_capacity(items),
                    keys: Vec::new(),
                    values: Vec::new(),
                };
                let base = (!config.absolute.is_empty())
                    .then(|| url::Url::parse(&config.page_url(page)).ok())
                    .flatten();
                let mut resolved: Vec<std::borrow::Cow<str>> = Vec::new();
                self.extractor.for_each(&text, |values| {
                    let values = match &base {
                        Some(base) => {
                            resolved.clear();
                            resolved.extend_from_slice(values);
                            for &index in &config.absolute {
                                if let Some(link) = absolute(base, &resolved[index]) {
                                    resolved[index] = link.into();
                                }
                            }
                            &resolved[..]
                        }
                        None => values,
                    };
                    if self.values {
                        rendered
                            .values
                            .push(values.iter().map(|v| v.to_string()).collect());
                    } else {
                        output::render_into(
                            &mut rendered.bytes,
                            config.format,
                            page,
                            &config.fields,
                            values,
                        );
                        rendered.ends.push(rendered.bytes.len());
                    }
                    if let Some(index) = self.key_index {
                        rendered.keys.push(values[index].to_string());
                    }
                });
                self.last_size
                    .set((rendered.bytes.len(), rendered.ends.len()));
                Parsed::Done {
                    page,
                    attempts,
                    bytes: response.body.len() as u64,
                    items: rendered,
                }
            }
            Fetched::Failure {
                task,
                attempts,
                url,
                error,
            } => Parsed::Failure {
                task,
                attempts,
                url,
                error,
            },
            Fetched::Abandoned => Parsed::Abandoned,
        }
    }
}

/// A detail page's values: each field of the pattern is the first
/// non-empty value its group takes over the pattern's matches (with one
/// match, that match's), and each list the non-empty values of its group over
/// every match of its pattern, HTML-unescaped and trimmed as listing fields are
/// (the same extraction engines); `None` when the pattern matches nothing
/// on the page.
pub(crate) fn detail_values(
    detail: &crate::config::detail::Detail,
    text: &str,
) -> Option<crate::store::DetailValues> {
    let mut fields: Vec<String> = vec![String::new(); detail.fields.len()];
    let mut matched = false;
    detail.extractor.for_each(text, |values| {
        matched = true;
        for (slot, value) in fields.iter_mut().zip(values) {
            if slot.is_empty() && !value.is_empty() {
                *slot = value.to_string();
            }
        }
    });
    if !matched {
        return None;
    }
    let lists = detail
        .collect
        .iter()
        .map(|field| {
            let mut list = Vec::new();
            field
                .extractor
                .for_each(text, |values| match values.get(field.group) {
                    Some(value) if !value.is_empty() => list.push(value.to_string()),
                    _ => {}
                });
            list
        })
        .collect();
    Some(crate::store::DetailValues { fields, lists })
}

/// A link as the page wrote it, resolved against the page's URL as a
/// browser does (`bug.php?id=1`, `/bugs/1`, `//host/x`, `../x`). An empty
/// value stays empty, and one `Url::join` refuses stays as written.
pub(crate) fn absolute(base: &url::Url, link: &str) -> Option<String> {
    if link.is_empty() {
        return None;
    }
    base.join(link).ok().map(String::from)
}

pub(super) fn run(
    config: &Config,
    fetched: Receiver<Fetched>,
    parsed: Sender<Parsed>,
    shared: &Shared,
) {
    let parser = Parser::keeping_values(config, config.detail.is_some() || shared.items_as_values);
    for message in fetched {
        super::fault_panic("parse");
        let message = parser.parse(message);
        // Told now, not at the commit: the feeder paces an open range's
        // look-ahead by it, and a commit group can take a while to fill.
        if let Parsed::Done { page, items, .. } = &message {
            if items.count() > 0 {
                shared.saw_items(*page);
            }
        }
        if parsed.send(message).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::absolute;

    #[test]
    fn links_are_resolved_against_the_page_as_browsers_do() {
        let base = url::Url::parse("http://h.example/list/page.php?p=3").unwrap();
        let cases = [
            (
                "bug_detail.php?wybug_id=7",
                "http://h.example/list/bug_detail.php?wybug_id=7",
            ),
            ("/bugs/wooyun-1", "http://h.example/bugs/wooyun-1"),
            ("../up", "http://h.example/up"),
            ("//cdn.example/a", "http://cdn.example/a"),
            ("https://o.example/x", "https://o.example/x"),
            ("?p=4", "http://h.example/list/page.php?p=4"),
        ];
        for (link, expected) in cases {
            assert_eq!(absolute(&base, link).as_deref(), Some(expected), "{link}");
        }
        assert_eq!(absolute(&base, ""), None, "an empty field stays empty");
        assert_eq!(absolute(&base, "http://[::1"), None, "kept as written");
    }
}
