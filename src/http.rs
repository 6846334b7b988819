//! Fetching one page over HTTP with ureq, and sorting what can go wrong into
//! retryable and permanent failures.
//!
//! ureq 3 sets no timeouts and never retries by default: the agent here gets
//! a connect timeout and a whole-request timeout (which also bounds a server
//! that drips one byte a second), reads 4xx/5xx as responses so `Retry-After`
//! can be read, and keeps as many idle connections per host as there are
//! fetch threads, so keep-alive actually serves every thread.

use std::time::{Duration, SystemTime};

use crate::config::Config;

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
    /// Anything retrying cannot fix: too many redirects, a bad URL, TLS.
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
            FetchError::TooLarge(_) | FetchError::Permanent(_) => false,
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
            .max_redirects(5)
            .user_agent(config.user_agent.as_str())
            .build();
        Fetcher {
            agent: ureq::Agent::new_with_config(agent_config),
            headers: config.headers.clone(),
            max_body_size: config.max_body_size,
        }
    }

    /// Fetches `url`; a 2xx body no larger than the limit, or why not.
    pub fn fetch(&self, url: &str) -> Result<Response, FetchError> {
        let mut request = self.agent.get(url);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let mut response = request
            .call()
            .map_err(|e| classify(e, self.max_body_size))?;
        let status = response.status().as_u16();
        if !(200..300).contains(&status) {
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            return Err(FetchError::Status {
                status,
                retry_after,
            });
        }
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = response
            .body_mut()
            .with_config()
            .limit(self.max_body_size)
            .read_to_vec()
            .map_err(|e| classify(e, self.max_body_size))?;
        Ok(Response { body, content_type })
    }
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
