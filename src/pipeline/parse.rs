//! The parse pool: decode each body to UTF-8, extract items, and render them
//! in the output format, so the commit stage only appends bytes.

use std::cell::Cell;

use crossbeam_channel::{Receiver, Sender};

use super::{Fetched, Parsed, Rendered, Shared};
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
}

impl Parser {
    pub(super) fn new(config: &Config) -> Parser {
        let key_index = config
            .key
            .as_ref()
            .and_then(|key| config.fields.iter().position(|f| f == key));
        Parser {
            config: config.clone(),
            extractor: Extractor::new(config.pattern.clone()),
            key_index,
            last_size: Cell::new((0, 0)),
        }
    }

    pub(super) fn parse(&self, message: Fetched) -> Parsed {
        let config = &self.config;
        match message {
            Fetched::Body {
                page,
                attempts,
                response,
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
                };
                self.extractor.for_each(&text, |values| {
                    output::render_into(
                        &mut rendered.bytes,
                        config.format,
                        page,
                        &config.fields,
                        values,
                    );
                    rendered.ends.push(rendered.bytes.len());
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
                page,
                attempts,
                error,
            } => Parsed::Failure {
                page,
                attempts,
                error,
            },
            Fetched::Abandoned => Parsed::Abandoned,
        }
    }
}

pub(super) fn run(
    config: &Config,
    fetched: Receiver<Fetched>,
    parsed: Sender<Parsed>,
    shared: &Shared,
) {
    let parser = Parser::new(config);
    for message in fetched {
        super::fault_panic("parse");
        let message = parser.parse(message);
        // Told now, not at the commit: the feeder paces an open range's
        // look-ahead by it, and a commit group can take a while to fill.
        if let Parsed::Done { page, items, .. } = &message {
            if !items.ends.is_empty() {
                shared.saw_items(*page);
            }
        }
        if parsed.send(message).is_err() {
            return;
        }
    }
}
