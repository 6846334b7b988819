//! The benchmark's handle on its server: `serve` started in a child
//! process, its address, its request counters, and stopping it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::measure::children_cpu;
use crate::server::PAGE_PATH;
use crate::Engine;

/// The benchmark server, running in a child process.
pub struct ServerProcess {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub _stdout: BufReader<ChildStdout>,
    pub addr: SocketAddr,
    pub engine: Engine,
}

/// What the fast server saw (the fixture engine has no such endpoint).
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerStats {
    pub requests: u64,
    pub repeats: u64,
    pub other: u64,
    pub peak: u64,
    pub first_ns: u64,
    pub last_ns: u64,
    /// Detail page requests (`serve --detail`), and repeated ones.
    pub detail_requests: u64,
    pub detail_repeats: u64,
}

impl ServerProcess {
    pub fn start(
        engine: Engine,
        latency_ms: u64,
        pages: u64,
        padding: usize,
    ) -> Result<ServerProcess> {
        ServerProcess::start_serving(engine, latency_ms, pages, padding, false)
    }

    /// `start`, and with `detail` a detail page for every listed item.
    pub fn start_serving(
        engine: Engine,
        latency_ms: u64,
        pages: u64,
        padding: usize,
        detail: bool,
    ) -> Result<ServerProcess> {
        let exe = std::env::current_exe().context("cannot find this binary")?;
        let mut command = Command::new(exe);
        if detail {
            command.arg("serve").arg("--detail");
        } else {
            command.arg("serve");
        }
        let mut child = command
            .arg("--engine")
            .arg(match engine {
                Engine::Fast => "fast",
                Engine::Fixture => "fixture",
            })
            .arg("--latency-ms")
            .arg(latency_ms.to_string())
            .arg("--pages")
            .arg(pages.to_string())
            .arg("--padding")
            .arg(padding.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("cannot start the benchmark server")?;
        let stdin = child.stdin.take();
        let mut stdout = BufReader::new(child.stdout.take().context("no server stdout")?);
        let mut line = String::new();
        stdout.read_line(&mut line)?;
        let addr = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .with_context(|| format!("the server said {line:?}, not its address"))?;
        if !addr.ip().is_loopback() {
            bail!("the server listens on {addr}, not on loopback");
        }
        Ok(ServerProcess {
            child,
            stdin,
            _stdout: stdout,
            addr,
            engine,
        })
    }

    pub fn url_template(&self) -> String {
        format!("http://{}{PAGE_PATH}{{page}}", self.addr)
    }

    pub fn stats(&self) -> Option<ServerStats> {
        if self.engine != Engine::Fast {
            return None;
        }
        let text = http_get(self.addr, "/__bench/stats").ok()?;
        let value: serde_json::Value = serde_json::from_str(&text).ok()?;
        let field = |name: &str| value.get(name).and_then(|v| v.as_u64()).unwrap_or(0);
        Some(ServerStats {
            requests: field("requests"),
            repeats: field("repeats"),
            other: field("other"),
            peak: field("peak"),
            first_ns: field("first_ns"),
            last_ns: field("last_ns"),
            detail_requests: field("detail_requests"),
            detail_repeats: field("detail_repeats"),
        })
    }

    pub fn reset(&self) {
        if self.engine == Engine::Fast {
            let _ = http_get(self.addr, "/__bench/reset");
        }
    }

    /// Closes the server's stdin (it exits), reaps it, and returns its CPU
    /// time.
    pub fn stop(mut self) -> Result<Duration> {
        let before = children_cpu()?;
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if self.child.try_wait()?.is_some() {
                break;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            thread::sleep(Duration::from_millis(5));
        }
        Ok(children_cpu()?.saturating_sub(before))
    }
}

/// A one-shot GET on a fresh connection; returns the body.
pub fn http_get(addr: SocketAddr, target: &str) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    let (_, body) = text
        .split_once("\r\n\r\n")
        .context("no end of headers in the answer")?;
    Ok(body.to_string())
}
