//! The job configuration: raw TOML (`RawConfig`, unknown keys refused) is
//! validated into [`Config`], which holds only valid, built values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::error::UserError;
use crate::output::Format;
use crate::range::{parse_range, PageRange};

/// The TOML file as written. Every key but the first three has a default.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    url: String,
    pages: String,
    pattern: String,
    #[serde(default = "defaults::concurrency")]
    concurrency: i64,
    #[serde(default)]
    rate_limit: Option<f64>,
    #[serde(default = "defaults::user_agent")]
    user_agent: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default = "defaults::connect_timeout")]
    connect_timeout: String,
    #[serde(default = "defaults::request_timeout")]
    request_timeout: String,
    #[serde(default = "defaults::retries")]
    retries: i64,
    #[serde(default = "defaults::backoff")]
    backoff: String,
    #[serde(default = "defaults::max_backoff")]
    max_backoff: String,
    #[serde(default = "defaults::charset")]
    charset: String,
    #[serde(default = "defaults::max_body_size")]
    max_body_size: String,
    #[serde(default)]
    output: Option<String>,
    #[serde(default = "defaults::format")]
    format: String,
    #[serde(default = "defaults::stop_after_empty")]
    stop_after_empty: i64,
    #[serde(default)]
    parse_threads: Option<i64>,
    #[serde(default = "defaults::commit_every")]
    commit_every: i64,
    #[serde(default = "defaults::commit_interval")]
    commit_interval: String,
    #[serde(default = "defaults::stop_grace")]
    stop_grace: String,
    #[serde(default)]
    follow: Option<String>,
    #[serde(default = "defaults::refresh_pages")]
    refresh_pages: i64,
    #[serde(default)]
    key: Option<String>,
    #[serde(default = "defaults::robots")]
    robots: bool,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    metrics_allow_remote: bool,
}

/// Defaults, named so the README and `RawConfig` agree on them.
mod defaults {
    pub fn concurrency() -> i64 {
        8
    }
    pub fn user_agent() -> String {
        concat!("pagecrawl/", env!("CARGO_PKG_VERSION")).to_string()
    }
    pub fn connect_timeout() -> String {
        "10s".into()
    }
    pub fn request_timeout() -> String {
        "30s".into()
    }
    pub fn retries() -> i64 {
        5
    }
    pub fn backoff() -> String {
        "500ms".into()
    }
    pub fn max_backoff() -> String {
        "60s".into()
    }
    pub fn charset() -> String {
        "utf-8".into()
    }
    pub fn max_body_size() -> String {
        "10MiB".into()
    }
    pub fn format() -> String {
        "jsonl".into()
    }
    pub fn stop_after_empty() -> i64 {
        3
    }
    pub fn commit_every() -> i64 {
        64
    }
    pub fn commit_interval() -> String {
        "200ms".into()
    }
    pub fn stop_grace() -> String {
        "10s".into()
    }
    pub fn refresh_pages() -> i64 {
        1
    }
    pub fn robots() -> bool {
        true
    }
}

/// A validated job configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the config was read from (for messages and relative paths).
    pub source: PathBuf,
    /// URL template, holding `{page}` at least once.
    pub url: String,
    pub pages: PageRange,
    /// The raw pattern text (part of the job's identity).
    pub pattern_text: String,
    pub pattern: Regex,
    /// Named capture groups, in pattern order: the output's fields.
    pub fields: Vec<String>,
    pub concurrency: usize,
    pub rate_limit: Option<f64>,
    pub user_agent: String,
    pub headers: Vec<(String, String)>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: u32,
    pub backoff: Duration,
    pub max_backoff: Duration,
    pub charset: &'static encoding_rs::Encoding,
    pub max_body_size: u64,
    /// Explicit output path, already resolved against the config's folder.
    pub output: Option<PathBuf>,
    pub format: Format,
    pub stop_after_empty: u32,
    pub parse_threads: usize,
    pub commit_every: usize,
    pub commit_interval: Duration,
    pub stop_grace: Duration,
    /// Follow mode: when the queue drains, re-crawl the first
    /// `refresh_pages` pages this often instead of exiting.
    pub follow: Option<Duration>,
    pub refresh_pages: u64,
    /// The field whose value identifies an item: an item whose key was
    /// already written is not written again.
    pub key: Option<String>,
    /// Obey the site's robots.txt (disallowed pages fail; `Crawl-delay` is a
    /// minimum interval between requests).
    pub robots: bool,
    /// Where to serve `GET /metrics` (loopback unless
    /// `metrics_allow_remote`); not reloadable.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, UserError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            UserError::Config(format!(
                "cannot read config file {}: {} (pass an existing TOML file with --config)",
                path.display(),
                crate::util::io_reason(&e)
            ))
        })?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` names it in messages and anchors
    /// relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Config, UserError> {
        let where_ = path.display().to_string();
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|span| 1 + text[..span.start].matches('\n').count());
            let at = line.map(|l| format!(" line {l}")).unwrap_or_default();
            // toml's messages can span lines ("invalid table header\nexpected
            // `.`, `]`"); an error here is one line (found by fuzzing).
            let message: Vec<&str> = e
                .message()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            UserError::Config(format!("config {where_}{at}: {}", message.join("; ")))
        })?;
        let bad = |key: &str, why: String| {
            UserError::Config(format!("config {where_}: key '{key}': {why}"))
        };
        let duration = |key: &str, value: &str| -> Result<Duration, UserError> {
            humantime::parse_duration(value.trim()).map_err(|e| {
                bad(
                    key,
                    format!(
                        "'{value}' is not a duration ({e}); write e.g. \"500ms\", \"30s\", \"10m\""
                    ),
                )
            })
        };
        let count = |key: &str, value: i64, min: i64, max: i64| -> Result<u64, UserError> {
            if value < min || value > max {
                return Err(bad(
                    key,
                    format!("{value} is out of range; use a whole number from {min} to {max}"),
                ));
            }
            Ok(value as u64)
        };

        if !raw.url.contains("{page}") {
            return Err(bad(
                "url",
                "the URL template has no {page} placeholder; put {page} where the page number goes"
                    .into(),
            ));
        }
        let sample = raw.url.replace("{page}", "1");
        let scheme_ok = sample.starts_with("http://") || sample.starts_with("https://");
        if !scheme_ok
            || sample
                .parse::<ureq::http::Uri>()
                .map(|u| u.host().is_none())
                .unwrap_or(true)
        {
            return Err(bad(
                "url",
                format!("'{}' is not an http:// or https:// URL", raw.url),
            ));
        }
        let pages = parse_range(&raw.pages).map_err(|e| bad("pages", e))?;
        let pattern = Regex::new(&raw.pattern).map_err(|e| {
            let first = e
                .to_string()
                .lines()
                .last()
                .unwrap_or("invalid")
                .trim()
                .to_string();
            bad(
                "pattern",
                format!("not a valid regular expression: {first}"),
            )
        })?;
        let fields: Vec<String> = pattern
            .capture_names()
            .flatten()
            .map(str::to_string)
            .collect();
        if fields.is_empty() {
            return Err(bad(
                "pattern",
                "has no named group; name what to extract, e.g. (?P<title>[^<]+)".into(),
            ));
        }
        if fields.iter().any(|f| f == "page") {
            return Err(bad(
                "pattern",
                "a group may not be called 'page': that field holds the page number".into(),
            ));
        }
        let concurrency = count("concurrency", raw.concurrency, 1, 1024)? as usize;
        let rate_limit = match raw.rate_limit {
            Some(rate) if !(rate.is_finite() && rate > 0.0) => {
                return Err(bad(
                    "rate_limit",
                    format!("{rate} is not a positive number of requests per second"),
                ))
            }
            other => other,
        };
        let mut headers = Vec::new();
        for (name, value) in raw.headers {
            let valid = ureq::http::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && ureq::http::HeaderValue::from_str(&value).is_ok();
            if !valid {
                return Err(bad(
                    "headers",
                    format!("'{name}: {value}' is not a valid HTTP header"),
                ));
            }
            headers.push((name, value));
        }
        if ureq::http::HeaderValue::from_str(&raw.user_agent).is_err() {
            return Err(bad(
                "user_agent",
                "holds characters not allowed in an HTTP header".into(),
            ));
        }
        let charset =
            encoding_rs::Encoding::for_label(raw.charset.trim().as_bytes()).ok_or_else(|| {
                bad(
                    "charset",
                    format!(
                        "'{}' is not a known character set (e.g. utf-8, gbk, windows-1252)",
                        raw.charset
                    ),
                )
            })?;
        let max_body_size = parse_size(&raw.max_body_size)
            .filter(|&size| size > 0)
            .ok_or_else(|| {
                bad(
                    "max_body_size",
                    format!(
                        "'{}' is not a size; write e.g. \"10MiB\" or \"500KB\"",
                        raw.max_body_size
                    ),
                )
            })?;
        let format = Format::from_name(&raw.format).ok_or_else(|| {
            bad(
                "format",
                format!(
                    "'{}' is not an output format; use \"jsonl\" or \"csv\"",
                    raw.format
                ),
            )
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let output = raw.output.map(|o| base.join(o));
        let parse_threads = match raw.parse_threads {
            Some(n) => count("parse_threads", n, 1, 256)? as usize,
            None => std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .min(8),
        };
        let backoff = duration("backoff", &raw.backoff)?;
        let max_backoff = duration("max_backoff", &raw.max_backoff)?;
        if max_backoff < backoff {
            return Err(bad(
                "max_backoff",
                "must not be shorter than 'backoff'".into(),
            ));
        }
        let key = match raw.key {
            Some(key) if !fields.contains(&key) => {
                return Err(bad(
                    "key",
                    format!(
                        "'{key}' is not a named group of the pattern (groups: {})",
                        fields.join(", ")
                    ),
                ))
            }
            other => other,
        };
        let follow = match raw.follow {
            Some(text) => {
                let every = duration("follow", &text)?;
                if every.is_zero() {
                    return Err(bad("follow", "must be longer than zero".into()));
                }
                Some(every)
            }
            None => None,
        };
        if follow.is_some() && key.is_none() {
            return Err(bad("follow", "needs `key` (the field that identifies an item, e.g. key = \"url\"), or re-crawled pages would repeat their items".into()));
        }
        let request_timeout = duration("request_timeout", &raw.request_timeout)?;
        let connect_timeout = duration("connect_timeout", &raw.connect_timeout)?;
        if request_timeout.is_zero() || connect_timeout.is_zero() {
            return Err(bad(
                "request_timeout",
                "timeouts must be longer than zero".into(),
            ));
        }
        Ok(Config {
            source: path.to_path_buf(),
            url: raw.url,
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
            retries: count("retries", raw.retries, 0, 100)? as u32,
            backoff,
            max_backoff,
            charset,
            max_body_size,
            output,
            format,
            stop_after_empty: count("stop_after_empty", raw.stop_after_empty, 1, 1000)? as u32,
            parse_threads,
            commit_every: count("commit_every", raw.commit_every, 1, 100_000)? as usize,
            commit_interval: duration("commit_interval", &raw.commit_interval)?,
            stop_grace: duration("stop_grace", &raw.stop_grace)?,
            follow,
            refresh_pages: count("refresh_pages", raw.refresh_pages, 1, 1_000_000)?,
            key,
            robots: raw.robots,
            metrics_listen: raw
                .metrics_listen
                .map(|text| crate::metrics::listen_address(&text, raw.metrics_allow_remote))
                .transpose()
                .map_err(|why| bad("metrics_listen", why))?,
        })
    }

    /// The URL of one page.
    pub fn page_url(&self, page: u64) -> String {
        self.url.replace("{page}", &page.to_string())
    }

    /// The state directory used when neither `--state-dir` nor
    /// `$STATE_DIRECTORY` names one: `NAME.state` beside `NAME.toml`.
    pub fn default_state_dir(&self) -> PathBuf {
        let stem = self
            .source
            .file_stem()
            .map_or("pagecrawl".into(), |s| s.to_string_lossy().into_owned());
        self.source
            .parent()
            .unwrap_or(Path::new("."))
            .join(format!("{stem}.state"))
    }
}

/// Parses "10MiB", "500KB", "2048" (bytes). Binary and decimal units.
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits.parse().ok()?;
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" => 1 << 30,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
url = "http://127.0.0.1:8080/bugs.php?page={page}"
pages = "1..=295"
pattern = '<a href="(?P<url>[^"]+)">(?P<title>[^<]*)</a>'
"#;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse(text, Path::new("/etc/job.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.fields, ["url", "title"]);
        assert_eq!(config.concurrency, 8);
        assert_eq!(config.retries, 5);
        assert_eq!(config.max_body_size, 10 << 20);
        assert_eq!(config.page_url(3), "http://127.0.0.1:8080/bugs.php?page=3");
        assert_eq!(config.default_state_dir(), Path::new("/etc/job.state"));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        let cases = [
            ("url = \"http://x/\"", "url", "'url'"),
            ("pages = \"1..x\"", "pages", "'pages'"),
            ("pattern = '(?P<a>['", "pattern", "'pattern'"),
            ("pattern = '<a>'", "pattern", "no named group"),
            ("concurrency = 0", "concurrency", "'concurrency'"),
            ("rate_limit = -1.0", "rate_limit", "'rate_limit'"),
            ("charset = \"klingon\"", "charset", "'charset'"),
            (
                "request_timeout = \"soon\"",
                "request_timeout",
                "'request_timeout'",
            ),
            ("format = \"xml\"", "format", "'format'"),
            (
                "max_body_size = \"lots\"",
                "max_body_size",
                "'max_body_size'",
            ),
            ("key = \"id\"", "key", "not a named group"),
            ("follow = \"0s\"\nkey = \"url\"", "follow", "'follow'"),
            ("follow = \"10m\"", "follow", "needs `key`"),
            ("refresh_pages = 0", "refresh_pages", "'refresh_pages'"),
        ];
        for (line, key, expected) in cases {
            let text: String = MINIMAL
                .lines()
                .filter(|l| !l.starts_with(&format!("{key} =")))
                .chain(std::iter::once(line))
                .collect::<Vec<_>>()
                .join("\n");
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expected), "{line}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn unknown_and_missing_keys_are_named_with_their_line() {
        let err = parse(&format!("{MINIMAL}\ncolour = 3\n")).unwrap_err();
        assert!(err.contains("colour") && err.contains("line 6"), "{err}");
        let err = parse("pages = \"1..\"\npattern = '(?P<a>x)'").unwrap_err();
        assert!(err.contains("url"), "{err}");
    }

    #[test]
    fn a_multi_line_toml_error_becomes_one_line() {
        // Found by `cargo fuzz run config`: "[l." gave a two-line message.
        let err = parse("[l.\n").unwrap_err();
        assert!(!err.contains('\n') && err.contains("line 1"), "{err}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("2048"), Some(2048));
        assert_eq!(parse_size("10MiB"), Some(10 << 20));
        assert_eq!(parse_size("500 KB"), Some(500_000));
        assert_eq!(parse_size("ten"), None);
        assert_eq!(parse_size("99999999999999GiB"), None);
    }
}
