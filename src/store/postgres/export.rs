//! A job's items out of `pagecrawl_items`, as JSON Lines or CSV, in page
//! order, with the rendering functions the sled backend's output is
//! written with, so the same items give the same bytes.
//!
//! An item's `jsonb` is the object its JSON line holds, less `"page"` (a
//! column of its own): each listing field's value as a string; with
//! `[detail]`, each detail field's value, each list as an array of strings,
//! or instead only `detail_error` with the reason the detail page failed
//! ([`item_json`] makes it). `jsonb` keeps no key order: the order of the
//! line or record is the config's, listing fields then detail columns.
//! Nor can `jsonb` hold NUL (`\u0000` is refused), which a page's text
//! may have: such an item cannot be committed as this schema stands.
//!
//! Within a page the items come in the order they were written, as the
//! sled export keeps a page's items in file order: for a listing page
//! alone, their order on the page; with `[detail]`, an item that waited
//! for its detail page after those written before it; a page written again
//! after its first writing. (Ordering by `index` instead would interleave
//! a page's two writings.) The row ids are that order: a commit inserts a
//! group's items in the order it is given them (`lease::commit_group`).
//!
//! Memory stays flat whatever the number of items: the rows come through a
//! portal in a read-only transaction, one batch of [`BATCH`] rows at a
//! time, each batch rendered and written before the next is asked for.
//! The portal reads one snapshot, so items committed during an export are
//! all in it or all out of it, group by group.

use std::io::Write;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use super::job::JobId;
use crate::config::detail::{Detail, ERROR_FIELD};
use crate::output::{csv_header, render_into, render_merged, Format, Merge};
use crate::store::DetailValues;

/// Rows fetched at a time: about 200 KB of items of a few fields, and a
/// round trip per thousand items.
pub const BATCH: usize = 1_000;

/// Items in page order, and in writing order within a page (see the
/// module's doc). `pagecrawl_items_order` holds this order, so the rows
/// stream from the index instead of waiting for a sort of the whole job.
const ITEMS: &str = "SELECT page, index, item FROM pagecrawl_items \
                     WHERE job_id = $1 ORDER BY page, id";

/// The `jsonb` of an item: the listing's `values` under `fields`, and with
/// `[detail]` what its detail page gave (see the module's doc).
pub fn item_json(
    fields: &[String],
    values: &[String],
    detail: Option<(&Detail, Merge<'_>)>,
) -> Value {
    let mut object = Map::new();
    for (name, value) in fields.iter().zip(values) {
        object.insert(name.clone(), Value::String(value.clone()));
    }
    match detail {
        None => {}
        Some((detail, Merge::Values(got))) => {
            for (name, value) in detail.fields.iter().zip(&got.fields) {
                object.insert(name.clone(), Value::String(value.clone()));
            }
            for (list, values) in detail.collect.iter().zip(&got.lists) {
                let values = values.iter().cloned().map(Value::String).collect();
                object.insert(list.name.clone(), Value::Array(values));
            }
        }
        Some((_, Merge::Failed(reason))) => {
            object.insert(ERROR_FIELD.to_string(), Value::String(reason.to_string()));
        }
    }
    Value::Object(object)
}

/// Writes every item of `job` to `out` in `format` (CSV with its header
/// first), as the config's `fields` and `detail` shape them; returns how
/// many items were written.
pub fn export(
    client: &mut ::postgres::Client,
    job: JobId,
    fields: &[String],
    detail: Option<&Detail>,
    format: Format,
    out: &mut impl Write,
) -> Result<u64> {
    export_in_batches(client, job, fields, detail, format, out, BATCH)
}

/// [`export`], `batch` rows at a time.
fn export_in_batches(
    client: &mut ::postgres::Client,
    job: JobId,
    fields: &[String],
    detail: Option<&Detail>,
    format: Format,
    out: &mut impl Write,
    batch: usize,
) -> Result<u64> {
    if format == Format::Csv {
        let mut columns = fields.to_vec();
        if let Some(detail) = detail {
            columns.extend(detail.extra_columns().map(str::to_string));
        }
        out.write_all(&csv_header(&columns))?;
    }
    let mut transaction = client
        .build_transaction()
        .read_only(true)
        .start()
        .context("reading the items")?;
    let portal = transaction.bind(ITEMS, &[&job.0])?;
    let mut line = Vec::new();
    let mut written = 0;
    loop {
        let rows = transaction
            .query_portal(&portal, batch as i32)
            .context("reading the items")?;
        for row in &rows {
            let (page, index): (i64, i32) = (row.get(0), row.get(1));
            let item: Value = row.get(2);
            line.clear();
            render(&mut line, format, fields, detail, page, &item)
                .with_context(|| format!("the item {index} of page {page}"))?;
            out.write_all(&line)?;
            written += 1;
        }
        if rows.len() < batch {
            break;
        }
    }
    transaction.commit()?;
    Ok(written)
}

/// Renders one item's row, as the crawl would have written it.
fn render(
    line: &mut Vec<u8>,
    format: Format,
    fields: &[String],
    detail: Option<&Detail>,
    page: i64,
    item: &Value,
) -> Result<()> {
    let page = u64::try_from(page).context("its page is negative")?;
    let values = fields
        .iter()
        .map(|name| text(item, name))
        .collect::<Result<Vec<_>>>()?;
    let Some(detail) = detail else {
        render_into(line, format, page, fields, &values);
        return Ok(());
    };
    let got;
    let merge = match item.get(ERROR_FIELD) {
        Some(Value::String(reason)) => Merge::Failed(reason),
        _ => {
            got = detail_values(item, detail)?;
            Merge::Values(&got)
        }
    };
    render_merged(line, format, page, fields, &values, detail, merge);
    Ok(())
}

/// The text field `name` of a stored item.
fn text(item: &Value, name: &str) -> Result<String> {
    match item.get(name) {
        Some(Value::String(value)) => Ok(value.clone()),
        _ => bail!("it has no text field '{name}': it was not written for this config"),
    }
}

/// The detail page's fields and lists of a stored item.
fn detail_values(item: &Value, detail: &Detail) -> Result<DetailValues> {
    let list = |name: &str| match item.get(name) {
        Some(Value::Array(values)) => values
            .iter()
            .map(|value| match value {
                Value::String(value) => Ok(value.clone()),
                _ => bail!("its list '{name}' holds a value that is not text"),
            })
            .collect(),
        _ => bail!("it has no list '{name}': it was not written for this config"),
    };
    Ok(DetailValues {
        fields: detail
            .fields
            .iter()
            .map(|name| text(item, name))
            .collect::<Result<_>>()?,
        lists: detail
            .collect
            .iter()
            .map(|entry| list(&entry.name))
            .collect::<Result<_>>()?,
    })
}

#[cfg(test)]
#[path = "export_tests.rs"]
mod tests;
