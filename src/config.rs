//! The job configuration: raw TOML (`RawConfig`, unknown keys refused) is
//! validated into [`Config`], which holds only valid, built values.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::error::UserError;
use crate::output::Format;
use crate::range::PageRange;

#[cfg(test)]
pub(crate) mod arbitrary;
pub mod detail;
mod explain;
mod validate;
pub use validate::check_job_name;

pub(crate) use validate::shown;
pub use validate::{
    follow_interval, COUNT_RANGES, DURATION_RANGES, MAX_BODY_SIZE, MAX_CONFIG_BYTES, MAX_HEADERS,
    MAX_HEADER_BYTES, MAX_OUTPUT_BYTES, MAX_URL_BYTES, MAX_USER_AGENT_BYTES, RATE_LIMIT_RANGE,
};

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
    #[serde(default = "defaults::lease_time")]
    lease_time: String,
    #[serde(default)]
    daemon_concurrency: Option<i64>,
    #[serde(default)]
    follow: Option<String>,
    #[serde(default = "defaults::refresh_pages")]
    refresh_pages: i64,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    absolute: Vec<String>,
    #[serde(default = "defaults::robots")]
    robots: bool,
    #[serde(default)]
    metrics_listen: Option<String>,
    #[serde(default)]
    metrics_allow_remote: bool,
    #[serde(default)]
    ca_file: Option<String>,
    #[serde(default)]
    tls_insecure_skip_verify: bool,
    #[serde(default)]
    detail: Option<detail::RawDetail>,
    #[serde(default)]
    store: Option<String>,
    #[serde(default)]
    job: Option<String>,
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
    pub fn lease_time() -> String {
        "60s".into()
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
    /// Built from `run --url --pages --pattern`: `source` is a synthetic
    /// path in the current directory, and there is no file to reload.
    pub from_command_line: bool,
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
    /// With `store`: how long a daemon's lease on its tasks lasts without
    /// renewal (it renews every third of it while it works).
    pub lease_time: Duration,
    /// With `store`: the most requests this daemon makes at once
    /// (`concurrency` is then the job's cap across its daemons); `None`:
    /// `concurrency`.
    pub daemon_concurrency: Option<usize>,
    /// Follow mode: when the queue drains, re-crawl the first
    /// `refresh_pages` pages this often instead of exiting.
    pub follow: Option<Duration>,
    pub refresh_pages: u64,
    /// The field whose value identifies an item: an item whose key was
    /// already written is not written again.
    pub key: Option<String>,
    /// Fields resolved to absolute URLs against the page's URL, as the
    /// indices of `fields`.
    pub absolute: Vec<usize>,
    /// Obey the site's robots.txt (disallowed pages fail; `Crawl-delay` is a
    /// minimum interval between requests).
    pub robots: bool,
    /// Where to serve `GET /metrics` (loopback unless
    /// `metrics_allow_remote`); not reloadable.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// `ca_file`, resolved against the config's folder, and the
    /// certificates (DER) it holds: trusted besides the system's.
    pub ca_file: Option<PathBuf>,
    pub ca_certs: Vec<Vec<u8>>,
    /// Accept any certificate (`tls_insecure_skip_verify`): logged at
    /// warning on every run.
    pub tls_insecure_skip_verify: bool,
    /// The `[detail]` table: items followed to their detail pages.
    pub detail: Option<detail::Detail>,
    /// `store`: a `postgres://` URL (as written, password included) whose
    /// database holds the job instead of the state directory.
    pub store: Option<String>,
    /// `job`: the job's name in that database (default: the config file's
    /// name without `.toml`).
    pub job: Option<String>,
}

/// The keys the parser accepts, read from the parser itself: `RawConfig`
/// refuses unknown keys, and serde's error lists the ones it expects.
pub fn accepted_keys() -> &'static [String] {
    static KEYS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let Err(error) = toml::from_str::<RawConfig>("pagecrawl_no_such_key = 1\n") else {
            return Vec::new();
        };
        let message = error.message().to_string();
        let Some(list) = message.split("expected one of").nth(1) else {
            return Vec::new();
        };
        list.split(',')
            .map(|part| part.trim().trim_matches('`').to_string())
            .filter(|name| {
                !name.is_empty()
                    && name
                        .chars()
                        .all(|c| c.is_ascii_lowercase() || c == '_' || c.is_ascii_digit())
            })
            .collect()
    })
}

impl Config {
    /// Reads and validates a config file: a regular file of at most
    /// [`MAX_CONFIG_BYTES`].
    pub fn load(path: &Path) -> Result<Config, UserError> {
        use std::io::Read;
        let cannot = |why: String| {
            UserError::Config(format!("cannot read config file {}: {why}", path.display()))
        };
        let io = |e: std::io::Error| {
            cannot(format!(
                "{} (pass an existing TOML file with --config)",
                crate::util::io_reason(&e)
            ))
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let metadata = file.metadata().map_err(io)?;
        if !metadata.is_file() {
            return Err(cannot(
                "it is not a regular file (a directory, device or pipe); pass a TOML file with --config"
                    .into(),
            ));
        }
        let mut bytes = Vec::new();
        file.take(MAX_CONFIG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(io)?;
        if bytes.len() as u64 > MAX_CONFIG_BYTES {
            return Err(cannot(format!(
                "it is larger than {} KiB, and a job's config is a few lines of TOML; pass the job's config with --config",
                MAX_CONFIG_BYTES >> 10
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| cannot("it is not UTF-8 text; save it as UTF-8".into()))?;
        Config::parse(&text, path)
    }

    /// Validates config text; `path` names it in messages and anchors
    /// relative paths. Every value is checked into its documented range
    /// here, so nothing later (the first run or a SIGHUP reload) meets a
    /// value it cannot use.
    pub fn parse(text: &str, path: &Path) -> Result<Config, UserError> {
        let where_ = path.display().to_string();
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(UserError::Config(format!(
                "config {where_}: larger than {} KiB; a job's config is a few lines of TOML",
                MAX_CONFIG_BYTES >> 10
            )));
        }
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            UserError::Config(format!(
                "config {where_}: {}",
                explain::explain(text, &e, accepted_keys())
            ))
        })?;
        validate::validate(raw, path)
            .map_err(|(key, why)| UserError::Config(format!("config {where_}: key '{key}': {why}")))
    }

    /// The config of a one-shot `run --url URL --pages RANGE --pattern RE
    /// [--output FILE]`: the same TOML a file would hold, through the same
    /// validation and messages, as if it were `pagecrawl.toml` in the
    /// current directory (so the output is relative to it and the state is
    /// `pagecrawl.state` there).
    pub fn from_command_line(
        url: &str,
        pages: &str,
        pattern: &str,
        output: Option<&Path>,
    ) -> Result<Config, UserError> {
        let mut table = toml::Table::new();
        table.insert("url".into(), url.into());
        table.insert("pages".into(), pages.into());
        table.insert("pattern".into(), pattern.into());
        if let Some(output) = output {
            table.insert(
                "output".into(),
                output.to_string_lossy().into_owned().into(),
            );
        }
        let text = toml::to_string(&table)
            .map_err(|e| UserError::Usage(format!("cannot use these flags: {e}")))?;
        let here = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let path = here.join(COMMAND_LINE_NAME);
        let prefix = format!("config {}: ", path.display());
        let mut config = Config::parse(&text, &path).map_err(|e| match e {
            UserError::Config(message) => UserError::Config(flag_message(&message, &prefix)),
            other => other,
        })?;
        config.from_command_line = true;
        Ok(config)
    }

    /// Every column of an item, in output order: `page` aside, the
    /// listing's fields, then the detail stage's (see
    /// [`detail::Detail::extra_columns`]).
    pub fn columns(&self) -> Vec<String> {
        let mut columns = self.fields.clone();
        if let Some(detail) = &self.detail {
            columns.extend(detail.extra_columns().map(str::to_string));
        }
        columns
    }

    /// The URL of one page.
    pub fn page_url(&self, page: u64) -> String {
        self.url.replace("{page}", &page.to_string())
    }

    /// The state directory used when neither `--state-dir` nor
    /// `$STATE_DIRECTORY` names one: `NAME.state` beside `NAME.toml`.
    /// The job's name in the `store` database: `job`, else the config
    /// file's name without its extension.
    pub fn job_name(&self) -> String {
        self.job.clone().unwrap_or_else(|| {
            self.source
                .file_stem()
                .map_or("pagecrawl".into(), |s| s.to_string_lossy().into_owned())
        })
    }

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

/// The synthetic config file name of a one-shot `run --url ...`.
const COMMAND_LINE_NAME: &str = "pagecrawl.toml";

/// A config message about the synthetic file, said about the flags:
/// `key 'pages': ...` becomes `--pages: ...`.
fn flag_message(message: &str, prefix: &str) -> String {
    let rest = message.strip_prefix(prefix).unwrap_or(message);
    for key in ["url", "pages", "pattern", "output"] {
        if let Some(why) = rest.strip_prefix(&format!("key '{key}': ")) {
            return format!("--{key}: {why}");
        }
    }
    format!("--url/--pages/--pattern: {rest}")
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

    /// MINIMAL with the line of `key` replaced by `line`.
    fn with_line(key: &str, line: &str) -> String {
        MINIMAL
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} =")))
            .chain(std::iter::once(line))
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn unknown_and_missing_keys_are_named_with_their_line() {
        let err = parse(&format!("{MINIMAL}\ncolour = 3\n")).unwrap_err();
        assert_eq!(
            err,
            "config /etc/job.toml: line 6: unknown key 'colour'; the keys are listed in README.md, \
             \"Configuration\", and `pagecrawl init NAME` writes a config with every key"
        );
        let err = parse("pages = \"1..\"\npattern = '(?P<a>x)'").unwrap_err();
        assert_eq!(
            err,
            "config /etc/job.toml: key 'url' is missing; add a line such as url = \"https://example.com/list?page={page}\""
        );
        assert!(
            !err.contains(": line"),
            "a missing key is on no line: {err}"
        );
    }

    /// The messages of issue 15.1, word for word: each says what to write.
    #[test]
    fn config_errors_say_what_to_write() {
        let cases = [
            (
                "concurency = 4",
                "line 5: unknown key 'concurency'; did you mean 'concurrency'?",
            ),
            (
                "Rate-Limit = 4",
                "line 5: unknown key 'Rate-Limit'; did you mean 'rate_limit'?",
            ),
            (
                "request_timeout = 30",
                "line 5: key 'request_timeout' takes a duration in quotes, not the number 30; write request_timeout = \"30s\"",
            ),
            (
                "backoff = 0.25",
                "line 5: key 'backoff' takes a duration in quotes, not the number 0.25; write backoff = \"250ms\"",
            ),
            (
                "pages = 295",
                "line 4: key 'pages' takes a page range in quotes, not the number 295; write pages = \"1..=295\"",
            ),
            (
                "concurrency = \"8\"",
                "line 5: key 'concurrency' takes a whole number without quotes, not the string \"8\"; write concurrency = 8",
            ),
            (
                "rate_limit = \"0.5\"",
                "line 5: key 'rate_limit' takes a number without quotes, not the string \"0.5\"; write rate_limit = 5",
            ),
            (
                "robots = \"no\"",
                "line 5: key 'robots' takes true or false, without quotes, not the string \"no\"; write robots = true",
            ),
            (
                "max_body_size = 2048",
                "line 5: key 'max_body_size' takes a size in quotes, not the number 2048; write max_body_size = \"2048\"",
            ),
            (
                r#"pattern = "<td>(?P<id>\d+)\.</td>""#,
                r#"line 4: in double quotes a backslash starts a TOML escape (\n, \t...), so a regex's \d or \. is refused; write the value in single quotes, a TOML literal string where \ is an ordinary character: pattern = '<td>(?P<id>\d+)\.</td>'"#,
            ),
            (
                "headers = { Cookie = 5 }",
                "line 5: key 'headers' holds a value that is not a string; write each entry as Name = \"value\", e.g. headers = { Accept-Language = \"en\", Cookie = \"session=abc\" }",
            ),
            (
                "pages = \"5..1\"",
                "key 'pages': '5..1' is an empty page range: the end is before the start; write \"1..=5\"",
            ),
            (
                "pages = \"0..=5\"",
                "key 'pages': '0..=5' holds page 0, and pages are numbered from 1; write \"1..=5\"",
            ),
        ];
        for (line, expected) in cases {
            let key = line.split(' ').next().unwrap();
            let err = parse(&with_line(key, line)).unwrap_err();
            assert_eq!(err, format!("config /etc/job.toml: {expected}"), "{line}");
        }
    }

    /// Issue 11.7: each value is checked into its documented range, with one
    /// line that says what to write.
    #[test]
    fn every_value_is_checked_into_its_range() {
        let huge = "a".repeat(MAX_USER_AGENT_BYTES + 1);
        let cases = [
            ("rate_limit = 1e-300", "key 'rate_limit': 1e-300 is out of range; write requests per second from 0.0001 to 10000 (0.5 is one request every 2 s)"),
            ("rate_limit = 20000", "key 'rate_limit': 20000 is out of range"),
            ("rate_limit = nan", "key 'rate_limit': NaN is out of range"),
            ("request_timeout = \"18446744073709551615s\"", "key 'request_timeout': '18446744073709551615s' is out of range; write a duration from 1ms to 24h, e.g. \"500ms\", \"30s\", \"10m\""),
            ("connect_timeout = \"0s\"", "key 'connect_timeout': '0s' is out of range; write a duration from 1ms to 1h"),
            ("request_timeout = \"0s\"", "key 'request_timeout': '0s' is out of range"),
            ("stop_grace = \"2h\"", "key 'stop_grace': '2h' is out of range; write a duration from 0s to 1h"),
            ("commit_interval = \"1000000h\"", "key 'commit_interval': '1000000h' is out of range"),
            ("max_backoff = \"25h\"", "key 'max_backoff': '25h' is out of range"),
            ("follow = \"10ms\"\nkey = \"url\"", "key 'follow': '10ms' is out of range; write a duration from 100ms to 365d, e.g. \"500ms\", \"30s\", \"10m\""),
            ("headers = { X = \"a\\r\\nb\" }", "key 'headers': the value of 'X', 'a\\r\\nb', holds a character not allowed in an HTTP header (a line break or another control character); write one line of text"),
            ("headers = { \"X\\r\\nY\" = \"a\" }", "key 'headers': 'X\\r\\nY' is not a valid HTTP header name"),
            ("url = \"http://127.0.0.1:99999/p{page}\"", "key 'url': 'http://127.0.0.1:99999/p{page}' has port 99999; a port is from 1 to 65535"),
            ("url = \"http://127.0.0.1:0/p{page}\"", "has port 0"),
            ("url = \"http://x/\\n{page}\"", "key 'url': 'http://x/\\n{page}' is not an http:// or https:// URL"),
            ("output = \"\"", "key 'output': '' is not a file path; write a file path such as \"items.jsonl\" (relative to the config file), or remove the line to write into the state directory"),
            ("output = \"out/\"", "key 'output': 'out/' is not a file path"),
            ("output = \"..\"", "key 'output': '..' is not a file path"),
            ("output = \"/\"", "key 'output': '/' is not a file path"),
            ("output = \"a\\u0000b\"", "key 'output': 'a\\0b' is not a file path"),
            ("pattern = '(?P<a>x*)'", "key 'pattern': can match the empty string, which would write an empty item at every position of every page; make it need at least one character, e.g. x+ instead of x*"),
            ("pattern = '\\b(?P<a>x?)'", "can match the empty string"),
            ("pages = \"18446744073709551614..\"", "key 'pages': '18446744073709551614..': page 18446744073709551614 is past the largest page number, 1000000000000000"),
            ("pages = \"0\"", "key 'pages': '0' holds page 0, and pages are numbered from 1; write \"1\""),
            ("max_body_size = \"2GiB\"", "key 'max_body_size': '2GiB' is not a size from 1 byte to 1GiB"),
            ("concurrency = 5000", "key 'concurrency': 5000 is out of range; write a whole number from 1 to 1024"),
        ];
        for (line, expected) in cases {
            let key = line.split(' ').next().unwrap();
            let err = parse(&with_line(key, line)).unwrap_err();
            assert!(
                err.starts_with(&format!("config /etc/job.toml: {expected}"))
                    || err.contains(expected),
                "{line}: {err}"
            );
            assert!(!err.contains(['\n', '\r']), "one line: {err}");
        }
        let err = parse(&with_line(
            "user_agent",
            &format!("user_agent = \"{huge}\""),
        ))
        .unwrap_err();
        assert!(
            err.contains("key 'user_agent'")
                && err.contains("is 1025 bytes long; write at most 1024 bytes"),
            "{err}"
        );
        assert!(
            err.len() < 300,
            "the value is cut short in the message: {err}"
        );
        let big_header = format!(
            "headers = {{ Cookie = \"{}\" }}",
            "c".repeat(MAX_HEADER_BYTES)
        );
        let err = parse(&with_line("headers", &big_header)).unwrap_err();
        assert!(
            err.contains("bytes long; write at most 8186 bytes"),
            "{err}"
        );
        let many: Vec<String> = (0..=MAX_HEADERS)
            .map(|i| format!("X-{i} = \"v\""))
            .collect();
        let err = parse(&with_line(
            "headers",
            &format!("headers = {{ {} }}", many.join(", ")),
        ))
        .unwrap_err();
        assert!(err.contains("holds 65 headers; write at most 64"), "{err}");
    }

    #[test]
    fn the_largest_values_in_range_are_accepted() {
        let text = format!(
            "{MINIMAL}\nrate_limit = 0.0001\nrequest_timeout = \"24h\"\nconnect_timeout = \"1h\"\n\
             max_backoff = \"24h\"\nbackoff = \"24h\"\nstop_grace = \"1h\"\ncommit_interval = \"0s\"\n\
             user_agent = \"{}\"\nmax_body_size = \"1GiB\"\n",
            "u".repeat(MAX_USER_AGENT_BYTES)
        )
        .replace("pages = \"1..=295\"", "pages = \"1000000000000000..\"");
        let config = parse(&text).unwrap();
        assert_eq!(config.request_timeout, Duration::from_secs(86_400));
        assert_eq!(
            config.pages,
            PageRange::Open {
                start: crate::range::MAX_PAGE
            }
        );
    }

    #[test]
    fn a_config_file_is_a_regular_file_of_at_most_one_mebibyte() {
        let dir = tempfile::tempdir().unwrap();
        let err = Config::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "cannot read config file /dev/zero: it is not a regular file (a directory, device or pipe); pass a TOML file with --config"
        );
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
        let big = dir.path().join("big.toml");
        let padding = "#".repeat(MAX_CONFIG_BYTES as usize);
        std::fs::write(&big, format!("{MINIMAL}{padding}")).unwrap();
        let err = Config::load(&big).unwrap_err().to_string();
        assert!(err.ends_with("it is larger than 1024 KiB, and a job's config is a few lines of TOML; pass the job's config with --config"), "{err}");
        let binary = dir.path().join("binary.toml");
        std::fs::write(&binary, b"url = \"\xff\"").unwrap();
        let err = Config::load(&binary).unwrap_err().to_string();
        assert!(
            err.ends_with("it is not UTF-8 text; save it as UTF-8"),
            "{err}"
        );
        let exact = dir.path().join("exact.toml");
        let text = format!("{MINIMAL}#");
        let pad = "#".repeat(MAX_CONFIG_BYTES as usize - text.len());
        std::fs::write(&exact, format!("{text}{pad}")).unwrap();
        assert!(Config::load(&exact).is_ok(), "1 MiB exactly is read");
    }

    #[test]
    fn a_multi_line_toml_error_becomes_one_line() {
        // Found by `cargo fuzz run config`: "[l." gave a two-line message.
        let err = parse("[l.\n").unwrap_err();
        assert!(!err.contains('\n') && err.contains("line 1"), "{err}");
    }

    #[test]
    fn control_characters_in_any_quoted_value_are_escaped() {
        // Found by CI's proptest run: a multi-line metrics_listen value
        // split the error in two. Each key whose value a message quotes.
        for (line, shows) in [
            (
                "metrics_listen = \"\"\"\n\n1.2.3.4:x\r\n\"\"\"",
                "'\\n1.2.3.4:x\\n'",
            ),
            ("pages = \"1..\\u000d0\"", "'1..\\r0'"),
            ("charset = \"a\\u001b[2Jb\"", "'a\\u{1b}[2Jb'"),
        ] {
            let text = MINIMAL
                .lines()
                .filter(|l| !l.starts_with(line.split(' ').next().unwrap()))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
                + line;
            let err = parse(&text).unwrap_err();
            assert!(!err.contains(['\n', '\r', '\u{1b}']), "{err}");
            assert!(err.contains(shows), "{err} lacks {shows}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 1024, ..Default::default() })]

        /// Any text, and a valid config with a few characters put in or
        /// cut out (TOML syntax errors anywhere, in multi-byte text), is
        /// refused in one line or parses: explaining the error never panics.
        #[test]
        fn broken_toml_is_explained_in_one_line(
            edits in proptest::collection::vec((0usize..400, "\\PC{0,3}", 0usize..3), 1..4),
            noise in "\\PC{0,60}",
        ) {
            let mut text = format!("{MINIMAL}user_agent = \"é—ü\"\nheaders = {{ A = \"b\" }}\n");
            for (at, insert, cut) in edits {
                let mut at = at.min(text.len());
                while !text.is_char_boundary(at) {
                    at -= 1;
                }
                let mut end = (at + cut).min(text.len());
                while !text.is_char_boundary(end) {
                    end += 1;
                }
                text.replace_range(at..end, &insert);
            }
            for candidate in [text.as_str(), noise.as_str()] {
                if let Err(e) = Config::parse(candidate, Path::new("/etc/job.toml")) {
                    let message = e.to_string();
                    proptest::prop_assert!(!message.contains(['\n', '\r']), "{message}");
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2048, ..Default::default() })]

        /// Arbitrary values for every key never panic the parser; a refusal
        /// is one line naming the file, and a config that parses holds only
        /// values in their documented ranges.
        #[test]
        fn arbitrary_values_for_every_key_are_refused_in_one_line_or_in_range(text in arbitrary::config_text()) {
            match Config::parse(&text, Path::new("/etc/job.toml")) {
                Err(e) => {
                    let message = e.to_string();
                    proptest::prop_assert!(message.starts_with("config /etc/job.toml: "), "{message}");
                    proptest::prop_assert!(!message.contains(['\n', '\r']), "{message}");
                }
                Ok(config) => {
                    let (slowest, fastest) = RATE_LIMIT_RANGE;
                    proptest::prop_assert!(config.rate_limit.is_none_or(|r| (slowest..=fastest).contains(&r)));
                    let day = Duration::from_secs(86_400);
                    for d in [config.request_timeout, config.connect_timeout, config.backoff, config.max_backoff, config.commit_interval, config.stop_grace] {
                        proptest::prop_assert!(d <= day, "{d:?}");
                    }
                    proptest::prop_assert!(!config.request_timeout.is_zero() && !config.connect_timeout.is_zero());
                    proptest::prop_assert!(config.follow.is_none_or(|f| f >= Duration::from_millis(100) && f <= Duration::from_secs(365 * 86_400)));
                    let (start, end) = match config.pages {
                        PageRange::Closed { start, end } => (start, end),
                        PageRange::Open { start } => (start, start),
                    };
                    proptest::prop_assert!(1 <= start && start <= end && end <= crate::range::MAX_PAGE);
                    proptest::prop_assert!((1..=MAX_BODY_SIZE).contains(&config.max_body_size));
                    proptest::prop_assert!(config.user_agent.len() <= MAX_USER_AGENT_BYTES);
                    proptest::prop_assert!(config.headers.len() <= MAX_HEADERS);
                    proptest::prop_assert!(!config.pattern.is_match(""));
                    proptest::prop_assert!(config.output.as_ref().is_none_or(|o| o.file_name().is_some()));
                }
            }
        }
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
