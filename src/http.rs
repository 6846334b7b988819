//! Fetching one page over HTTP with ureq, and sorting what can go wrong into
//! retryable and permanent failures.
//!
//! ureq 3 sets no timeouts and never retries by default: the agent here gets
//! a connect timeout and a whole-request timeout (which also bounds a server
//! that drips one byte a second), reads 4xx/5xx as responses so `Retry-After`
//! can be read, and keeps as many idle connections per host as there are
//! fetch threads, so keep-alive actually serves every thread.

use std::time::{Duration, SystemTime};

use ureq::unversioned::transport::Connector;

use crate::config::Config;
use crate::robots::Robots;

/// A page's body and what the server said about it.
#[derive(Debug)]
pub struct Response {
    pub body: Vec<u8>,
    pub content_type: Option<String>,
}

/// Why a fetch failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The server answered with a status other than 2xx (after redirects).
    #[error("HTTP {status}")]
    Status {
        status: u16,
        retry_after: Option<Duration>,
    },
    /// Connecting or the whole request took longer than its timeout.
    #[error("timed out ({0})")]
    Timeout(String),
    /// The connection could not be made, or broke before a response came.
    #[error("connection failed: {0}")]
    Connection(String),
    /// The body ended before its declared length, or was malformed on the
    /// wire.
    #[error("body cut short: {0}")]
    Truncated(String),
    /// The body was larger than `max_body_size`; reading stopped there.
    #[error("body larger than max_body_size ({0} bytes)")]
    TooLarge(u64),
    /// A 2xx whose `Content-Type` is not text (an image, a download).
    #[error("unexpected content type {0} (not text)")]
    ContentType(String),
    /// robots.txt disallows the page.
    #[error("disallowed by robots.txt")]
    Robots,
    /// A redirect that is not followed: a loop (more than
    /// [`MAX_REDIRECTS`]), another host, no usable `Location`.
    #[error("{0}")]
    Redirect(String),
    /// Anything else retrying cannot fix: a bad URL, TLS.
    #[error("{0}")]
    Permanent(String),
}

impl FetchError {
    /// Whether another attempt may succeed: timeouts, broken connections,
    /// cut-short bodies, 5xx, 408 and 429.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            FetchError::Timeout(_) | FetchError::Connection(_) | FetchError::Truncated(_) => true,
            FetchError::TooLarge(_)
            | FetchError::ContentType(_)
            | FetchError::Robots
            | FetchError::Redirect(_)
            | FetchError::Permanent(_) => false,
        }
    }

    /// A short reason for grouping failures: `HTTP 503`, `timeout`...
    pub fn kind(&self) -> String {
        match self {
            FetchError::Status { status, .. } => format!("HTTP {status}"),
            FetchError::Timeout(_) => "timeout".into(),
            FetchError::Connection(_) => "connection".into(),
            FetchError::Truncated(_) => "truncated body".into(),
            FetchError::TooLarge(_) => "body too large".into(),
            FetchError::ContentType(_) => "content type".into(),
            FetchError::Robots => "robots.txt".into(),
            FetchError::Redirect(_) => "redirect".into(),
            FetchError::Permanent(_) => "other".into(),
        }
    }

    /// How long the server asked us to wait, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            FetchError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// The HTTP client shared by all fetch threads.
pub struct Fetcher {
    agent: ureq::Agent,
    headers: Vec<(String, String)>,
    max_body_size: u64,
}

impl Fetcher {
    pub fn new(config: &Config) -> Fetcher {
        let pool = config.concurrency.max(3);
        let agent_config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(config.connect_timeout))
            .timeout_global(Some(config.request_timeout))
            .max_idle_connections_per_host(pool)
            .max_idle_connections(pool * 2)
            // Redirects are followed by `fetch`, same host only.
            .max_redirects(0)
            .max_redirects_will_error(false)
            .user_agent(config.user_agent.as_str())
            .build();
        let agent = ureq::Agent::with_parts(
            agent_config,
            ureq::unversioned::transport::DefaultConnector::default().chain(crate::transport::Lean),
            crate::dns::CachingResolver::default(),
        );
        Fetcher {
            agent,
            headers: config.headers.clone(),
            max_body_size: config.max_body_size,
        }
    }

    /// Fetches `url`; a 2xx text body no larger than the limit, or why not.
    /// Redirects are followed (at most [`MAX_REDIRECTS`]) only within the
    /// same host: the politeness caps are per host, and a listing that
    /// redirects elsewhere is not the listing that was configured.
    pub fn fetch(&self, url: &str) -> Result<Response, FetchError> {
        let host = host_of(url);
        let mut current = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = self.agent.get(&current);
            for (name, value) in &self.headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let mut response = request
                .call()
                .map_err(|e| classify(e, self.max_body_size))?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let location = header("location").ok_or_else(|| {
                    FetchError::Redirect(format!("HTTP {status} redirect without a Location"))
                })?;
                let next = resolve(&current, &location).ok_or_else(|| {
                    FetchError::Redirect(format!("redirect to an unusable location '{location}'"))
                })?;
                if host_of(&next) != host {
                    return Err(FetchError::Redirect(format!(
                        "redirect to another host ({}) refused",
                        host_of(&next).unwrap_or_default()
                    )));
                }
                current = next;
                continue;
            }
            if !(200..300).contains(&status) {
                let retry_after =
                    header("retry-after").and_then(|v| parse_retry_after(&v, SystemTime::now()));
                return Err(FetchError::Status {
                    status,
                    retry_after,
                });
            }
            let content_type = header("content-type");
            if let Some(kind) = content_type.as_deref().filter(|t| !is_text(t)) {
                return Err(FetchError::ContentType(
                    kind.split(';').next().unwrap_or(kind).trim().to_string(),
                ));
            }
            let body = read_body(response.body_mut(), self.max_body_size)?;
            return Ok(Response { body, content_type });
        }
        Err(FetchError::Redirect(format!(
            "more than {MAX_REDIRECTS} redirects (a redirect loop?)"
        )))
    }

    /// robots.txt for the site of `url`: its rules, or allow-all when there
    /// is none (4xx) or it cannot be read (logged), as Scrapy and wget do.
    pub fn robots(&self, url: &str, agent: &str) -> Robots {
        let Some(robots_url) = crate::robots::robots_url(url) else {
            return Robots::allow_all();
        };
        match self.fetch(&robots_url) {
            Ok(response) => Robots::parse(&String::from_utf8_lossy(&response.body), agent),
            Err(FetchError::Status { status, .. }) if (400..500).contains(&status) => {
                Robots::allow_all()
            }
            Err(error) => {
                log::warn!(
                    "cannot read {robots_url} ({error}); crawling as if it allowed everything"
                );
                Robots::allow_all()
            }
        }
    }
}

/// Reads a body of at most `limit` bytes into a buffer sized from its
/// `Content-Length` (so a 20 KB page is one allocation, not a growing one).
fn read_body(body: &mut ureq::Body, limit: u64) -> Result<Vec<u8>, FetchError> {
    use std::io::Read;
    let expected = body.content_length().unwrap_or(0).min(limit).min(16 << 20) as usize;
    let mut buffer = Vec::with_capacity(expected.max(8 << 10));
    body.with_config()
        .limit(limit)
        .reader()
        .read_to_end(&mut buffer)
        .map_err(|e| classify(ureq::Error::Io(e), limit))?;
    Ok(buffer)
}

/// Redirects followed before a page fails.
pub const MAX_REDIRECTS: usize = 5;

/// Whether a `Content-Type` is something a pattern can be run on.
fn is_text(content_type: &str) -> bool {
    let mime = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime.is_empty()
        || mime.starts_with("text/")
        || mime.ends_with("+xml")
        || mime.ends_with("+json")
        || matches!(
            mime.as_str(),
            "application/json"
                | "application/xml"
                | "application/javascript"
                | "application/x-javascript"
        )
}

/// The host (lower-case, without port) of an absolute URL.
fn host_of(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    uri.host().map(str::to_ascii_lowercase)
}

/// Resolves a `Location` against the URL it came from.
fn resolve(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.starts_with("http://") || location.starts_with("https://") {
        return Some(location.to_string());
    }
    let uri: ureq::http::Uri = base.parse().ok()?;
    let scheme = uri.scheme_str()?;
    let authority = uri.authority()?.as_str();
    if let Some(rest) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Some(format!("{scheme}://{authority}{location}"));
    }
    let path = uri.path();
    let folder = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let folder = if folder.is_empty() { "/" } else { folder };
    Some(format!("{scheme}://{authority}{folder}{location}"))
}

/// Sorts a ureq error into a [`FetchError`].
fn classify(error: ureq::Error, limit: u64) -> FetchError {
    match error {
        ureq::Error::Timeout(which) => FetchError::Timeout(which.to_string()),
        ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge(limit),
        ureq::Error::Io(io) => {
            // ureq wraps its own errors in io::Error inside body readers.
            if let Some(inner) = io.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>()) {
                return match inner {
                    ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge(limit),
                    ureq::Error::Timeout(which) => FetchError::Timeout(which.to_string()),
                    other => FetchError::Truncated(other.to_string()),
                };
            }
            match io.kind() {
                std::io::ErrorKind::UnexpectedEof => {
                    FetchError::Truncated(crate::util::io_reason(&io))
                }
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => {
                    FetchError::Timeout(crate::util::io_reason(&io))
                }
                _ => FetchError::Connection(crate::util::io_reason(&io)),
            }
        }
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound => {
            FetchError::Connection(error.to_string())
        }
        ureq::Error::Protocol(_) => FetchError::Truncated(error.to_string()),
        other => FetchError::Permanent(other.to_string()),
    }
}

/// `Retry-After` as seconds or an HTTP date; at most an hour is honoured.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    const MAX: Duration = Duration::from_secs(3600);
    let value = value.trim();
    let wait = match value.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => httpdate::parse_http_date(value)
            .ok()?
            .duration_since(now)
            .unwrap_or(Duration::ZERO),
    };
    Some(wait.min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("7", now), Some(Duration::from_secs(7)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("999999", now),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn redirect_locations_resolve_against_the_page() {
        let base = "http://h:8/a/b.php?page=2";
        assert_eq!(
            resolve(base, "/x?page=3").as_deref(),
            Some("http://h:8/x?page=3")
        );
        assert_eq!(
            resolve(base, "c.php").as_deref(),
            Some("http://h:8/a/c.php")
        );
        assert_eq!(
            resolve(base, "//other/x").as_deref(),
            Some("http://other/x")
        );
        assert_eq!(resolve(base, "https://o/y").as_deref(), Some("https://o/y"));
        assert_eq!(
            host_of("http://Example.COM:80/x").as_deref(),
            Some("example.com")
        );
    }

    #[test]
    fn text_content_types() {
        for ok in [
            "text/html",
            "text/html; charset=gbk",
            "application/json",
            "application/rss+xml",
            "",
        ] {
            assert!(is_text(ok), "{ok}");
        }
        for bad in ["image/png", "application/octet-stream", "application/pdf"] {
            assert!(!is_text(bad), "{bad}");
        }
    }

    #[test]
    fn which_failures_are_retried() {
        let status = |status| FetchError::Status {
            status,
            retry_after: None,
        };
        assert!(
            status(500).retryable()
                && status(503).retryable()
                && status(429).retryable()
                && status(408).retryable()
        );
        assert!(!status(404).retryable() && !status(403).retryable());
        assert!(FetchError::Timeout("global".into()).retryable());
        assert!(!FetchError::TooLarge(10).retryable());
        assert_eq!(status(404).kind(), "HTTP 404");
    }
}
