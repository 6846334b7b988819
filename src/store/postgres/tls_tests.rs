//! Each `sslmode` against real throwaway servers, one offering TLS with a
//! test CA's certificate for `localhost` and one without TLS, and each
//! failure's one line: a refused certificate, TLS not offered, a wrong or
//! missing password, a missing database, a refused port, no answer.

use std::time::{Duration, Instant};

use super::super::connect::{connect, parse_store_url, PasswordSources};
use super::SslMode;
use crate::error::UserError;
use crate::exit_code::Exit;
use crate::fixture::postgres::{Postgres, SUPERUSER};

/// A store URL for the superuser with its password in it, on `host`.
fn url(server: &Postgres, host: &str, options: &str) -> String {
    format!(
        "postgres://{SUPERUSER}:{}@{host}:{}/postgres?{options}",
        server.password(),
        server.port()
    )
}

/// Whether `url` connects, and then whether the link is encrypted.
fn encrypted(url: &str) -> Result<bool, UserError> {
    let store = parse_store_url(url, &PasswordSources::default())?;
    let mut client = connect(&store)?;
    let row = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap();
    Ok(row.get(0))
}

/// The refusal of `url`: one line, with `wanted` in it, no password,
/// and the exit code `exit`.
fn refusal(url: &str, password: &str, wanted: &str, exit: Exit) -> String {
    let error = match encrypted(url) {
        Ok(tls) => panic!("{url} connected (TLS: {tls})"),
        Err(error) => error,
    };
    let message = error.to_string();
    eprintln!("refused as it should be: {message}");
    assert!(message.contains(wanted), "{message}");
    assert!(!message.contains('\n'), "{message}");
    assert!(!message.contains(password), "{message}");
    assert_eq!(error.exit(), exit, "{message}");
    message
}

#[test]
fn each_sslmode_checks_what_libpq_checks_against_a_tls_server() {
    let Some(server) = Postgres::for_test_with_tls("each_sslmode_checks") else {
        return;
    };
    let ca = server.ca_file().unwrap();
    let ca = ca.display();
    let password = server.password();
    let trusted = format!("sslmode=verify-full&sslrootcert={ca}");
    assert_eq!(
        encrypted(&url(&server, "localhost", &trusted)).ok(),
        Some(true)
    );
    // The CA is not in the system's store.
    let message = refusal(
        &url(&server, "localhost", "sslmode=verify-full"),
        password,
        "certificate is not signed by a trusted CA (sslmode=verify-full)",
        Exit::Usage,
    );
    assert!(message.contains("sslrootcert="), "{message}");
    // The certificate is for localhost: 127.0.0.1 is another name.
    refusal(
        &url(&server, "127.0.0.1", &trusted),
        password,
        "certificate is not issued for the URL's host name (sslmode=verify-full): connect \
         by a name the certificate holds, or write sslmode=verify-ca",
        Exit::Usage,
    );
    let chain_only = format!("sslmode=verify-ca&sslrootcert={ca}");
    assert_eq!(
        encrypted(&url(&server, "127.0.0.1", &chain_only)).ok(),
        Some(true)
    );
    refusal(
        &url(&server, "127.0.0.1", "sslmode=verify-ca"),
        password,
        "not signed by a trusted CA",
        Exit::Usage,
    );
    // require and prefer encrypt without checking the certificate.
    for mode in ["require", "prefer"] {
        let options = format!("sslmode={mode}");
        assert_eq!(
            encrypted(&url(&server, "127.0.0.1", &options)).ok(),
            Some(true)
        );
    }
    assert_eq!(encrypted(&url(&server, "127.0.0.1", "")).ok(), Some(true));
    assert_eq!(
        encrypted(&url(&server, "127.0.0.1", "sslmode=disable")).ok(),
        Some(false)
    );
    // As libpq: require with a root certificate checks the chain.
    let other_ca = tempfile::NamedTempFile::new().unwrap();
    let stranger = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(other_ca.path(), stranger.cert.pem()).unwrap();
    refusal(
        &url(
            &server,
            "localhost",
            &format!("sslmode=require&sslrootcert={}", other_ca.path().display()),
        ),
        password,
        "not signed by a trusted CA (sslmode=require): sslrootcert '/",
        Exit::Usage,
    );

    let average = |options: &str| {
        let store = parse_store_url(
            &url(&server, "127.0.0.1", options),
            &PasswordSources::default(),
        )
        .unwrap();
        let begun = Instant::now();
        for _ in 0..10 {
            drop(connect(&store).unwrap());
        }
        begun.elapsed() / 10
    };
    eprintln!(
        "connect time (average of 10): sslmode=disable {:?}, sslmode=require {:?}, \
         sslmode=verify-ca {:?}",
        average("sslmode=disable"),
        average("sslmode=require"),
        average(&chain_only)
    );
}

#[test]
fn a_server_without_tls_is_used_in_clear_unless_tls_is_required() {
    let Some(server) = Postgres::for_test("a_server_without_tls") else {
        return;
    };
    let password = server.password();
    assert_eq!(encrypted(&url(&server, "127.0.0.1", "")).ok(), Some(false));
    assert_eq!(
        encrypted(&url(&server, "127.0.0.1", "sslmode=prefer")).ok(),
        Some(false)
    );
    for mode in ["require", "verify-ca", "verify-full"] {
        refusal(
            &url(&server, "127.0.0.1", &format!("sslmode={mode}")),
            password,
            &format!("the server does not offer TLS, which sslmode={mode} requires"),
            Exit::Usage,
        );
    }
    let wrong = format!(
        "postgres://{SUPERUSER}:not-the-password@127.0.0.1:{}/postgres",
        server.port()
    );
    let message = refusal(
        &wrong,
        "not-the-password",
        "authentication failed",
        Exit::Usage,
    );
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    let missing_password = format!(
        "postgres://{SUPERUSER}@127.0.0.1:{}/postgres",
        server.port()
    );
    refusal(
        &missing_password,
        password,
        "asks for a password",
        Exit::Usage,
    );
    let missing_database = url(&server, "127.0.0.1", "").replace("/postgres?", "/nosuchdb?");
    refusal(
        &missing_database,
        password,
        "the database 'nosuchdb' does not exist",
        Exit::Usage,
    );
}

#[test]
fn an_unreachable_server_is_one_line_within_the_timeout() {
    // A port nothing listens on: refused at once.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let begun = Instant::now();
    refusal(
        &format!("postgres://u:pw-secret@127.0.0.1:{port}/db"),
        "pw-secret",
        "connection refused",
        Exit::Unavailable,
    );
    assert!(begun.elapsed() < Duration::from_secs(5));
    // A listener whose queue is full: the kernel drops further SYNs, so
    // a connection gets no answer at all (as behind a firewall).
    let full = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = full.local_addr().unwrap();
    let mut queued = Vec::new();
    while queued.len() < 10_000 {
        match std::net::TcpStream::connect_timeout(&address, Duration::from_millis(200)) {
            Ok(stream) => queued.push(stream),
            Err(_) => break,
        }
    }
    let begun = Instant::now();
    refusal(
        &format!(
            "postgres://u:pw-secret@127.0.0.1:{}/db?connect_timeout=1",
            address.port()
        ),
        "pw-secret",
        "no answer within 1 s (connect_timeout)",
        Exit::Unavailable,
    );
    let waited = begun.elapsed();
    assert!(
        waited >= Duration::from_secs(1) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    let store = parse_store_url("postgres://u@h/db", &PasswordSources::default()).unwrap();
    assert_eq!(
        store.config.get_connect_timeout(),
        Some(&super::super::connect::CONNECT_TIMEOUT)
    );
}

#[test]
fn sslmode_and_sslrootcert_are_read_from_the_url() {
    let sources = PasswordSources::default();
    for (options, mode) in [
        ("", SslMode::Prefer),
        ("?sslmode=disable", SslMode::Disable),
        (
            "?connect_timeout=3&sslmode=verify-ca&application_name=x",
            SslMode::VerifyCa,
        ),
    ] {
        let store = parse_store_url(&format!("postgres://u@h/db{options}"), &sources).unwrap();
        assert_eq!(store.ssl_mode, mode, "{options}");
    }
    let system = parse_store_url("postgres://u@h/db?sslrootcert=system", &sources).unwrap();
    assert_eq!(system.ssl_mode, SslMode::VerifyFull);
    let error = parse_store_url(
        "postgres://u@h/db?sslrootcert=system&sslmode=require",
        &sources,
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("sslrootcert=system with sslmode=require: write sslmode=verify-full"),
        "{error}"
    );
    let store = parse_store_url(
        "postgres://u@h/db?connect_timeout=3&sslmode=require&application_name=x",
        &sources,
    )
    .unwrap();
    assert_eq!(
        store.config.get_connect_timeout(),
        Some(&Duration::from_secs(3))
    );
    assert_eq!(store.config.get_application_name(), Some("x"));
    let error = parse_store_url("postgres://u:s3cret@h/db?sslmode=allow", &sources).unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("sslmode=allow: write sslmode=disable"),
        "{message}"
    );
    assert!(!message.contains("s3cret"), "{message}");
    let error = parse_store_url(
        "postgres://u@h/db?sslmode=verify-full&sslrootcert=%2Fno%2Fsuch.pem",
        &sources,
    )
    .unwrap_err();
    assert!(
        error
            .to_string()
            .contains("sslrootcert '/no/such.pem' cannot be read"),
        "{error}"
    );
    assert_eq!(error.exit(), Exit::Usage);
}
