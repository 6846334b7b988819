//! Turns the TOML parser's error on a config into one line that says what to
//! write: a misspelt key gets the key it resembles, a value of the wrong type
//! the form it should take (`request_timeout = 30` → `"30s"`), a backslash in
//! a double-quoted pattern the advice to use single quotes, and a missing key
//! is named without a line number (it is on no line).
//!
//! The parser (`RawConfig`) decides what is wrong; this module only reads the
//! text again, with positions, to phrase the fix.

use std::collections::BTreeMap;

use toml::{Spanned, Value};

use crate::config_reference::KEYS;

/// The config's top-level keys and values, with where each stands.
type SpannedTable = BTreeMap<Spanned<String>, Spanned<Value>>;

/// The one-line explanation of `error` on `text`, without the file's name:
/// `line 3: unknown key ...` or `key 'url' is missing ...`. `accepted` is
/// the list of keys the parser takes.
pub(super) fn explain(text: &str, error: &toml::de::Error, accepted: &[String]) -> String {
    let message = one_line(error.message());
    let line_of = |offset: usize| 1 + text[..offset.min(text.len())].matches('\n').count();
    let table: SpannedTable = match toml::from_str(text) {
        Ok(table) => table,
        // Not TOML at all: the parser's message, at its line.
        Err(_) => {
            let Some(span) = error.span() else {
                return message;
            };
            let line = line_of(span.start);
            if message.contains("escape") {
                if let Some(advice) = backslash_advice(text, line) {
                    return format!("line {line}: {advice}");
                }
            }
            return format!("line {line}: {message}");
        }
    };
    let mut keys: Vec<_> = table.iter().collect();
    keys.sort_by_key(|(key, _)| key.span().start);
    for (key, _) in &keys {
        let name = key.get_ref();
        if !accepted.iter().any(|known| known == name) {
            let line = line_of(key.span().start);
            return format!(
                "line {line}: unknown key '{}'{}",
                super::shown(name),
                suggestion(name, accepted)
            );
        }
    }
    if let Some(missing) = message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let example = KEYS
            .iter()
            .find(|doc| doc.name == missing)
            .map(|doc| format!("; add a line such as {missing} = {}", doc.value))
            .unwrap_or_default();
        return format!("key '{missing}' is missing{example}");
    }
    if let Some(span) = error.span() {
        let holder = keys.iter().find(|(_, value)| {
            let range = value.span();
            range.start <= span.start && span.start < range.end.max(range.start + 1)
        });
        if let Some((key, value)) = holder {
            let line = line_of(value.span().start);
            if message.starts_with("invalid type") {
                if let Some(fix) = wrong_type(key.get_ref(), value.get_ref()) {
                    return format!("line {line}: key '{}' {fix}", key.get_ref());
                }
            }
            return format!("line {line}: key '{}': {message}", key.get_ref());
        }
        return format!("line {}: {message}", line_of(span.start));
    }
    message
}

/// toml's messages can span lines ("invalid table header\nexpected `.`,
/// `]`"); an error here is one line (found by fuzzing).
fn one_line(message: &str) -> String {
    let parts: Vec<&str> = message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    super::shown(&parts.join("; "))
}

/// `; did you mean 'concurrency'?` for a key a typo or two away from a known
/// one (compared in lower case, `-` read as `_`), else where the keys are
/// listed.
fn suggestion(name: &str, accepted: &[String]) -> String {
    let typed = name.to_ascii_lowercase().replace('-', "_");
    let closest = accepted
        .iter()
        .map(|known| (strsim::damerau_levenshtein(&typed, known), known))
        .min();
    match closest {
        Some((distance, known)) if distance <= 2 && distance < known.len() => {
            format!("; did you mean '{known}'?")
        }
        _ => "; the keys are listed in README.md, \"Configuration\", and \
              `pagecrawl init NAME` writes a config with every key"
            .into(),
    }
}

/// What a key of the wrong type should hold, as `takes X, not Y; write K = V`.
fn wrong_type(key: &str, value: &Value) -> Option<String> {
    let doc = KEYS.iter().find(|doc| doc.name == key)?;
    let example: Value = toml::from_str::<BTreeMap<String, Value>>(&format!("v = {}", doc.value))
        .ok()?
        .remove("v")?;
    if let (Value::Table(_), Value::Table(_)) = (&example, value) {
        // The table is one; an entry in it is not a string.
        return Some(format!(
            "holds a value that is not a string; write each entry as Name = \"value\", e.g. {key} = {}",
            doc.value
        ));
    }
    if std::mem::discriminant(&example) == std::mem::discriminant(value) {
        return None;
    }
    // The value as the user wrote it, without TOML's quotes.
    let bare = match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let given = match value {
        Value::String(text) => format!("the string \"{text}\""),
        Value::Integer(_) | Value::Float(_) => format!("the number {bare}"),
        Value::Boolean(_) => bare.clone(),
        Value::Datetime(_) => "a date".into(),
        Value::Array(_) => "a list".into(),
        Value::Table(_) => "a table".into(),
    };
    let (takes, write) = match &example {
        Value::String(_) if key == "pages" => {
            let write = match value {
                Value::Integer(last) if *last >= 1 => format!("\"1..={last}\""),
                _ => doc.value.to_string(),
            };
            ("a page range in quotes", write)
        }
        Value::String(sample) if humantime::parse_duration(sample).is_ok() => {
            let write = match value {
                Value::Integer(seconds) if *seconds >= 0 => format!("\"{seconds}s\""),
                Value::Float(seconds) if *seconds >= 0.0 && seconds.is_finite() => {
                    format!("\"{}ms\"", (seconds * 1000.0).round() as u64)
                }
                _ => doc.value.to_string(),
            };
            ("a duration in quotes", write)
        }
        Value::String(sample) if super::parse_size(sample).is_some() => {
            let write = match value {
                Value::Integer(bytes) if *bytes >= 0 => format!("\"{bytes}\""),
                _ => doc.value.to_string(),
            };
            ("a size in quotes", write)
        }
        Value::String(_) => {
            let write = match value {
                Value::Integer(_) | Value::Float(_) | Value::Boolean(_) => format!("\"{bare}\""),
                _ => doc.value.to_string(),
            };
            ("a string in quotes", write)
        }
        Value::Integer(_) => {
            let write = match value {
                Value::String(text) if text.trim().parse::<i64>().is_ok() => {
                    text.trim().to_string()
                }
                _ => doc.value.to_string(),
            };
            if key == "rate_limit" {
                ("a number without quotes", write)
            } else {
                ("a whole number without quotes", write)
            }
        }
        Value::Boolean(_) => ("true or false, without quotes", doc.value.to_string()),
        Value::Table(_) => ("a table", doc.value.to_string()),
        _ => return None,
    };
    Some(format!(
        "takes {takes}, not {}; write {key} = {}",
        super::shown(&given),
        super::shown(&write)
    ))
}

/// For a line that puts a backslash in a double-quoted string (TOML reads
/// `\.` or `\d` as an escape and refuses it): write it in single quotes.
fn backslash_advice(text: &str, line: usize) -> Option<String> {
    let source = text.lines().nth(line.checked_sub(1)?)?;
    let (key, value) = source.split_once('=')?;
    let (key, value) = (key.trim(), value.trim());
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    if !inner.contains('\\') {
        return None;
    }
    let example = if inner.contains('\'') || inner.len() > 120 {
        format!("{key} = '...'")
    } else {
        format!("{key} = '{inner}'")
    };
    Some(format!(
        "in double quotes a backslash starts a TOML escape (\\n, \\t...), so a regex's \\d or \\. is refused; \
         write the value in single quotes, a TOML literal string where \\ is an ordinary character: {}",
        super::shown(&example)
    ))
}
