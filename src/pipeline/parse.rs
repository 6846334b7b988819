//! The parse pool: decode each body to UTF-8, extract items, and render them
//! in the output format, so the commit stage only appends bytes.

use crossbeam_channel::{Receiver, Sender};

use super::{Fetched, Parsed};
use crate::config::Config;
use crate::extract::Extractor;
use crate::{charset, output};

pub(super) fn run(config: &Config, fetched: Receiver<Fetched>, parsed: Sender<Parsed>) {
    let extractor = Extractor::new(config.pattern.clone());
    for message in fetched {
        let next = match message {
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
                let items = extractor.extract(&text);
                let rendered = output::render(config.format, page, &config.fields, &items);
                Parsed::Done {
                    page,
                    attempts,
                    items: items.len() as u32,
                    bytes: response.body.len() as u64,
                    rendered,
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
        };
        if parsed.send(next).is_err() {
            return;
        }
    }
}
