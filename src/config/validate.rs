//! The range of every value, and the checks that hold a parsed
//! [`RawConfig`](super::RawConfig) to them: each refusal is one sentence
//! saying what to write.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;

use super::{parse_size, Config, RawConfig};
use crate::output::Format;
use crate::range::parse_range;

/// The largest config file read: a job is a few lines of TOML, and a
/// bigger file (or `/dev/zero`) is a mistake, not a config.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
/// The longest URL template, in bytes (servers commonly refuse longer
/// request lines).
pub const MAX_URL_BYTES: usize = 8 << 10;
/// The longest `user_agent`, in bytes.
pub const MAX_USER_AGENT_BYTES: usize = 1 << 10;
/// The most entries `headers` may hold.
pub const MAX_HEADERS: usize = 64;
/// The longest header, name and value together, in bytes.
pub const MAX_HEADER_BYTES: usize = 8 << 10;
/// The slowest and fastest `rate_limit`, in requests per second.
pub const RATE_LIMIT_RANGE: (f64, f64) = (0.0001, 10_000.0);
/// The largest `max_body_size`.
pub const MAX_BODY_SIZE: u64 = 1 << 30;
/// The longest `output` path, in bytes (Linux's PATH_MAX).
pub const MAX_OUTPUT_BYTES: usize = 4096;
/// The range of each duration key, as written in the README.
pub const DURATION_RANGES: &[(&str, &str, &str)] = &[
    ("connect_timeout", "1ms", "1h"),
    ("request_timeout", "1ms", "24h"),
    ("backoff", "0s", "24h"),
    ("max_backoff", "0s", "24h"),
    ("commit_interval", "0s", "1h"),
    ("stop_grace", "0s", "1h"),
    ("follow", "100ms", "365d"),
    ("lease_time", "2s", "1h"),
];
/// The range of each whole-number key.
pub const COUNT_RANGES: &[(&str, i64, i64)] = &[
    ("concurrency", 1, 1024),
    ("retries", 0, 100),
    ("stop_after_empty", 1, 1000),
    ("parse_threads", 1, 256),
    ("daemon_concurrency", 1, 1024),
    ("commit_every", 1, 100_000),
    ("refresh_pages", 1, 1_000_000),
];

pub(crate) use crate::util::shown;

/// Parses a duration key's value and checks it is in the key's range
/// (from [`DURATION_RANGES`]).
fn duration_in(key: &str, value: &str) -> Result<Duration, String> {
    let (_, min_text, max_text) = DURATION_RANGES
        .iter()
        .find(|(name, _, _)| *name == key)
        .copied()
        .unwrap_or((key, "0s", "24h"));
    let bound = |text: &str| humantime::parse_duration(text).unwrap_or_default();
    // Examples within the range.
    let examples = if bound(min_text) >= Duration::from_secs(1) {
        "\"30s\", \"10m\", \"1h\""
    } else {
        "\"500ms\", \"30s\", \"10m\""
    };
    let range = format!("write a duration from {min_text} to {max_text}, e.g. {examples}");
    let parsed = humantime::parse_duration(value.trim())
        .map_err(|e| format!("'{}' is not a duration ({e}); {range}", shown(value)))?;
    if parsed < bound(min_text) || parsed > bound(max_text) {
        return Err(format!("'{}' is out of range; {range}", shown(value)));
    }
    Ok(parsed)
}

/// `run --follow`: an interval in `follow`'s range, or why not.
pub fn follow_interval(text: &str) -> Result<Duration, String> {
    duration_in("follow", text)
}

/// A refused value: the key, and a sentence on what is wrong and what to
/// write.
pub(super) type Refusal = (&'static str, String);

/// Checks every value of `raw` into its documented range and builds the
/// config.
pub(super) fn validate(raw: RawConfig, path: &Path) -> Result<Config, Refusal> {
    let count = |key: &'static str, value: i64| -> Result<u64, Refusal> {
        let (_, min, max) = COUNT_RANGES
            .iter()
            .find(|(name, _, _)| *name == key)
            .copied()
            .unwrap_or((key, 0, 0));
        if value < min || value > max {
            return Err((
                key,
                format!("{value} is out of range; write a whole number from {min} to {max}"),
            ));
        }
        Ok(value as u64)
    };
    let duration =
        |key: &'static str, value: &str| duration_in(key, value).map_err(|why| (key, why));

    let url = check_url(&raw.url).map_err(|why| ("url", why))?;
    let pages = parse_range(&raw.pages).map_err(|e| ("pages", e))?;
    let (pattern, fields) = check_pattern(&raw.pattern).map_err(|why| ("pattern", why))?;
    let concurrency = count("concurrency", raw.concurrency)? as usize;
    let rate_limit = match raw.rate_limit {
        Some(rate) => {
            let (slowest, fastest) = RATE_LIMIT_RANGE;
            if !(slowest..=fastest).contains(&rate) {
                return Err((
                    "rate_limit",
                    format!(
                        "{} is out of range; write requests per second from {slowest} to {fastest} (0.5 is one request every 2 s)",
                        if rate.abs() >= 1e-4 && rate.abs() <= 1e9 { rate.to_string() } else { format!("{rate:e}") }
                    ),
                ));
            }
            Some(rate)
        }
        None => None,
    };
    let headers = check_headers(raw.headers).map_err(|why| ("headers", why))?;
    check_header_value(&raw.user_agent, MAX_USER_AGENT_BYTES)
        .map_err(|why| ("user_agent", format!("'{}' {why}", shown(&raw.user_agent))))?;
    let charset =
        encoding_rs::Encoding::for_label(raw.charset.trim().as_bytes()).ok_or_else(|| {
            (
                "charset",
                format!(
                    "'{}' is not a known character set (e.g. utf-8, gbk, windows-1252)",
                    shown(&raw.charset)
                ),
            )
        })?;
    let max_body_size = parse_size(&raw.max_body_size)
        .filter(|&size| (1..=MAX_BODY_SIZE).contains(&size))
        .ok_or_else(|| {
            (
                "max_body_size",
                format!(
                    "'{}' is not a size from 1 byte to 1GiB; write e.g. \"10MiB\" or \"500KB\"",
                    shown(&raw.max_body_size)
                ),
            )
        })?;
    let format = Format::from_name(&raw.format).ok_or_else(|| {
        (
            "format",
            format!(
                "'{}' is not an output format; write \"jsonl\" or \"csv\"",
                shown(&raw.format)
            ),
        )
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    let output = match raw.output {
        Some(output) => Some(check_output(base, &output).map_err(|why| ("output", why))?),
        None => None,
    };
    let parse_threads = match raw.parse_threads {
        Some(n) => count("parse_threads", n)? as usize,
        None => std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .min(8),
    };
    let backoff = duration("backoff", &raw.backoff)?;
    let max_backoff = duration("max_backoff", &raw.max_backoff)?;
    if max_backoff < backoff {
        return Err(("max_backoff", "must not be shorter than 'backoff'".into()));
    }
    let key = match raw.key {
        Some(key) if !fields.contains(&key) => {
            return Err((
                "key",
                format!(
                    "'{}' is not a named group of the pattern (groups: {})",
                    shown(&key),
                    fields.join(", ")
                ),
            ))
        }
        other => other,
    };
    let mut absolute = Vec::with_capacity(raw.absolute.len());
    for name in &raw.absolute {
        let Some(index) = fields.iter().position(|f| f == name) else {
            return Err((
                "absolute",
                format!(
                    "'{}' is not a named group of the pattern (groups: {}); list the fields that hold links, e.g. absolute = [\"url\"]",
                    shown(name),
                    fields.join(", ")
                ),
            ));
        };
        if !absolute.contains(&index) {
            absolute.push(index);
        }
    }
    let detail = match raw.detail {
        Some(table) => {
            let detail = super::detail::validate(table, &fields)?;
            // The link is what the output holds: always absolute.
            if !absolute.contains(&detail.link) {
                absolute.push(detail.link);
            }
            Some(detail)
        }
        None => None,
    };
    let follow = match raw.follow {
        Some(text) => Some(duration("follow", &text)?),
        None => None,
    };
    if follow.is_some() && key.is_none() {
        return Err(("follow", "needs `key` (the field that identifies an item, e.g. key = \"url\"), or re-crawled pages would repeat their items".into()));
    }
    let (ca_file, ca_certs) = match raw.ca_file {
        Some(file) => {
            let (path, certs) = check_ca_file(base, &file).map_err(|why| ("ca_file", why))?;
            (Some(path), certs)
        }
        None => (None, Vec::new()),
    };
    let request_timeout = duration("request_timeout", &raw.request_timeout)?;
    let connect_timeout = duration("connect_timeout", &raw.connect_timeout)?;
    Ok(Config {
        source: path.to_path_buf(),
        from_command_line: false,
        url,
        pages,
        pattern_text: raw.pattern,
        pattern,
        fields,
        concurrency,
        rate_limit,
        user_agent: raw.user_agent,
        headers,
        connect_timeout,
        request_timeout,
        retries: count("retries", raw.retries)? as u32,
        backoff,
        max_backoff,
        charset,
        max_body_size,
        output,
        format,
        stop_after_empty: count("stop_after_empty", raw.stop_after_empty)? as u32,
        parse_threads,
        commit_every: count("commit_every", raw.commit_every)? as usize,
        commit_interval: duration("commit_interval", &raw.commit_interval)?,
        stop_grace: duration("stop_grace", &raw.stop_grace)?,
        lease_time: duration("lease_time", &raw.lease_time)?,
        daemon_concurrency: raw
            .daemon_concurrency
            .map(|n| count("daemon_concurrency", n).map(|n| n as usize))
            .transpose()?,
        follow,
        refresh_pages: count("refresh_pages", raw.refresh_pages)?,
        key,
        absolute,
        robots: raw.robots,
        metrics_listen: raw
            .metrics_listen
            .map(|text| crate::metrics::listen_address(&text, raw.metrics_allow_remote))
            .transpose()
            .map_err(|why| ("metrics_listen", why))?,
        ca_file,
        ca_certs,
        tls_insecure_skip_verify: raw.tls_insecure_skip_verify,
        detail,
        store: raw
            .store
            .map(|url| check_store(&url).map(|()| url))
            .transpose()
            .map_err(|why| ("store", why))?,
        job: raw
            .job
            .map(|name| check_job_name(&name).map(|()| name))
            .transpose()
            .map_err(|why| ("job", why))?,
    })
}

/// `store`: a URL the PostgreSQL client parses (its password is looked up
/// only when a command connects).
fn check_store(url: &str) -> Result<(), String> {
    use crate::store::postgres::connect::{parse_store_url, PasswordSources};
    match parse_store_url(url, &PasswordSources::default()) {
        Ok(_) => Ok(()),
        Err(error) => {
            let text = error.to_string();
            Err(text.strip_prefix("store: ").unwrap_or(&text).to_string())
        }
    }
}

/// The longest `job` name: PostgreSQL's identifier length, so that a name
/// fits wherever one is shown.
pub const MAX_JOB_NAME: usize = 63;

/// `job`: 1 to [`MAX_JOB_NAME`] characters, none of them a control
/// character.
pub fn check_job_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("is empty: name the job, e.g. job = \"wooyun\"".into());
    }
    if name.chars().count() > MAX_JOB_NAME {
        return Err(format!(
            "'{}' is longer than {MAX_JOB_NAME} characters: choose a shorter name",
            shown(name)
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(format!(
            "'{}' holds a control character: use letters, digits, '-', '_' or '.'",
            shown(name)
        ));
    }
    Ok(())
}

/// The largest `ca_file` read: a bundle of every public CA is about 200 KB.
pub const MAX_CA_FILE_BYTES: u64 = 16 << 20;

/// `ca_file`: a readable PEM file (relative paths from the config's
/// folder) holding at least one certificate; its path and the
/// certificates' DER bytes.
fn check_ca_file(base: &Path, file: &str) -> Result<(PathBuf, Vec<Vec<u8>>), String> {
    use std::io::Read;
    let path = base.join(file);
    let mut text = Vec::new();
    std::fs::File::open(&path)
        .and_then(|f| f.take(MAX_CA_FILE_BYTES).read_to_end(&mut text))
        .map_err(|e| {
            format!(
                "cannot read '{}' ({}); give the path of a PEM file of CA certificates",
                shown(&path.display().to_string()),
                crate::util::io_reason(&e)
            )
        })?;
    let certs: Vec<Vec<u8>> = ureq::tls::parse_pem(&text)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(cert)) => Some(cert.der().to_vec()),
            _ => None,
        })
        .collect();
    if certs.is_empty() {
        return Err(format!(
            "'{}' holds no certificate; give a PEM file with -----BEGIN CERTIFICATE----- blocks",
            shown(&path.display().to_string())
        ));
    }
    Ok((path, certs))
}

/// The URL template: at most [`MAX_URL_BYTES`], with `{page}`, http or
/// https, a host, and a port (if any) from 1 to 65535.
fn check_url(url: &str) -> Result<String, String> {
    if url.len() > MAX_URL_BYTES {
        return Err(format!(
            "the URL template is {} bytes long; write one of at most {MAX_URL_BYTES} bytes",
            url.len()
        ));
    }
    if !url.contains("{page}") {
        return Err(format!(
            "'{}' has no {{page}} placeholder; put {{page}} where the page number goes",
            shown(url)
        ));
    }
    let sample = url.replace("{page}", "1");
    let not_http = || format!("'{}' is not an http:// or https:// URL", shown(url));
    if !(sample.starts_with("http://") || sample.starts_with("https://")) {
        return Err(not_http());
    }
    let uri: ureq::http::Uri = sample.parse().map_err(|_| not_http())?;
    let authority = uri.authority().ok_or_else(not_http)?;
    if uri.host().is_none_or(str::is_empty) {
        return Err(not_http());
    }
    if let Some((_, port)) = authority.as_str().rsplit_once(':') {
        let digits = !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit());
        if digits && !matches!(port.parse::<u16>(), Ok(1..)) {
            return Err(format!(
                "'{}' has port {}; a port is from 1 to 65535",
                shown(url),
                shown(port)
            ));
        }
    }
    Ok(url.to_string())
}

/// The pattern: a regex with named groups (none called `page`) that cannot
/// match the empty string, which would make an empty item at every
/// position of every page.
pub(super) fn check_pattern(text: &str) -> Result<(Regex, Vec<String>), String> {
    let pattern = Regex::new(text).map_err(|e| {
        let first = e
            .to_string()
            .lines()
            .last()
            .unwrap_or("invalid")
            .trim()
            .to_string();
        format!("not a valid regular expression: {}", shown(&first))
    })?;
    let fields: Vec<String> = pattern
        .capture_names()
        .flatten()
        .map(str::to_string)
        .collect();
    if fields.is_empty() {
        return Err("has no named group; name what to extract, e.g. (?P<title>[^<]+)".into());
    }
    if fields.iter().any(|f| f == "page") {
        return Err("a group may not be called 'page': that field holds the page number".into());
    }
    let empty_match = regex_syntax::Parser::new()
        .parse(text)
        .map(|hir| hir.properties().minimum_len() == Some(0))
        .unwrap_or(false);
    if empty_match {
        return Err(
            "can match the empty string, which would write an empty item at every position of every page; \
             make it need at least one character, e.g. x+ instead of x*, or anchor it on the text around the value"
                .into(),
        );
    }
    Ok((pattern, fields))
}

/// A header value (or `user_agent`): one line of visible text, at most
/// `limit` bytes. The error completes "'VALUE' ...".
fn check_header_value(value: &str, limit: usize) -> Result<(), String> {
    if value.len() > limit {
        return Err(format!(
            "is {} bytes long; write at most {limit} bytes",
            value.len()
        ));
    }
    if ureq::http::HeaderValue::from_str(value).is_err() {
        return Err(
            "holds a character not allowed in an HTTP header (a line break or another control character); write one line of text"
                .into(),
        );
    }
    Ok(())
}

/// Extra headers: at most [`MAX_HEADERS`], each a valid name and value of at
/// most [`MAX_HEADER_BYTES`] together.
fn check_headers(headers: BTreeMap<String, String>) -> Result<Vec<(String, String)>, String> {
    if headers.len() > MAX_HEADERS {
        return Err(format!(
            "holds {} headers; write at most {MAX_HEADERS}",
            headers.len()
        ));
    }
    let mut checked = Vec::new();
    for (name, value) in headers {
        if ureq::http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            return Err(format!(
                "'{}' is not a valid HTTP header name; a name is letters, digits and - (e.g. Accept-Language)",
                shown(&name)
            ));
        }
        check_header_value(&value, MAX_HEADER_BYTES.saturating_sub(name.len())).map_err(|why| {
            format!(
                "the value of '{}', '{}', {why}",
                shown(&name),
                shown(&value)
            )
        })?;
        checked.push((name, value));
    }
    Ok(checked)
}

/// The output path: a file name (not empty, not a folder), resolved against
/// the config's folder.
fn check_output(base: &Path, output: &str) -> Result<PathBuf, String> {
    let advice = "write a file path such as \"items.jsonl\" (relative to the config file), or remove the line to write into the state directory";
    let joined = base.join(output);
    let names_a_file = !output.trim().is_empty()
        && !output.ends_with('/')
        && !output.contains('\0')
        && output.len() <= MAX_OUTPUT_BYTES
        && Path::new(output)
            .file_name()
            .is_some_and(|name| name != "." && name != "..");
    if !names_a_file {
        return Err(format!("'{}' is not a file path; {advice}", shown(output)));
    }
    if joined.is_dir() {
        return Err(format!(
            "{} is a folder; {advice}",
            shown(&joined.display().to_string())
        ));
    }
    Ok(joined)
}
