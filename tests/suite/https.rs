//! HTTPS as curl and wget do it: a listing behind a private CA is refused
//! with one line naming `ca_file`, and trusted through `ca_file`,
//! `SSL_CERT_FILE` or, insecurely, `tls_insecure_skip_verify`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use pagecrawl::fixture::{page_body, wooyun, Site};

#[path = "../../src/fixture/test_ca.rs"]
mod test_ca;

use crate::harness::{
    assert_same_items, assert_success, finish, pagecrawl, read_jsonl_bugs, stderr, COMMAND_TIMEOUT,
};

const PAGES: u64 = 3;

/// A CA made here, the PEM of its certificate, and a TLS server on
/// 127.0.0.1 whose certificate (IP SAN 127.0.0.1) the CA signed, serving
/// the fixture's listing pages.
struct HttpsSite {
    dir: tempfile::TempDir,
    addr: SocketAddr,
    site: Site,
}

impl HttpsSite {
    fn start() -> HttpsSite {
        let mut leaf_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        leaf_params.subject_alt_names = vec![rcgen::SanType::IpAddress([127, 0, 0, 1].into())];
        let issued = test_ca::issue(leaf_params);

        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &issued.ca_pem).unwrap();

        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(issued.key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![issued.certificate.der().clone()], key)
        .unwrap();
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let site = Site {
            pages: PAGES,
            padding: 100,
            ..Site::default()
        };
        let served = site.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (config, site) = (config.clone(), served.clone());
                std::thread::spawn(move || serve(config, stream, &site));
            }
        });
        HttpsSite { dir, addr, site }
    }

    fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A job over this site in its own folder, with extra config lines.
    fn job(&self, name: &str, extra: &str) -> PathBuf {
        let example = include_str!("../../data/wooyun.toml");
        let pattern = example
            .lines()
            .find(|l| l.starts_with("pattern ="))
            .unwrap();
        let folder = self.dir.path().join(name);
        std::fs::create_dir(&folder).unwrap();
        let config = folder.join("job.toml");
        std::fs::write(
            &config,
            format!(
                "url = \"https://{}/wooyun/bugs.php?page={{page}}\"\npages = \"1..={PAGES}\"\n\
                 {pattern}\nretries = 0\n{extra}\n",
                self.addr
            ),
        )
        .unwrap();
        config
    }

    fn expected(&self) -> Vec<wooyun::Bug> {
        (1..=PAGES)
            .flat_map(|p| wooyun::bugs_on_page(p, self.site.per_page))
            .collect()
    }
}

/// One TLS connection: requests answered in turn (kept alive) until the
/// client closes it or the handshake fails.
fn serve(config: Arc<rustls::ServerConfig>, stream: TcpStream, site: &Site) {
    let Ok(connection) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(connection, stream);
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") else {
            match tls.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buffer[..end]).to_string();
        buffer.drain(..end + 4);
        let target = head.split(' ').nth(1).unwrap_or("/");
        let page = target
            .split_once("page=")
            .and_then(|(_, n)| n.parse::<u64>().ok());
        let (status, body) = match page {
            Some(page) => ("200 OK", page_body(site, page)),
            None => ("404 Not Found", b"not found".to_vec()),
        };
        let answer = format!(
            "HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        if tls.write_all(answer.as_bytes()).is_err() || tls.write_all(&body).is_err() {
            return;
        }
        let _ = tls.flush();
    }
}

/// `pagecrawl run` of the job at `config`, with `SSL_CERT_FILE` set to
/// `cert_file` when given (and unset otherwise).
fn run(config: &Path, cert_file: Option<&Path>) -> Output {
    let mut command = pagecrawl(&["run", "--config"]);
    command.arg(config);
    command
        .arg("--state-dir")
        .arg(config.with_file_name("state"));
    command
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR");
    if let Some(file) = cert_file {
        command.env("SSL_CERT_FILE", file);
    }
    finish(command.spawn().unwrap(), COMMAND_TIMEOUT)
}

fn items(config: &Path) -> Vec<wooyun::Bug> {
    read_jsonl_bugs(&config.with_file_name("state").join("items.jsonl"))
}

#[test]
fn a_private_ca_is_refused_with_one_line_naming_ca_file_and_trusted_through_it() {
    let site = HttpsSite::start();

    let untrusted = site.job("untrusted", "");
    let refused = run(&untrusted, None);
    let log = stderr(&refused);
    assert!(!refused.status.success(), "{log}");
    assert!(
        log.contains(
            "the server's certificate is not trusted (issuer unknown): if the site uses a \
             private CA, set ca_file = \"/path/ca.pem\" (or SSL_CERT_FILE)"
        ),
        "{log}"
    );
    assert!(!log.contains("invalid peer certificate"), "{log}");
    assert!(items(&untrusted).is_empty());

    // `try` says the same, in one line, and exits non-zero.
    let mut command = pagecrawl(&["try", "--config"]);
    command.arg(&untrusted).env_remove("SSL_CERT_FILE");
    let tried = finish(command.spawn().unwrap(), COMMAND_TIMEOUT);
    let log = stderr(&tried);
    assert!(!tried.status.success(), "{log}");
    assert!(log.contains("set ca_file = \"/path/ca.pem\""), "{log}");

    let trusted = site.job(
        "ca_file",
        &format!("ca_file = {:?}", site.ca_pem().display().to_string()),
    );
    let output = run(&trusted, None);
    assert_success(&output);
    assert_same_items(&items(&trusted), &site.expected());
    assert!(!stderr(&output).contains("tls_insecure_skip_verify"));
}

#[test]
fn ssl_cert_file_and_ssl_cert_dir_are_the_trust_store_as_for_curl() {
    let site = HttpsSite::start();
    let config = site.job("ssl_cert_file", "");
    let output = run(&config, Some(&site.ca_pem()));
    assert_success(&output);
    assert_same_items(&items(&config), &site.expected());

    let store = site.dir.path().join("certs");
    std::fs::create_dir(&store).unwrap();
    std::fs::copy(site.ca_pem(), store.join("test-ca.pem")).unwrap();
    let config = site.job("ssl_cert_dir", "");
    let mut command = pagecrawl(&["run", "--config"]);
    command.arg(&config);
    command
        .arg("--state-dir")
        .arg(config.with_file_name("state"));
    command
        .env_remove("SSL_CERT_FILE")
        .env("SSL_CERT_DIR", &store);
    let output = finish(command.spawn().unwrap(), COMMAND_TIMEOUT);
    assert_success(&output);
    assert_same_items(&items(&config), &site.expected());
}

#[test]
fn skipping_verification_works_and_warns_on_every_run() {
    let site = HttpsSite::start();
    let config = site.job("insecure", "tls_insecure_skip_verify = true");
    let output = run(&config, None);
    assert_success(&output);
    assert_same_items(&items(&config), &site.expected());
    let log = stderr(&output);
    assert_eq!(
        log.matches("tls_insecure_skip_verify = true: server certificates are not checked")
            .count(),
        1,
        "{log}"
    );
    assert!(log.contains("WARN"), "{log}");
}

#[test]
fn a_ca_file_that_is_missing_or_holds_no_certificate_is_refused_at_start() {
    let site = HttpsSite::start();
    let missing = site.job("missing", "ca_file = \"nowhere.pem\"");
    let output = run(&missing, None);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let log = stderr(&output);
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.contains("key 'ca_file': cannot read"), "{log}");
    assert!(log.contains("nowhere.pem"), "{log}");

    let folder = site.dir.path().join("empty");
    let empty = site.job("empty", "ca_file = \"ca.pem\"");
    std::fs::write(folder.join("ca.pem"), "not a certificate\n").unwrap();
    let output = run(&empty, None);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    let log = stderr(&output);
    assert_eq!(log.trim().lines().count(), 1, "{log}");
    assert!(log.contains("holds no certificate"), "{log}");
    assert!(!config_state_exists(&empty));
}

fn config_state_exists(config: &Path) -> bool {
    config.with_file_name("state").exists()
}
