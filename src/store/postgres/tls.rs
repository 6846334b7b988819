//! The store connection's TLS, as libpq's `sslmode` sets it, with rustls
//! (no OpenSSL) through the `tokio-postgres-rustls` adapter:
//!
//! | `sslmode` | TLS | the server's certificate |
//! | --- | --- | --- |
//! | `disable` | never | - |
//! | `prefer` (default) | when the server offers it | not checked |
//! | `require` | always | not checked; checked as `verify-ca` when `sslrootcert` is given (libpq does the same) |
//! | `verify-ca` | always | signed by a trusted CA |
//! | `verify-full` | always | signed by a trusted CA and issued for the URL's host |
//!
//! The trusted CAs are those of `sslrootcert=FILE` (PEM), else the
//! system's store (`SSL_CERT_FILE`, `SSL_CERT_DIR`, /etc/ssl/certs).
//! tokio-postgres itself knows only `disable`, `prefer` and `require`: the
//! two checking modes are `require` plus a certificate verifier.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::error::UserError;
use crate::util::shown;

/// libpq's `sslmode` values the store supports (`allow`, plain text first,
/// is refused: nobody should want it over `prefer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// The mode an `sslmode=` value names, or `None`.
    pub fn parse(value: &str) -> Option<SslMode> {
        Some(match value {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    /// The value as written in a URL.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres is told: whether TLS is tried, and required.
    pub fn wire(self) -> ::postgres::config::SslMode {
        match self {
            SslMode::Disable => ::postgres::config::SslMode::Disable,
            SslMode::Prefer => ::postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                ::postgres::config::SslMode::Require
            }
        }
    }
}

/// The TLS connector for a mode. `root_cert` is the URL's `sslrootcert`;
/// the system's store is read only when a mode checks certificates without
/// one. `store` names the store in errors (a file that holds no
/// certificate, an empty system store: both a [`UserError::Config`]).
pub fn connector(
    mode: SslMode,
    root_cert: Option<&Path>,
    store: &str,
) -> Result<MakeRustlsConnect, UserError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let checks = match mode {
        SslMode::Require if root_cert.is_some() => SslMode::VerifyCa,
        other => other,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match checks {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => {
            Arc::new(Unchecked(provider.clone()))
        }
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(trusted(root_cert, store)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| {
                    UserError::Config(format!("{store}: no usable CA certificate ({error})"))
                })?;
            if checks == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("ring offers the default TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// The CAs to trust: the PEM file's, else the system's.
fn trusted(root_cert: Option<&Path>, store: &str) -> Result<RootCertStore, UserError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    let Some(file) = root_cert else {
        let found = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(found.certs);
        if roots.is_empty() {
            return Err(UserError::Config(format!(
                "{store}: the system's trust store holds no CA certificate (SSL_CERT_FILE, \
                 SSL_CERT_DIR, /etc/ssl/certs): give the server's CA with \
                 sslrootcert=/path/ca.pem in the URL"
            )));
        }
        return Ok(roots);
    };
    let unusable = |why: String| {
        UserError::Config(format!(
            "{store}: sslrootcert '{}' {why}: give a PEM file of the CA that signed the \
             server's certificate",
            shown(&file.display().to_string())
        ))
    };
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(file)
        .and_then(|certificates| certificates.collect())
        .map_err(|error| unusable(format!("cannot be read ({error})")))?;
    roots.add_parsable_certificates(certificates);
    if roots.is_empty() {
        return Err(unusable("holds no certificate".to_owned()));
    }
    Ok(roots)
}

/// What `prefer` and `require` check of the server's certificate: nothing
/// (as libpq), so the link is encrypted but the server is not
/// authenticated. The handshake's signatures are still verified: they
/// prove the server holds the key of the certificate it sent.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the whole of webpki's check except the host name. webpki
/// checks the chain (and validity dates) before the name, so a
/// "not valid for name" error means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// One line for a refused certificate: what is wrong with it, and what
/// to do. `root_cert` is the URL's `sslrootcert`, if it has one.
pub fn certificate_refused(
    error: &CertificateError,
    mode: SslMode,
    root_cert: Option<&Path>,
) -> String {
    use CertificateError as E;
    let (what, to_do) = match error {
        E::UnknownIssuer => (
            "is not signed by a trusted CA".to_owned(),
            match root_cert {
                Some(file) => format!(
                    "sslrootcert '{}' does not hold the CA that signed it: give that CA's PEM \
                     file",
                    shown(&file.display().to_string())
                ),
                None => "give the CA that signed it with sslrootcert=/path/ca.pem in the URL \
                         (sslmode=require encrypts without checking the certificate)"
                    .to_owned(),
            },
        ),
        E::NotValidForName | E::NotValidForNameContext { .. } => (
            "is not issued for the URL's host name".to_owned(),
            "connect by a name the certificate holds, or write sslmode=verify-ca to check \
             only that a trusted CA signed it"
                .to_owned(),
        ),
        E::Expired | E::ExpiredContext { .. } => (
            "has expired".to_owned(),
            "the server needs a new certificate".to_owned(),
        ),
        E::NotValidYet | E::NotValidYetContext { .. } => (
            "is not valid yet".to_owned(),
            "check this host's clock".to_owned(),
        ),
        other => (
            format!("is refused ({other:?})"),
            "check the server's certificate".to_owned(),
        ),
    };
    format!(
        "the server's certificate {what} (sslmode={}): {to_do}",
        mode.name()
    )
}

#[cfg(test)]
mod tests {
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
            for _ in 0..20 {
                drop(connect(&store).unwrap());
            }
            begun.elapsed() / 20
        };
        eprintln!(
            "connect time (average of 20): sslmode=disable {:?}, sslmode=require {:?}, \
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
        let error =
            parse_store_url("postgres://u:s3cret@h/db?sslmode=allow", &sources).unwrap_err();
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
}
