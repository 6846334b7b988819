//! `metrics_listen`: `GET /metrics` over HTTP (`tiny_http`), for Prometheus
//! to scrape. There is no authentication, so the address must be a
//! loopback one unless the config says `metrics_allow_remote = true`.
//!
//! The socket is bound before the crawl opens its state, so a port already
//! taken stops `run` with one line and nothing changed; requests are then
//! answered one at a time by a thread of their own, apart from the crawl.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use anyhow::{anyhow, Context, Result};

use super::CONTENT_TYPE;

/// Validates `metrics_listen`: an IP address and port (a host name could
/// resolve to anything), on loopback unless `allow_remote`.
pub fn listen_address(text: &str, allow_remote: bool) -> Result<SocketAddr, String> {
    let address: SocketAddr = text.trim().parse().map_err(|_| {
        format!(
            "'{}' is not an IP address and port; write e.g. \"127.0.0.1:9464\" (or \"[::1]:9464\")",
            crate::util::shown(text)
        )
    })?;
    if !address.ip().is_loopback() && !allow_remote {
        return Err(format!(
            "{address} is reachable from other hosts, and /metrics has no authentication; \
             serve it on loopback (\"127.0.0.1:{}\") behind your own proxy, or set \
             metrics_allow_remote = true to expose it there",
            address.port()
        ));
    }
    Ok(address)
}

/// The bound `metrics_listen` socket; serving stops when it is dropped.
pub struct MetricsListener {
    server: Arc<tiny_http::Server>,
    address: SocketAddr,
    thread: Option<JoinHandle<()>>,
}

impl MetricsListener {
    /// Binds `address` (port 0: any free port; see [`Self::address`]).
    pub fn bind(address: SocketAddr) -> Result<MetricsListener> {
        let server = tiny_http::Server::http(address).map_err(|e| {
            anyhow!(
                "cannot serve metrics on {address} (metrics_listen): {e}; stop what holds the port or choose another"
            )
        })?;
        let address = server.server_addr().to_ip().unwrap_or(address);
        Ok(MetricsListener {
            server: Arc::new(server),
            address,
            thread: None,
        })
    }

    /// The address bound (the port chosen, when 0 was asked).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Answers `GET /metrics` with what `render` returns, until dropped.
    pub fn serve(&mut self, render: impl Fn() -> Result<String> + Send + 'static) -> Result<()> {
        let server = self.server.clone();
        let thread = std::thread::Builder::new()
            .name("metrics".into())
            .spawn(move || {
                for request in server.incoming_requests() {
                    let response = respond(request.method(), request.url(), &render);
                    if let Err(e) = request.respond(response) {
                        log::debug!("metrics: cannot answer a scrape: {e}");
                    }
                }
            })
            .context("cannot start the metrics thread")?;
        self.thread = Some(thread);
        Ok(())
    }
}

impl Drop for MetricsListener {
    fn drop(&mut self) {
        self.server.unblock();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

type Response = tiny_http::Response<std::io::Cursor<Vec<u8>>>;

/// The answer to one request: the metrics, or why not.
fn respond(method: &tiny_http::Method, url: &str, render: &dyn Fn() -> Result<String>) -> Response {
    let text = |code: u16, body: String| {
        tiny_http::Response::from_string(body)
            .with_status_code(code)
            .with_header(header("Content-Type", "text/plain; charset=utf-8"))
    };
    let path = url.split('?').next().unwrap_or(url);
    if path != "/metrics" {
        return text(404, "pagecrawl serves /metrics only\n".into());
    }
    if !matches!(method, tiny_http::Method::Get | tiny_http::Method::Head) {
        return text(405, "GET /metrics\n".into()).with_header(header("Allow", "GET, HEAD"));
    }
    match render() {
        Ok(body) => {
            tiny_http::Response::from_string(body).with_header(header("Content-Type", CONTENT_TYPE))
        }
        Err(e) => {
            log::warn!("metrics: {}", crate::error::one_line(&e));
            text(500, format!("{}\n", crate::error::one_line(&e)))
        }
    }
}

fn header(name: &str, value: &str) -> tiny_http::Header {
    tiny_http::Header::from_bytes(name.as_bytes(), value.as_bytes())
        .unwrap_or_else(|()| unreachable!("a constant header is valid"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_the_default_and_anything_else_needs_consent() {
        assert_eq!(
            listen_address("127.0.0.1:9464", false),
            Ok("127.0.0.1:9464".parse().unwrap())
        );
        assert!(listen_address("[::1]:9464", false).is_ok());
        let refused = listen_address("0.0.0.0:9464", false).unwrap_err();
        assert!(
            refused.contains("metrics_allow_remote = true") && refused.contains("127.0.0.1:9464"),
            "{refused}"
        );
        assert!(listen_address("192.168.1.5:9464", false).is_err());
        assert!(listen_address("0.0.0.0:9464", true).is_ok());
        let name = listen_address("localhost:9464", false).unwrap_err();
        assert!(name.contains("not an IP address and port"), "{name}");
        assert!(
            listen_address("127.0.0.1", false).is_err(),
            "a port is needed"
        );
    }

    #[test]
    fn only_get_and_head_of_metrics_are_answered() {
        let ok = || Ok("pagecrawl_running 1\n# EOF\n".to_string());
        let get = tiny_http::Method::Get;
        assert_eq!(respond(&get, "/metrics", &ok).status_code().0, 200);
        assert_eq!(respond(&get, "/metrics?x=1", &ok).status_code().0, 200);
        assert_eq!(respond(&get, "/", &ok).status_code().0, 404);
        assert_eq!(
            respond(&tiny_http::Method::Post, "/metrics", &ok)
                .status_code()
                .0,
            405
        );
        let failing = || Err(anyhow!("the store is gone"));
        assert_eq!(respond(&get, "/metrics", &failing).status_code().0, 500);
    }
}
