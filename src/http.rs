//! Fetching one page over HTTP with ureq, and sorting what can go wrong into
//! retryable and permanent failures.
//!
//! ureq 3 sets no timeouts and never retries by default: the agent here gets
//! a connect timeout and a whole-request timeout (which also bounds a server
//! that drips one byte a second), reads 4xx/5xx as responses so `Retry-After`
//! can be read, and keeps as many idle connections per host as there are
//! fetch threads, so keep-alive actually serves every thread.

use std::time::{Duration, Instant, SystemTime};

use ureq::unversioned::transport::Connector;

use crate::config::Config;
use crate::robots::Robots;
use crate::transport::ClosedBeforeAnswer;

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
    /// The response head had more header lines than the client parses
    /// (128): a broken or hostile server; the same answer comes again.
    #[error("too many headers in the response")]
    TooManyHeaders,
    /// A compressed body (`Content-Encoding: gzip` or `br`) that does not
    /// decompress: the server sends the same bytes again.
    #[error("corrupt {encoding} body: {detail}")]
    CorruptBody {
        encoding: &'static str,
        detail: String,
    },
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
    /// The server's certificate was refused: what is wrong with it and
    /// which setting trusts it ([`certificate_refused`]).
    #[error("{0}")]
    Certificate(String),
    /// A detail page on which the `[detail]` pattern matches nothing.
    #[error("the detail pattern matches nothing on the page")]
    NoMatch,
    /// A detail link to a host other than the listing's, not listed in
    /// `[detail] hosts`: never fetched.
    #[error("{0}")]
    OffSite(String),
    /// Anything else retrying cannot fix: a bad URL, another TLS error.
    #[error("{0}")]
    Permanent(String),
    /// The crawl stopped while a request waited to be sent again (after a
    /// redirect, or on a new connection): nothing was tried.
    #[error("the crawl stopped before the request was sent")]
    Abandoned,
}

impl FetchError {
    /// Whether another attempt may succeed: timeouts, broken connections,
    /// cut-short bodies, 5xx, 408 and 429.
    pub fn retryable(&self) -> bool {
        match self {
            FetchError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            FetchError::Timeout(_)
            | FetchError::Connection(_)
            | FetchError::Truncated(_)
            | FetchError::Abandoned => true,
            FetchError::TooLarge(_)
            | FetchError::TooManyHeaders
            | FetchError::CorruptBody { .. }
            | FetchError::ContentType(_)
            | FetchError::Robots
            | FetchError::Redirect(_)
            | FetchError::Certificate(_)
            | FetchError::NoMatch
            | FetchError::OffSite(_)
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
            FetchError::TooManyHeaders => "too many headers".into(),
            FetchError::CorruptBody { encoding, .. } => format!("corrupt {encoding} body"),
            FetchError::TooLarge(_) => "body too large".into(),
            FetchError::ContentType(_) => "content type".into(),
            FetchError::Robots => "robots.txt".into(),
            FetchError::Redirect(_) => "redirect".into(),
            FetchError::Certificate(_) => "certificate".into(),
            FetchError::NoMatch => "no match".into(),
            FetchError::OffSite(_) => "other host".into(),
            FetchError::Permanent(_) => "other".into(),
            FetchError::Abandoned => "abandoned".into(),
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
    request_timeout: Duration,
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
            .tls_config(tls_config(config))
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
            request_timeout: config.request_timeout,
        }
    }

    /// Fetches `url`; a 2xx text body no larger than the limit, or why not.
    /// Redirects are followed (at most [`MAX_REDIRECTS`]) only within the
    /// same origin: the politeness caps are per host, and a listing that
    /// redirects elsewhere is not the listing that was configured.
    pub fn fetch(&self, url: &str) -> Result<Response, FetchError> {
        self.fetch_paced(url, &mut || true, &mut |_| {})
    }

    /// [`fetch`](Self::fetch), calling `pace` before each request after the
    /// first (a redirect followed, a request sent again on a new
    /// connection), so each one counts toward the rate limit as the first
    /// did; `pace` returns false when the crawl stops. `on_status` is told
    /// the status of each response (for the metrics).
    pub fn fetch_paced(
        &self,
        url: &str,
        pace: &mut dyn FnMut() -> bool,
        on_status: &mut dyn FnMut(u16),
    ) -> Result<Response, FetchError> {
        let origin = origin_of(url);
        let mut current = url.to_string();
        for hop in 0..=MAX_REDIRECTS {
            if hop > 0 && !pace() {
                return Err(FetchError::Abandoned);
            }
            let started = Instant::now();
            let mut response = match self.send(&current, None) {
                Err(error) if ClosedBeforeAnswer::is(&error) => {
                    // Once, on a new connection, within what is left of
                    // the request's time; not a retry: the server never
                    // saw the request.
                    log::debug!("{current}: {error}; sent again on a new connection");
                    if !pace() {
                        return Err(FetchError::Abandoned);
                    }
                    let left = self.request_timeout.saturating_sub(started.elapsed());
                    self.send(&current, Some(left))
                }
                sent => sent,
            }
            .map_err(|e| classify(e, self.max_body_size))?;
            let status = response.status().as_u16();
            on_status(status);
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
                let next = resolve(&current, &location).map_err(FetchError::Redirect)?;
                if origin_of(&next) != origin {
                    return Err(FetchError::Redirect(format!(
                        "redirect to another host ({}) refused",
                        origin_of(&next).unwrap_or_default()
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

    /// One GET of `url`; with `fresh_within`, on a new connection and
    /// within that time.
    fn send(
        &self,
        url: &str,
        fresh_within: Option<Duration>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let mut request = self.agent.get(url);
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        match fresh_within {
            None => request.call(),
            Some(left) => request
                .config()
                // No pooled connection is young enough: a new one is made.
                .max_idle_age(Duration::ZERO)
                .timeout_global(Some(left))
                .build()
                .call(),
        }
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

/// Trust as curl and wget do: the system's store (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` when set, else the distribution's bundle), plus the
/// config's `ca_file`; or nothing checked with `tls_insecure_skip_verify`.
fn tls_config(config: &Config) -> ureq::tls::TlsConfig {
    let builder = ureq::tls::TlsConfig::builder();
    if config.tls_insecure_skip_verify {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            log::warn!(
                "tls_insecure_skip_verify = true: server certificates are not checked, so anyone \
                 between this host and the site can read and change what is crawled; set ca_file \
                 to the site's CA instead"
            )
        });
        return builder.disable_verification(true).build();
    }
    let mut roots: Vec<ureq::tls::Certificate<'static>> = system_roots().to_vec();
    roots.extend(
        config
            .ca_certs
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der).to_owned()),
    );
    if roots.is_empty() {
        // No system store at all (a bare container): Mozilla's roots,
        // which ureq carries.
        return builder.root_certs(ureq::tls::RootCerts::WebPki).build();
    }
    builder.root_certs(roots.into()).build()
}

/// The system's trust store, read once: `SSL_CERT_FILE` and `SSL_CERT_DIR`
/// when set (as OpenSSL reads them), else the distribution's bundle
/// (`/etc/ssl/certs/ca-certificates.crt` on Debian).
fn system_roots() -> &'static [ureq::tls::Certificate<'static>] {
    static ROOTS: std::sync::OnceLock<Vec<ureq::tls::Certificate<'static>>> =
        std::sync::OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in found.errors.iter().take(3) {
            log::debug!("reading the system's trust store: {error}");
        }
        if found.certs.is_empty() {
            log::warn!(
                "no CA certificates found in the system's trust store (SSL_CERT_FILE, \
                 SSL_CERT_DIR, /etc/ssl/certs); HTTPS uses Mozilla's roots built into pagecrawl"
            );
        }
        found
            .certs
            .iter()
            .map(|der| ureq::tls::Certificate::from_der(der.as_ref()).to_owned())
            .collect()
    })
}

/// The rustls error inside an I/O error, if there is one.
fn tls_error(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// One line for a refused certificate: what is wrong, and which setting
/// makes it trusted.
pub fn certificate_refused(error: &rustls::CertificateError) -> String {
    use rustls::CertificateError as E;
    let what = match error {
        E::UnknownIssuer => "is not trusted (issuer unknown)".to_string(),
        E::Expired | E::ExpiredContext { .. } => "has expired".to_string(),
        E::NotValidYet | E::NotValidYetContext { .. } => {
            "is not valid yet (check this host's clock)".to_string()
        }
        E::NotValidForName | E::NotValidForNameContext { .. } => {
            "is not valid for this host name".to_string()
        }
        E::Other(other) if other.to_string().contains("CaUsedAsEndEntity") => {
            "is a CA certificate, not one issued for the site (CaUsedAsEndEntity)".to_string()
        }
        other => format!("is refused ({other:?})"),
    };
    format!(
        "the server's certificate {what}: if the site uses a private CA, set ca_file = \
         \"/path/ca.pem\" (or SSL_CERT_FILE); to crawl without checking certificates \
         (insecure), set tls_insecure_skip_verify = true"
    )
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

/// The host (lower-case) and port of an absolute URL, the port left out
/// when it is the scheme's default: what a redirect must keep. So
/// `http://h/` to `https://h/` stays on the site, `h:8080` does not.
fn origin_of(url: &str) -> Option<String> {
    let uri: ureq::http::Uri = url.parse().ok()?;
    let host = uri.host()?.to_ascii_lowercase();
    let default_port = match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => 443,
        _ => 80,
    };
    Some(match uri.port_u16() {
        Some(port) if port != default_port => format!("{host}:{port}"),
        _ => host,
    })
}

/// The scheme a URL reference starts with, if it has one (RFC 3986: a
/// letter, then letters, digits, `+`, `-` or `.`, then `:`).
fn scheme_of(reference: &str) -> Option<&str> {
    let (scheme, _) = reference.split_once(':')?;
    let mut chars = scheme.chars();
    let valid = chars.next()?.is_ascii_alphabetic()
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    valid.then_some(scheme)
}

/// Resolves a `Location` against the URL it came from; why not when it
/// cannot be followed (another scheme than HTTP(S), a base that is not a
/// URL).
fn resolve(base: &str, location: &str) -> Result<String, String> {
    let location = location.trim();
    if let Some(scheme) = scheme_of(location) {
        if scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https") {
            return Ok(location.to_string());
        }
        return Err(format!(
            "redirect to a non-HTTP URL ({}:) refused",
            scheme.to_ascii_lowercase()
        ));
    }
    let unusable = || {
        format!(
            "redirect to an unusable location '{}'",
            crate::util::shown(location)
        )
    };
    let uri: ureq::http::Uri = base.parse().map_err(|_| unusable())?;
    let scheme = uri.scheme_str().ok_or_else(unusable)?;
    let authority = uri.authority().ok_or_else(unusable)?.as_str();
    if let Some(rest) = location.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let path = uri.path();
    let folder = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let folder = if folder.is_empty() { "/" } else { folder };
    Ok(format!("{scheme}://{authority}{folder}{location}"))
}

/// How ureq 3.5 words the error of a response head with more than 128
/// header lines (its `ureq_proto::Error` is not public to match on; the
/// test `hostile::malformed_answers_fail_at_once_with_their_own_reason`
/// pins it).
const TOO_MANY_HEADERS: &str = "protocol: http parse resulted in too many headers";

/// Sorts a ureq error into a [`FetchError`].
fn classify(error: ureq::Error, limit: u64) -> FetchError {
    match error {
        ureq::Error::Timeout(which) => FetchError::Timeout(which.to_string()),
        ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge(limit),
        ureq::Error::Decompress(encoding, io) => undecodable(encoding, &io),
        ureq::Error::Rustls(rustls::Error::InvalidCertificate(why)) => {
            FetchError::Certificate(certificate_refused(&why))
        }
        ureq::Error::Io(io) => {
            if let Some(rustls::Error::InvalidCertificate(why)) = tls_error(&io) {
                return FetchError::Certificate(certificate_refused(why));
            }
            // ureq wraps its own errors in io::Error inside body readers.
            if let Some(inner) = io.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>()) {
                return match inner {
                    ureq::Error::BodyExceedsLimit(_) => FetchError::TooLarge(limit),
                    ureq::Error::Timeout(which) => FetchError::Timeout(which.to_string()),
                    ureq::Error::Decompress(encoding, io) => undecodable(encoding, io),
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
        ureq::Error::Protocol(_) if error.to_string() == TOO_MANY_HEADERS => {
            FetchError::TooManyHeaders
        }
        ureq::Error::Protocol(_) => FetchError::Truncated(error.to_string()),
        other => FetchError::Permanent(other.to_string()),
    }
}

/// A compressed body that does not decompress: corrupt (permanent), unless
/// the stream just stopped early, which a broken connection also does.
fn undecodable(encoding: &'static str, io: &std::io::Error) -> FetchError {
    let detail = crate::util::io_reason(io);
    if io.kind() == std::io::ErrorKind::UnexpectedEof {
        return FetchError::Truncated(format!("{encoding} stream ended early: {detail}"));
    }
    FetchError::CorruptBody { encoding, detail }
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
    fn a_refused_certificate_says_what_is_wrong_and_names_ca_file_and_the_opt_out() {
        use rustls::CertificateError as E;
        for (error, what) in [
            (E::UnknownIssuer, "is not trusted (issuer unknown)"),
            (E::Expired, "has expired"),
            (E::NotValidYet, "is not valid yet"),
            (E::NotValidForName, "is not valid for this host name"),
            (E::BadSignature, "is refused (BadSignature)"),
            (
                E::Other(rustls::OtherError(std::sync::Arc::new(
                    std::io::Error::other("CaUsedAsEndEntity"),
                ))),
                "is a CA certificate, not one issued for the site (CaUsedAsEndEntity)",
            ),
            (
                E::Other(rustls::OtherError(std::sync::Arc::new(
                    std::io::Error::other("Unusual"),
                ))),
                "is refused (Other(",
            ),
        ] {
            let line = certificate_refused(&error);
            assert!(
                line.starts_with(&format!("the server's certificate {what}")),
                "{line}"
            );
            assert!(
                line.contains("set ca_file = \"/path/ca.pem\" (or SSL_CERT_FILE)"),
                "{line}"
            );
            assert!(line.contains("tls_insecure_skip_verify = true"), "{line}");
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn a_certificate_error_fails_at_once_under_its_own_reason() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        let error = classify(ureq::Error::Io(io), 1);
        assert!(matches!(error, FetchError::Certificate(_)), "{error:?}");
        assert!(!error.retryable());
        assert_eq!(error.kind(), "certificate");
        let direct = classify(
            ureq::Error::Rustls(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Expired,
            )),
            1,
        );
        assert!(direct.to_string().contains("has expired"), "{direct}");
        let other =
            std::io::Error::new(std::io::ErrorKind::InvalidData, rustls::Error::DecryptError);
        assert!(matches!(
            classify(ureq::Error::Io(other), 1),
            FetchError::Connection(_)
        ));
    }

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
        let resolved = |location| resolve(base, location);
        assert_eq!(resolved("/x?page=3").as_deref(), Ok("http://h:8/x?page=3"));
        assert_eq!(resolved("c.php").as_deref(), Ok("http://h:8/a/c.php"));
        assert_eq!(resolved("./c:d").as_deref(), Ok("http://h:8/a/./c:d"));
        assert_eq!(resolved("//other/x").as_deref(), Ok("http://other/x"));
        assert_eq!(resolved("https://o/y").as_deref(), Ok("https://o/y"));
        assert_eq!(resolved(" HTTP://o/z ").as_deref(), Ok("HTTP://o/z"));
        for (location, scheme) in [
            ("file:///etc/passwd", "file"),
            ("javascript:alert(1)", "javascript"),
            ("mailto:someone@example.com", "mailto"),
            ("FTP://h/x", "ftp"),
            ("data:text/html,x", "data"),
        ] {
            assert_eq!(
                resolved(location),
                Err(format!("redirect to a non-HTTP URL ({scheme}:) refused")),
                "{location}"
            );
        }
        assert!(resolve("not a url", "x").is_err());
    }

    #[test]
    fn an_origin_is_the_host_and_any_port_but_the_default() {
        let origin = |url| origin_of(url);
        assert_eq!(
            origin("http://Example.COM/x").as_deref(),
            Some("example.com")
        );
        assert_eq!(origin("http://h:80/x"), origin("http://h/y"));
        assert_eq!(origin("https://h:443/x"), origin("http://h/y"));
        assert_eq!(origin("http://h:8080/x").as_deref(), Some("h:8080"));
        assert_eq!(origin("https://h:80/x").as_deref(), Some("h:80"));
        assert_ne!(origin("http://h:8/x"), origin("http://h:9/x"));
        assert_eq!(origin("/relative"), None);
    }

    /// A fetcher for the fixture `server`, one connection at a time.
    fn fetcher_for(server: &crate::fixture::Server) -> Fetcher {
        let text = format!(
            "url = \"{}\"\npages = \"1..=9\"\npattern = '(?P<x>x)'\nconcurrency = 1\n",
            server.url_template()
        );
        Fetcher::new(&Config::parse(&text, "t.toml".as_ref()).unwrap())
    }

    #[test]
    fn every_request_after_the_first_is_paced_resends_and_redirects_alike() {
        use crate::fixture::{Hostile, Server, Site};
        let url =
            |server: &Server, page: u64| server.url_template().replace("{page}", &page.to_string());
        // Each connection is closed 100 ms after its response and reads no
        // more: page 2, asked at once on page 1's connection, gets no byte
        // back and is sent again on a new one, after its turn from `pace`.
        let closing = Server::start(Site {
            pages: 5,
            close_after_response: Some(Duration::from_millis(100)),
            ..Site::default()
        })
        .unwrap();
        let fetcher = fetcher_for(&closing);
        let mut paced = 0;
        let mut pace = || {
            paced += 1;
            true
        };
        let mut statuses = Vec::new();
        let mut seen = |status| statuses.push(status);
        assert!(fetcher
            .fetch_paced(&url(&closing, 1), &mut pace, &mut seen)
            .is_ok());
        assert!(fetcher
            .fetch_paced(&url(&closing, 2), &mut pace, &mut seen)
            .is_ok());
        assert_eq!(statuses, [200, 200], "the resend's one response is told");
        assert_eq!(paced, 1, "the resend took a turn");
        assert_eq!(closing.stats().requests_for(2), 1, "answered once");
        assert_eq!(closing.stats().connections(), 2);

        let looping = Server::start(Site {
            pages: 5,
            hostile: vec![(4, Hostile::RedirectLoop)],
            ..Site::default()
        })
        .unwrap();
        let fetcher = fetcher_for(&looping);
        let mut paced = 0;
        let mut statuses = Vec::new();
        let redirected = fetcher.fetch_paced(
            &url(&looping, 4),
            &mut || {
                paced += 1;
                true
            },
            &mut |status| statuses.push(status),
        );
        assert!(matches!(redirected, Err(FetchError::Redirect(_))));
        assert_eq!(paced, MAX_REDIRECTS, "each redirect followed took a turn");
        assert_eq!(
            statuses.len(),
            MAX_REDIRECTS + 1,
            "each redirect's response is told: {statuses:?}"
        );
        assert!(
            statuses.iter().all(|s| (300..400).contains(s)),
            "{statuses:?}"
        );
        // A crawl that stops while a request waits for its turn sends it not.
        let before = looping.stats().total();
        assert_eq!(
            fetcher
                .fetch_paced(&url(&looping, 4), &mut || false, &mut |_| {})
                .unwrap_err(),
            FetchError::Abandoned
        );
        assert_eq!(
            looping.stats().total(),
            before + 1,
            "only the first request"
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
        // The same bytes come back on another attempt.
        assert!(!FetchError::TooManyHeaders.retryable());
        let corrupt = undecodable("gzip", &std::io::Error::other("corrupt deflate stream"));
        assert!(!corrupt.retryable());
        assert_eq!(corrupt.kind(), "corrupt gzip body");
        // A compressed stream that stops early may be a broken connection.
        let cut = undecodable(
            "gzip",
            &std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
        );
        assert!(cut.retryable());
        assert_eq!(cut.kind(), "truncated body");
    }
}
