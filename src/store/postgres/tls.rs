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
//! system's store (`SSL_CERT_FILE`, `SSL_CERT_DIR`, /etc/ssl/certs), as
//! `sslrootcert=system` asks (libpq without `sslrootcert` would look for
//! `~/.postgresql/root.crt` instead, and fail without it).
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
#[path = "tls_tests.rs"]
mod tests;
