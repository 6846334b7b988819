//! The test harness: a job in a temporary folder against a fixture server
//! on 127.0.0.1, driven through the real `pagecrawl` binary.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pagecrawl::fixture::wooyun::{self, Bug};
use pagecrawl::fixture::{Server, Site};

/// How long any single command may take before the test fails.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// A crawl job: a fixture site, a config file and a state directory.
pub struct Job {
    pub dir: tempfile::TempDir,
    pub server: Server,
    pub site: Site,
    pub pages: String,
    pub concurrency: usize,
    /// Extra config lines.
    pub extra: Vec<String>,
    /// A `pattern = ...` line instead of the example's.
    pub pattern: Option<String>,
}

impl Job {
    pub fn new(site: Site) -> Job {
        let server = Server::start(site.clone()).expect("fixture server starts");
        Job {
            dir: tempfile::tempdir().expect("temp dir"),
            server,
            pages: format!("1..={}", site.pages),
            site,
            concurrency: 8,
            // Fast retries keep fault tests quick.
            extra: vec![
                "backoff = \"20ms\"".into(),
                "max_backoff = \"200ms\"".into(),
            ],
            pattern: None,
        }
    }

    pub fn pages(mut self, pages: &str) -> Job {
        self.pages = pages.to_string();
        self
    }

    /// Uses this `pattern = ...` line instead of the example's.
    pub fn pattern(mut self, line: &str) -> Job {
        self.pattern = Some(line.to_string());
        self
    }

    pub fn concurrency(mut self, concurrency: usize) -> Job {
        self.concurrency = concurrency;
        self
    }

    pub fn with(mut self, line: &str) -> Job {
        let key = line
            .split('=')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        self.extra
            .retain(|l| l.split('=').next().unwrap_or_default().trim() != key);
        self.extra.push(line.to_string());
        self
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("job.toml")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Writes the config: the example config's pattern, this job's URL,
    /// range, concurrency and extra lines.
    pub fn write_config(&self) -> PathBuf {
        let example = include_str!("../../data/wooyun.toml");
        let pattern = match &self.pattern {
            Some(line) => line.as_str(),
            None => example
                .lines()
                .find(|l| l.starts_with("pattern ="))
                .expect("example has a pattern"),
        };
        let mut text = format!(
            "url = \"{}\"\npages = \"{}\"\n{pattern}\nconcurrency = {}\n",
            self.server.url_template(),
            self.pages,
            self.concurrency
        );
        for line in &self.extra {
            text.push_str(line);
            text.push('\n');
        }
        std::fs::write(self.config_path(), text).expect("config written");
        self.config_path()
    }

    /// `pagecrawl ARGS` with the state directory flag appended where the
    /// command takes one.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut command = pagecrawl(args);
        if matches!(
            args.first(),
            Some(
                &("run"
                    | "status"
                    | "queue"
                    | "enqueue"
                    | "retry"
                    | "export"
                    | "pause"
                    | "resume"
                    | "repair"
                    | "reopen"
                    | "metrics")
            )
        ) {
            command.arg("--state-dir").arg(self.state_dir());
        }
        if args.first() == Some(&"run") || args.first() == Some(&"try") {
            command.arg("--config").arg(self.write_config());
        }
        command
    }

    /// Runs a command to completion.
    pub fn exec(&self, args: &[&str]) -> Output {
        finish(
            self.command(args).spawn().expect("pagecrawl starts"),
            COMMAND_TIMEOUT,
        )
    }

    /// Runs `pagecrawl run` to completion and checks it succeeded.
    pub fn run_ok(&self) -> Output {
        let output = self.exec(&["run"]);
        assert_success(&output);
        output
    }

    /// Runs `pagecrawl run` to completion on a job with pages that fail
    /// for good, and checks it finished with exit 8.
    pub fn run_with_failures(&self) -> Output {
        let output = self.exec(&["run"]);
        assert_finished_with_failures(&output);
        output
    }

    /// `pagecrawl run` with pagecrawl's debug log on stderr (one line per
    /// commit group, per failed request...), checked to succeed.
    pub fn run_logged(&self) -> Output {
        let mut run = self.command(&["run"]);
        run.env("RUST_LOG", "pagecrawl=debug");
        let output = finish(run.spawn().expect("pagecrawl starts"), COMMAND_TIMEOUT);
        assert_success(&output);
        output
    }

    /// Starts `pagecrawl run` in the background.
    pub fn spawn_run(&self) -> Running {
        Running::new(self.command(&["run"]).spawn().expect("pagecrawl starts"))
    }

    /// Waits until a running crawl answers on its control socket.
    pub fn wait_for_daemon(&self) {
        let socket = self.state_dir().join("control.sock");
        assert!(
            wait_until(Duration::from_secs(30), || socket.exists()
                && std::os::unix::net::UnixStream::connect(&socket).is_ok()),
            "the daemon's control socket did not appear"
        );
    }

    /// Rewrites one `key = value` line of the written config.
    pub fn edit_config(&self, key: &str, line: &str) {
        let path = self.config_path();
        let text = std::fs::read_to_string(&path).expect("config exists");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| l.split('=').next().unwrap_or_default().trim() != key)
            .map(str::to_string)
            .collect();
        lines.push(line.to_string());
        std::fs::write(&path, lines.join("\n") + "\n").expect("config rewritten");
    }

    /// `status --json`, parsed.
    pub fn status(&self) -> serde_json::Value {
        let output = self.exec(&["status", "--json"]);
        assert_success(&output);
        serde_json::from_slice(&output.stdout).expect("status --json is JSON")
    }

    pub fn output_path(&self, name: &str) -> PathBuf {
        self.state_dir().join(name)
    }

    /// The items in the JSON Lines output, as bugs.
    pub fn output_bugs(&self) -> Vec<Bug> {
        read_jsonl_bugs(&self.output_path("items.jsonl"))
    }

    /// The bugs pages `pages` should yield.
    pub fn expected_bugs(&self, pages: impl IntoIterator<Item = u64>) -> Vec<Bug> {
        pages
            .into_iter()
            .flat_map(|p| wooyun::bugs_on_page(p, self.site.per_page))
            .collect()
    }
}

pub use pagecrawl::fixture::ENVIRONMENT_TO_DROP;

/// The binary, with the environment a test needs: no proxy settings (the
/// fixture is on loopback) and no inherited log filter.
pub fn pagecrawl(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pagecrawl"));
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in ENVIRONMENT_TO_DROP {
        command.env_remove(var);
    }
    command
}

/// A process in the background that is killed when the test ends, even
/// by a failed assertion, so no test leaves a crawler running.
pub struct Running(Option<Child>);

impl Running {
    pub fn new(child: Child) -> Running {
        Running(Some(child))
    }
}

impl std::ops::Deref for Running {
    type Target = Child;
    fn deref(&self) -> &Child {
        self.0.as_ref().expect("the child is still owned")
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut Child {
        self.0.as_mut().expect("the child is still owned")
    }
}

impl From<Running> for Child {
    fn from(mut running: Running) -> Child {
        running.0.take().expect("the child is still owned")
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits for a child with a timeout (killing it and failing the test if it
/// runs over), and collects its output. The pipes are drained while waiting,
/// so a command that prints a lot cannot block on a full pipe.
pub fn finish(child: impl Into<Child>, timeout: Duration) -> Output {
    let child: Child = child.into();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(output) => output.expect("output collected"),
        Err(_) => {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
            let output = rx
                .recv()
                .expect("killed child is reaped")
                .expect("output collected");
            panic!(
                "pagecrawl ran over {timeout:?}; stderr:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// Polls `condition` until it holds or `timeout` passes; true if it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    while started.elapsed() < timeout {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    condition()
}

/// Sends a signal to a child by name (`TERM`, `INT`, `KILL`).
pub fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(child.id().to_string())
        .status()
        .expect("kill runs");
    assert!(status.success(), "kill -{name} failed");
}

pub fn assert_success(output: &Output) {
    assert!(
        output.status.success(),
        "pagecrawl failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A run that finished with pages failed for good: exit 8.
pub fn assert_finished_with_failures(output: &Output) {
    assert!(
        output.status.code() == Some(8) && stdout(output).contains("finished:"),
        "expected a finished run with failed pages, exit 8 ({:?}):\nstdout:\n{}\nstderr:\n{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Reads a JSON Lines output into bugs; panics on any malformed line.
pub fn read_jsonl_bugs(path: &Path) -> Vec<Bug> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "the output ends with a partial line"
    );
    text.lines()
        .map(|line| {
            let v: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("bad line {line:?}: {e}"));
            let field = |name: &str| {
                v[name]
                    .as_str()
                    .unwrap_or_else(|| panic!("no {name} in {line}"))
                    .to_string()
            };
            Bug {
                page: v["page"].as_u64().expect("page"),
                date: field("date"),
                url: field("url"),
                title: field("title"),
                author: field("author"),
            }
        })
        .collect()
}

/// Asserts two multisets of bugs are equal, reporting what is missing and
/// what is duplicated rather than dumping both lists.
pub fn assert_same_items(actual: &[Bug], expected: &[Bug]) {
    let mut counts: BTreeMap<&Bug, i64> = BTreeMap::new();
    for bug in expected {
        *counts.entry(bug).or_default() += 1;
    }
    for bug in actual {
        *counts.entry(bug).or_default() -= 1;
    }
    let missing: Vec<_> = counts
        .iter()
        .filter(|(_, &c)| c > 0)
        .map(|(b, _)| (b.page, b.url.clone()))
        .collect();
    let extra: Vec<_> = counts
        .iter()
        .filter(|(_, &c)| c < 0)
        .map(|(b, c)| (b.page, b.url.clone(), -c))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{} items missing (first: {:?}), {} unexpected or duplicated (first: {:?}); {} actual vs {} expected",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first(),
        actual.len(),
        expected.len()
    );
}

/// Runs `pagecrawl run` to completion while sampling its peak resident
/// memory (`VmHWM`, KiB) every 20 ms.
pub fn run_watching_memory(job: &Job) -> (std::process::Output, u64) {
    let child = job.spawn_run();
    let status_path = format!("/proc/{}/status", child.id());
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = std::thread::spawn(move || {
        let mut peak_kb = 0;
        while rx.try_recv().is_err() {
            if let Ok(text) = std::fs::read_to_string(&status_path) {
                if let Some(kb) = text
                    .lines()
                    .find(|l| l.starts_with("VmHWM:"))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    peak_kb = peak_kb.max(kb);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        peak_kb
    });
    let output = finish(child, COMMAND_TIMEOUT);
    let _ = tx.send(());
    (output, watcher.join().unwrap_or(0))
}

/// A campaign's seed: `PAGECRAWL_CAMPAIGN_SEED` to replay one, else the
/// clock.
pub fn campaign_seed() -> u64 {
    std::env::var("PAGECRAWL_CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Starts `run` again and again, each time SIGKILLing it after a delay
/// drawn from `seed` (a third of them in the first 60 ms: opening the
/// state, truncating the output, the first requests; the rest up to
/// `late_ms`), until `wanted` kills landed or a run finished first.
/// Returns the kills.
pub fn kill_at_random_moments(job: &Job, seed: u64, wanted: u32, late_ms: u64) -> u32 {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut kills = 0;
    let mut attempts = 0;
    while kills < wanted && attempts < wanted * 3 {
        attempts += 1;
        let mut child = job.spawn_run();
        let delay = if rng.u8(0..3) == 0 {
            rng.u64(0..60)
        } else {
            rng.u64(60..late_ms)
        };
        let exited = wait_until(Duration::from_millis(delay), || {
            child.try_wait().ok().flatten().is_some()
        });
        if !exited {
            signal(&child, "KILL");
            kills += 1;
        }
        let _ = child.wait();
        if exited {
            break;
        }
    }
    kills
}
