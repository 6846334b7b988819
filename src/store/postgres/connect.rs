//! The `store = "postgres://..."` URL and the connection it makes.
//!
//! The URL is parsed with the `postgres` crate's own parser, shown only
//! without its password, and given a password the way libpq clients find
//! one: the URL's, else `PGPASSWORD`, else the first matching line of the
//! password file (`PGPASSFILE`, else `~/.pgpass`), which, as libpq does, is
//! ignored when others may read it. The `postgres` crate reads none of
//! these variables or files itself. `sslmode` and `sslrootcert` are taken
//! out of the URL first (that parser knows neither `verify-*` nor
//! `sslrootcert`) and become the TLS connector of [`super::tls`].
//!
//! [`connect`] turns a failed connection into one line that names the
//! problem and what to do: a [`UserError::Config`] (exit 2) for what the
//! URL or the server's setup must change (authentication, a missing
//! database, TLS not offered, a refused certificate), a
//! [`UserError::Unavailable`] (exit 69) for a server that cannot be
//! reached now (refused, unknown host, no answer within `connect_timeout`,
//! 10 s unless the URL says otherwise).

use std::path::{Path, PathBuf};
use std::time::Duration;

use ::postgres::error::SqlState;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::tls::{self, SslMode};
use crate::error::UserError;
use crate::util::shown;

/// How long a connection attempt waits for the server's TCP answer when
/// the URL has no `connect_timeout` (libpq waits forever; a crawler that
/// hangs at start on a dropped packet helps nobody).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A parsed store URL.
#[derive(Clone)]
pub struct StoreUrl {
    /// What connects (with its password, when one was found).
    pub config: ::postgres::Config,
    /// The URL as messages and `status` may show it: no password.
    pub shown: String,
    /// The URL's `sslmode` (`prefer` when it has none).
    pub ssl_mode: SslMode,
    /// The URL's `sslrootcert` (for messages: the connector holds its CAs).
    root_cert: Option<PathBuf>,
    /// The TLS connector `sslmode` and `sslrootcert` call for.
    tls: MakeRustlsConnect,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// Where a password may come from besides the URL (the process's
/// environment in production; given explicitly by tests).
#[derive(Debug, Default, Clone)]
pub struct PasswordSources {
    /// `PGPASSWORD`.
    pub variable: Option<String>,
    /// The password file to read (`PGPASSFILE`, else `~/.pgpass`).
    pub file: Option<PathBuf>,
}

impl PasswordSources {
    /// The sources libpq would use in this process.
    pub fn from_environment() -> PasswordSources {
        let file = std::env::var_os("PGPASSFILE")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| Path::new(&home).join(".pgpass")));
        PasswordSources {
            variable: std::env::var("PGPASSWORD").ok(),
            file,
        }
    }
}

/// Parses a `postgres://` (or `postgresql://`) store URL and finds its
/// password. A URL that does not parse, or names no user, is a
/// [`UserError::Config`] whose message never holds the password.
pub fn parse_store_url(url: &str, sources: &PasswordSources) -> Result<StoreUrl, UserError> {
    let shown_url = redacted(url);
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(UserError::Config(format!(
            "store: '{}' is not a postgres:// URL: write store = \"postgres://USER@HOST/DB\"",
            shown(&shown_url)
        )));
    }
    let (url, ssl_mode, root_cert) = take_tls_options(url);
    // `sslrootcert=system` (libpq 16) names the system's store, and is
    // refused with a mode weaker than verify-full, its default.
    let system_roots = root_cert.as_deref() == Some("system");
    let ssl_mode = match ssl_mode {
        None if system_roots => SslMode::VerifyFull,
        None => SslMode::Prefer,
        Some(value) => SslMode::parse(&value).ok_or_else(|| {
            UserError::Config(format!(
                "store: '{}' has sslmode={}: write sslmode=disable, prefer, require, \
                 verify-ca or verify-full",
                shown(&shown_url),
                shown(&value)
            ))
        })?,
    };
    if system_roots && ssl_mode != SslMode::VerifyFull {
        return Err(UserError::Config(format!(
            "store: '{}' has sslrootcert=system with sslmode={}: write sslmode=verify-full \
             (as libpq, the system's CAs only with the host name checked)",
            shown(&shown_url),
            ssl_mode.name()
        )));
    }
    let mut config: ::postgres::Config = url.parse().map_err(|error: ::postgres::Error| {
        UserError::Config(format!(
            "store: '{}' is not a valid PostgreSQL URL ({}): write store = \
             \"postgres://USER@HOST[:PORT]/DB\"",
            shown(&shown_url),
            // The parser's messages name options, never their values.
            error
        ))
    })?;
    let Some(user) = config
        .get_user()
        .filter(|user| !user.is_empty())
        .map(str::to_owned)
    else {
        return Err(UserError::Config(format!(
            "store: '{}' names no user: write store = \"postgres://USER@HOST/DB\"",
            shown(&shown_url)
        )));
    };
    if config.get_password().is_none() {
        if let Some(password) = sources.variable.clone() {
            config.password(password);
        } else if let Some(file) = &sources.file {
            let host = match config.get_hosts().first() {
                Some(::postgres::config::Host::Tcp(host)) => host.clone(),
                // libpq matches a socket connection as "localhost".
                _ => "localhost".to_owned(),
            };
            let port = config.get_ports().first().copied().unwrap_or(5432);
            let dbname = config.get_dbname().unwrap_or(&user).to_owned();
            if let Some(password) = password_from_file(file, &host, port, &dbname, &user) {
                config.password(password);
            }
        }
    }
    config.ssl_mode(ssl_mode.wire());
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    let root_cert = root_cert.filter(|_| !system_roots).map(PathBuf::from);
    let tls = tls::connector(
        ssl_mode,
        root_cert.as_deref(),
        &format!("store '{}'", shown(&shown_url)),
    )?;
    Ok(StoreUrl {
        config,
        shown: shown_url,
        ssl_mode,
        root_cert,
        tls,
    })
}

/// Splits `sslmode` and `sslrootcert` (percent-decoded) off the URL's
/// query; the rest of the URL is left as it was.
fn take_tls_options(url: &str) -> (String, Option<String>, Option<String>) {
    let Some((head, query)) = url.split_once('?') else {
        return (url.to_owned(), None, None);
    };
    let (mut mode, mut root_cert) = (None, None);
    let kept: Vec<&str> = query
        .split('&')
        .filter(|option| match option.split_once('=') {
            Some(("sslmode", value)) => {
                mode = Some(percent_decoded(value));
                false
            }
            Some(("sslrootcert", value)) => {
                root_cert = Some(percent_decoded(value));
                false
            }
            _ => true,
        })
        .collect();
    let rest = if kept.is_empty() {
        head.to_owned()
    } else {
        format!("{head}?{}", kept.join("&"))
    };
    (rest, mode, root_cert)
}

/// `%XX` escapes decoded, as libpq decodes a URI's values (`+` stays `+`);
/// a broken escape is kept as written.
fn percent_decoded(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| value.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl StoreUrl {
    /// The same store, its connections named for `daemon` (their
    /// `application_name`, as `pg_stat_activity` shows it): how a daemon's
    /// connections are found when it must be fenced off (see
    /// [`super::job::fence_silent_daemons`]).
    pub fn for_daemon(&self, daemon: super::job::DaemonId) -> StoreUrl {
        let mut url = self.clone();
        url.config
            .application_name(&super::job::application_name(daemon));
        url
    }
}

/// Connects to the store as its URL says (TLS per `sslmode`), or says in
/// one line, without the password, why not and what to do.
pub fn connect(url: &StoreUrl) -> Result<::postgres::Client, UserError> {
    url.config
        .connect(url.tls.clone())
        .map_err(|error| refused(url, &error))
}

/// The one-line error for a failed connection (see the module doc).
fn refused(url: &StoreUrl, error: &::postgres::Error) -> UserError {
    let store = format!("store '{}'", shown(&url.shown));
    let mode = url.ssl_mode.name();
    if let Some(db) = error.as_db_error() {
        let said = shown(db.message());
        let code = db.code();
        return if *code == SqlState::INVALID_PASSWORD
            || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
        {
            UserError::Config(format!(
                "{store}: authentication failed (the server says: {said}): check the \
                 password (the URL's, PGPASSWORD or ~/.pgpass) and the server's pg_hba.conf"
            ))
        } else if *code == SqlState::INVALID_CATALOG_NAME {
            let database = url.config.get_dbname().unwrap_or_default();
            UserError::Config(format!(
                "{store}: the database '{}' does not exist: create it (createdb {}) or name \
                 another in the URL",
                shown(database),
                shown(database)
            ))
        } else {
            UserError::Unavailable(format!(
                "{store}: the server refused the connection ({said}): try again later"
            ))
        };
    }
    if let Some(tls) = rustls_cause(error) {
        return UserError::Config(match tls {
            rustls::Error::InvalidCertificate(why) => format!(
                "{store}: {}",
                tls::certificate_refused(why, url.ssl_mode, url.root_cert.as_deref())
            ),
            other => format!(
                "{store}: the TLS handshake failed ({other}, sslmode={mode}): check the \
                 server's ssl settings"
            ),
        });
    }
    // tokio-postgres says these in words only (its error kinds are private),
    // some of them in a cause its own message leaves out.
    let text = std::iter::once(error.to_string())
        .chain(causes(error).map(ToString::to_string))
        .collect::<Vec<_>>()
        .join(": ");
    if text.contains("server does not support TLS") {
        return UserError::Config(format!(
            "{store}: the server does not offer TLS, which sslmode={mode} requires: turn \
             ssl on in its postgresql.conf, or, on a network you trust, write sslmode=prefer \
             (TLS when offered) in the URL"
        ));
    }
    if text.contains("password missing") {
        return UserError::Config(format!(
            "{store}: the server asks for a password and none was found: give it in the URL, \
             in PGPASSWORD, or in ~/.pgpass (mode 0600)"
        ));
    }
    if let Some(io) = io_cause(error) {
        let seconds = url
            .config
            .get_connect_timeout()
            .map_or(0, Duration::as_secs);
        return UserError::Unavailable(match io.kind() {
            std::io::ErrorKind::ConnectionRefused => format!(
                "{store}: connection refused: is the server running and listening on that \
                 host and port? Try again once it is"
            ),
            std::io::ErrorKind::TimedOut => format!(
                "{store}: no answer within {seconds} s (connect_timeout): check the host and \
                 port, and that no firewall drops the connection"
            ),
            _ if io.to_string().contains("lookup address") => format!(
                "{store}: unknown host ({}): check the URL's host name",
                shown(&io.to_string())
            ),
            _ => format!("{store}: cannot connect ({})", shown(&io.to_string())),
        });
    }
    if text.contains("authentication") {
        return UserError::Config(format!(
            "{store}: authentication failed ({}): check the password and the server's \
             pg_hba.conf",
            shown(&text)
        ));
    }
    UserError::Unavailable(format!("{store}: cannot connect ({})", shown(&text)))
}

/// The rustls error behind a failed connection, if TLS failed.
fn rustls_cause(error: &::postgres::Error) -> Option<&rustls::Error> {
    causes(error).find_map(|cause| {
        cause.downcast_ref::<rustls::Error>().or_else(|| {
            // tokio-rustls wraps it in an io::Error, whose `source` skips it.
            cause
                .downcast_ref::<std::io::Error>()?
                .get_ref()?
                .downcast_ref::<rustls::Error>()
        })
    })
}

/// The I/O error behind a failed connection, if the socket failed.
fn io_cause(error: &::postgres::Error) -> Option<&std::io::Error> {
    causes(error).find_map(|cause| cause.downcast_ref::<std::io::Error>())
}

/// The error's causes, innermost last.
fn causes<'a>(
    error: &'a ::postgres::Error,
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(std::error::Error::source(error), |cause| cause.source())
}

/// The URL with any password replaced by `***`, whether or not it parses.
pub fn redacted(url: &str) -> String {
    let mut out = url.to_owned();
    // The userinfo part: between "://" and the last '@' before the path.
    if let Some(scheme_end) = url.find("://") {
        let rest = &url[scheme_end + 3..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            if let Some(colon) = rest[..at].find(':') {
                let start = scheme_end + 3 + colon + 1;
                out.replace_range(start..scheme_end + 3 + at, "***");
            }
        }
    }
    // A password given as a query option.
    if let Some(query) = out.find('?') {
        let (head, tail) = out.split_at(query + 1);
        let options: Vec<String> = tail
            .split('&')
            .map(|option| match option.split_once('=') {
                Some(("password", _)) => "password=***".to_owned(),
                _ => option.to_owned(),
            })
            .collect();
        out = format!("{head}{}", options.join("&"));
    }
    out
}

/// The password of the first line of a `.pgpass` file matching the
/// connection, or `None`; a file others can read or write is ignored, as
/// libpq ignores it (with a warning).
fn password_from_file(
    file: &Path,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(file).ok()?;
    if metadata.permissions().mode() & 0o077 != 0 {
        log::warn!(
            "password file {} has group or world access; permissions should be u=rw (0600) \
             or less: ignored",
            file.display()
        );
        return None;
    }
    let text = std::fs::read_to_string(file).ok()?;
    pgpass_lookup(&text, host, port, dbname, user)
}

/// The `.pgpass` rule: lines of `host:port:database:user:password`, `*`
/// matching anything, `\:` and `\\` escaping, `#` starting a comment; the
/// first matching line wins.
pub fn pgpass_lookup(
    text: &str,
    host: &str,
    port: u16,
    dbname: &str,
    user: &str,
) -> Option<String> {
    let port = port.to_string();
    let wanted = [host, port.as_str(), dbname, user];
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let fields = pgpass_fields(line);
            if fields.len() < 5 {
                return None;
            }
            let matches = fields[..4]
                .iter()
                .zip(wanted)
                .all(|(field, value)| field == "*" || field == value);
            matches.then(|| fields[4].clone())
        })
}

/// Splits one line on unescaped colons into at most five fields (the
/// password may hold colons of its own, escaped or not).
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(next) = chars.next() {
                    fields.last_mut().expect("one field").push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            _ => fields.last_mut().expect("one field").push(c),
        }
    }
    fields
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixture::postgres::Postgres;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn pgpass_lines_match_as_libpq_matches_them() {
        let text = "# comment\n\
                    other:5432:*:alice:wrong\n\
                    db.example:*:crawl:alice:pa\\:ss\\\\word\n\
                    *:*:*:*:fallback:with:colons\n";
        let lookup = |host, port, db, user| pgpass_lookup(text, host, port, db, user);
        assert_eq!(
            lookup("db.example", 6543, "crawl", "alice").as_deref(),
            Some("pa:ss\\word")
        );
        assert_eq!(
            lookup("other", 5432, "x", "alice").as_deref(),
            Some("wrong")
        );
        assert_eq!(
            lookup("other", 5433, "x", "alice").as_deref(),
            Some("fallback:with:colons")
        );
        assert_eq!(pgpass_lookup("short:line\n", "h", 1, "d", "u"), None);
    }

    #[test]
    fn a_password_is_never_shown_in_urls_or_errors() {
        let cases = [
            (
                "postgres://alice:s3cret@db/crawl",
                "postgres://alice:***@db/crawl",
            ),
            (
                "postgres://alice:s3cr@t@db/crawl",
                "postgres://alice:***@db/crawl",
            ),
            (
                "postgres://alice@db/crawl?password=s3cret&sslmode=disable",
                "postgres://alice@db/crawl?password=***&sslmode=disable",
            ),
            ("postgres://db/crawl", "postgres://db/crawl"),
        ];
        for (url, expected) in cases {
            assert_eq!(redacted(url), expected);
        }
        let sources = PasswordSources::default();
        for bad in [
            "postgres://alice:s3cret@db:notaport/crawl",
            "postgres://:s3cret@db/crawl",
            "mysql://alice:s3cret@db/crawl",
        ] {
            let error = parse_store_url(bad, &sources).unwrap_err();
            let message = error.to_string();
            assert!(!message.contains("s3cret"), "{message}");
            assert!(message.starts_with("store: "), "{message}");
            assert_eq!(error.exit(), crate::exit_code::Exit::Usage);
        }
        let parsed = parse_store_url("postgres://alice:s3cret@db/crawl", &sources).unwrap();
        assert!(!format!("{parsed:?}").contains("s3cret"));
        assert!(!format!("{:?}", parsed.config).contains("s3cret"));
    }

    #[test]
    fn the_password_comes_from_the_url_the_variable_or_a_private_pgpass() {
        let Some(server) = Postgres::for_test("the_password_comes_from") else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let pgpass = dir.path().join("pgpass");
        std::fs::write(
            &pgpass,
            format!(
                "127.0.0.1:{}:postgres:postgres:{}\n",
                server.port(),
                server.password()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();
        let connects = |url: &str, sources: &PasswordSources| {
            let store = parse_store_url(url, sources).unwrap();
            store.config.connect(::postgres::NoTls).is_ok()
        };
        let url = server.url();
        let none = PasswordSources::default();
        let file = PasswordSources {
            variable: None,
            file: Some(pgpass.clone()),
        };
        let variable = PasswordSources {
            variable: Some(server.password().to_owned()),
            file: None,
        };
        let with_password =
            url.replacen("postgres@", &format!("postgres:{}@", server.password()), 1);
        assert!(!connects(&url, &none), "connected without a password");
        assert!(connects(&with_password, &none));
        assert!(connects(&url, &variable));
        assert!(connects(&url, &file));
        // The URL's password comes first, then the variable, then the file.
        let wrong_variable = PasswordSources {
            variable: Some("wrong".into()),
            file: Some(pgpass.clone()),
        };
        assert!(!connects(&url, &wrong_variable));
        assert!(connects(&with_password, &wrong_variable));
        // A file others can read is ignored.
        std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(!connects(&url, &file), "a world-readable .pgpass was used");
    }
}
