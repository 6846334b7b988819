//! What a newcomer sees: the progress bar and `status` on a real terminal
//! (tmux, compared with the shapes they must have), no bar where there is
//! no terminal or with `-q`, `--help` with an example for every command,
//! completions and the man page, `init`, `try`'s highlighting and hints,
//! and the README's configuration table and `status --json` field list held
//! to the code.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clap::CommandFactory;
use pagecrawl::fixture::{Faults, Hostile, Site};
use regex::Regex;

use crate::harness::*;

/// How long a screen may take to show what a test waits for.
const SCREEN_TIMEOUT: Duration = Duration::from_secs(90);

/// A private tmux server (its own socket) whose sessions run `pagecrawl`
/// on a 120×30 terminal. Dropping it kills the server and any crawl a
/// session started (its pid file names it).
struct Tmux {
    socket: String,
    config: PathBuf,
    script: PathBuf,
    /// `run.pid` files of the state directories crawls use.
    pid_files: Vec<PathBuf>,
}

impl Tmux {
    /// Needs `tmux` on PATH (CI installs it: see `.ci/run`).
    fn new(dir: &Path, name: &str) -> Tmux {
        let config = dir.join("tmux.conf");
        // Panes stay readable after their command exits.
        std::fs::write(
            &config,
            "set -g remain-on-exit on\nset -g default-size 120x30\nset -g history-limit 2000\n",
        )
        .unwrap();
        // Each session waits for its `go` file, so that a test can attach
        // `pipe-pane` before the first byte; then runs pagecrawl with its
        // arguments and shows the exit code. The shell ignores Ctrl-C itself
        // (a trap is not inherited), so it survives to print that code.
        let script = dir.join("session.sh");
        std::fs::write(
            &script,
            format!(
                "trap : INT\nwhile [ ! -e \"$1\" ]; do sleep 0.05; done\nshift\n\"{}\" \"$@\"\necho \"[exit $?]\"\n",
                env!("CARGO_BIN_EXE_pagecrawl")
            ),
        )
        .unwrap();
        Tmux {
            socket: format!("pagecrawl-ux-{}-{name}", std::process::id()),
            config,
            script,
            pid_files: Vec::new(),
        }
    }

    fn tmux(&self, args: &[&str]) -> Output {
        let mut command = Command::new("tmux");
        command
            .arg("-u")
            .arg("-L")
            .arg(&self.socket)
            .arg("-f")
            .arg(&self.config)
            .args(args)
            .stdin(Stdio::null())
            .env("LANG", "C.UTF-8")
            .env("TERM", "xterm-256color");
        for var in ENVIRONMENT_TO_DROP.iter().chain(&["TMUX"]) {
            command.env_remove(var);
        }
        let output = command
            .output()
            .expect("tmux runs (install it: apt-get install tmux)");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Starts `pagecrawl ARGS` in a new session; it begins once the
    /// session's go file exists (see [`Tmux::go`]).
    fn start(&self, session: &str, args: &[&str]) {
        let go = self.go_file(session);
        let mut command = vec![
            "new-session",
            "-d",
            "-s",
            session,
            "-x",
            "120",
            "-y",
            "30",
            "sh",
        ];
        let script = self.script.to_str().unwrap();
        let go_path = go.to_str().unwrap();
        command.push(script);
        command.push(go_path);
        command.extend_from_slice(args);
        self.tmux(&command);
    }

    fn go_file(&self, session: &str) -> PathBuf {
        self.config.with_file_name(format!("{session}.go"))
    }

    fn go(&self, session: &str) {
        std::fs::write(self.go_file(session), "").unwrap();
    }

    /// Starts `pagecrawl ARGS` at once.
    fn run(&self, session: &str, args: &[&str]) {
        self.start(session, args);
        self.go(session);
    }

    /// What the terminal shows (and what scrolled off it), wrapped lines
    /// joined, without trailing blanks and tmux's own "Pane is dead" line.
    fn screen(&self, session: &str) -> String {
        let output = self.tmux(&["capture-pane", "-p", "-J", "-S", "-", "-t", session]);
        let text = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = text
            .lines()
            .map(str::trim_end)
            .filter(|l| !l.starts_with("Pane is dead"))
            .collect();
        let end = lines
            .iter()
            .rposition(|l| !l.is_empty())
            .map_or(0, |i| i + 1);
        lines[..end].join("\n")
    }

    /// Polls the screen until `ready` holds; fails the test with the last
    /// screen if it never does.
    fn wait_for(&self, session: &str, what: &str, ready: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let held = wait_until(SCREEN_TIMEOUT, || {
            last = self.screen(session);
            ready(&last)
        });
        assert!(held, "the screen never showed {what}:\n{last}");
        last
    }

    fn keys(&self, session: &str, keys: &str) {
        self.tmux(&["send-keys", "-t", session, keys]);
    }

    /// Records everything the session writes to its terminal in `file`.
    fn record(&self, session: &str, file: &Path) {
        let command = format!("cat >> {}", file.display());
        self.tmux(&["pipe-pane", "-o", "-t", session, &command]);
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        for file in &self.pid_files {
            if let Some(pid) = std::fs::read_to_string(file)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            {
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .arg(pid.to_string())
                    .status();
            }
        }
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .stderr(Stdio::null())
            .status();
    }
}

/// The progress bar's line: spinner, elapsed time, bar, then the counts.
fn bar_pattern(total: u64) -> Regex {
    Regex::new(&format!(
        r"^\S \d\d:\d\d:\d\d \[[=> ]+\] (\d+)/{total} pages  (--|\d+\.\d) pages/s  ETA (--|[0-9hms]+)  (\d+) items  (\d+) retries  (\d+) failed$"
    ))
    .unwrap()
}

fn bar_lines<'a>(screen: &'a str, bar: &Regex) -> Vec<&'a str> {
    screen.lines().filter(|l| bar.is_match(l)).collect()
}

/// Asserts each line of `screen` matches the pattern at its position.
fn assert_lines(screen: &str, patterns: &[&str]) {
    let lines: Vec<&str> = screen.lines().collect();
    assert_eq!(
        lines.len(),
        patterns.len(),
        "expected {} lines, the screen has {}:\n{screen}",
        patterns.len(),
        lines.len()
    );
    for (line, pattern) in lines.iter().zip(patterns) {
        let pattern = Regex::new(&format!("^{pattern}$")).unwrap();
        assert!(
            pattern.is_match(line),
            "line {line:?} does not match {pattern}; screen:\n{screen}"
        );
    }
}

#[test]
fn the_progress_bar_and_status_read_well_in_a_terminal() {
    // 2000 pages at 50 ms with two connections take over 50 s, far longer
    // than the test looks at them; it stops the crawl with Ctrl-C.
    let site = Site {
        pages: 2000,
        latency: Duration::from_millis(50),
        faults: Faults {
            always_fail: vec![3, 7],
            ..Faults::default()
        },
        ..Site::default()
    };
    let job = Job::new(site).concurrency(2).with("retries = 1");
    let config = job.write_config();
    let state = job.state_dir();
    let (config, state_text) = (config.to_str().unwrap(), state.to_str().unwrap());
    let mut tmux = Tmux::new(job.dir.path(), "bar");
    tmux.pid_files.push(state.join("run.pid"));
    let bar = bar_pattern(2000);

    tmux.run(
        "crawl",
        &["run", "--config", config, "--state-dir", state_text],
    );
    let measured = |screen: &str| {
        bar_lines(screen, &bar)
            .first()
            .and_then(|line| bar.captures(line))
            .is_some_and(|c| &c[2] != "--" && &c[3] != "--" && &c[6] == "2")
    };
    let screen = tmux.wait_for(
        "crawl",
        "a bar with a rate, an ETA and 2 failures",
        measured,
    );
    println!("--- the bar mid-crawl:\n{screen}");
    let lines: Vec<&str> = screen.lines().collect();
    assert_eq!(bar_lines(&screen, &bar).len(), 1, "one bar:\n{screen}");
    assert!(
        bar.is_match(lines[lines.len() - 1]),
        "the bar is the last line:\n{screen}"
    );
    let log_line =
        Regex::new(r"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (INFO |WARN |ERROR)\] \S").unwrap();
    for line in &lines[..lines.len() - 1] {
        assert!(
            log_line.is_match(line),
            "a whole log line above the bar: {line:?}\n{screen}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("] crawling http://127.0.0.1:")),
        "{screen}"
    );

    // A log line while the bar is drawn goes above it, whole.
    let pid = std::fs::read_to_string(state.join("run.pid")).unwrap();
    let hup = Command::new("kill")
        .args(["-HUP", pid.trim()])
        .status()
        .unwrap();
    assert!(hup.success());
    let screen = tmux.wait_for("crawl", "the reload logged above the bar", |screen| {
        let lines: Vec<&str> = screen.lines().collect();
        lines.len() >= 2
            && lines[lines.len() - 2].contains("INFO ] SIGHUP: reloaded")
            && bar.is_match(lines[lines.len() - 1])
    });
    assert_eq!(
        bar_lines(&screen, &bar).len(),
        1,
        "one bar after a log line:\n{screen}"
    );
    for line in screen.lines().filter(|l| !bar.is_match(l)) {
        assert!(
            log_line.is_match(line),
            "log lines stay whole: {line:?}\n{screen}"
        );
    }

    // `status` from another terminal while it runs.
    tmux.run("status", &["status", "--state-dir", state_text]);
    let status = tmux.wait_for("status", "status output", |s| s.contains("[exit "));
    println!("--- status while it runs:\n{status}");
    let state_dir = regex::escape(state_text);
    assert_lines(
        &status,
        &[
            r"state     running \(pid \d+\)",
            r"job       http://127\.0\.0\.1:\d+/wooyun/bugs\.php\?page=\{page\}, pages 1\.\.=2000",
            r"pages     \d+ done, \d+ pending, 2 failed \(of 2000\), \d+% done",
            r"items     \d+",
            r"rate      \d+\.\d pages/s over the last minute",
            r"eta       \d+[hm]?[0-9ms]*",
            r"retries   \d+",
            r"errors    2 pages failed:",
            r"            2 × HTTP 500",
            &format!(
                r"          list them: pagecrawl queue --state failed --state-dir {state_dir}; retry: pagecrawl retry --state-dir {state_dir}"
            ),
            &format!(r"output    {state_dir}/items\.jsonl \(\d+ bytes\)"),
            &format!(r"state dir {state_dir}"),
            r"\[exit 0\]",
        ],
    );

    // Ctrl-C: the bar goes (no stale copy above the log), the summary
    // says how to resume.
    tmux.keys("crawl", "C-c");
    let screen = tmux.wait_for("crawl", "the crawl's exit", |s| s.contains("[exit "));
    println!("--- after Ctrl-C:\n{screen}");
    assert!(
        bar_lines(&screen, &bar).is_empty(),
        "no bar left behind:\n{screen}"
    );
    assert!(
        !screen.contains(" pages/s  ETA"),
        "no piece of a bar left:\n{screen}"
    );
    let tail: Vec<&str> = screen.lines().rev().take(4).collect();
    assert_eq!(tail[0], "[exit 0]", "{screen}");
    assert_eq!(
        tail[1],
        format!("2 pages failed for good: pagecrawl queue --state failed --state-dir {state_text}; pagecrawl retry --state-dir {state_text} queues them again")
    );
    assert!(
        Regex::new(r"^\d+ pages still pending; run the same command again to resume$")
            .unwrap()
            .is_match(tail[2]),
        "{screen}"
    );
    assert!(
        Regex::new(r"^stopped: \d+ pages done, 2 failed, \d+ items in \d+\.\d\d s \(\d+\.\d pages/s\); output: \S+/items\.jsonl$")
            .unwrap()
            .is_match(tail[3]),
        "{screen}"
    );
    assert!(screen.contains("INFO ] SIGINT: stopping;"), "{screen}");

    // `status` with no crawl running: idle, the last run's rate.
    tmux.run("idle", &["status", "--state-dir", state_text]);
    let idle = tmux.wait_for("idle", "status output", |s| s.contains("[exit "));
    println!("--- status after the crawl stopped:\n{idle}");
    let idle_lines: Vec<&str> = idle.lines().collect();
    assert_eq!(
        idle_lines[0],
        "state     idle: no crawl is running; `pagecrawl run` with the same config resumes"
    );
    assert!(
        Regex::new(r"^rate      \d+\.\d pages/s in the last run$")
            .unwrap()
            .is_match(idle_lines[4]),
        "{idle}"
    );
    assert!(
        Regex::new(r"^eta       [0-9hms]+ once resumed, at the last run's rate$")
            .unwrap()
            .is_match(idle_lines[5]),
        "{idle}"
    );

    // `try` on a terminal: items field by field, the first match
    // highlighted in color.
    tmux.run("try", &["try", "--config", config, "--page", "1"]);
    let shown = tmux.wait_for("try", "try's output", |s| s.contains("[exit "));
    assert!(shown.contains("page 1, item 1\n  date    20"), "{shown}");
    assert!(shown.contains("the first match (at byte "), "{shown}");
    let colored = tmux.tmux(&["capture-pane", "-p", "-e", "-J", "-t", "try"]);
    assert!(
        String::from_utf8_lossy(&colored.stdout).contains("\x1b["),
        "colors on a terminal"
    );
}

#[test]
fn quiet_and_piped_runs_draw_no_bar() {
    let site = Site {
        pages: 40,
        latency: Duration::from_millis(10),
        ..Site::default()
    };
    let job = Job::new(site).concurrency(2);
    let config = job.write_config();
    let config = config.to_str().unwrap();
    let dir = job.dir.path();
    let mut tmux = Tmux::new(dir, "quiet");
    // The same recording shows a bar without -q (so its absence with -q
    // means something) and none with it.
    for (session, quiet) in [("loud", false), ("quiet", true)] {
        let state = dir.join(format!("{session}.state"));
        tmux.pid_files.push(state.join("run.pid"));
        let raw = dir.join(format!("{session}.raw"));
        let mut args = vec![
            "run",
            "--config",
            config,
            "--state-dir",
            state.to_str().unwrap(),
        ];
        if quiet {
            args.insert(0, "-q");
        }
        tmux.start(session, &args);
        tmux.record(session, &raw);
        tmux.go(session);
        let screen = tmux.wait_for(session, "the crawl's exit", |s| s.contains("[exit "));
        assert!(
            screen.contains("finished: 40 pages done, 0 failed, 800 items"),
            "{screen}"
        );
        let written = || std::fs::read_to_string(&raw).unwrap_or_default();
        assert!(
            wait_until(SCREEN_TIMEOUT, || written().contains("[exit 0]")),
            "{}",
            written()
        );
        let written = written();
        if quiet {
            assert!(
                !written.contains("pages/s  ETA"),
                "no bar with -q: {written:?}"
            );
            assert!(
                !written.contains("INFO"),
                "no info log with -q: {written:?}"
            );
        } else {
            assert!(
                written.contains("40/40 pages") || written.contains("/40 pages  "),
                "{written:?}"
            );
            assert!(written.contains("INFO"), "{written:?}");
        }
    }

    // Piped stderr: no bar, no escape codes; the progress log instead. A
    // run of 60 pages at 100 ms on one connection lasts over 5 s, so the
    // 5-second progress line must appear.
    let slow = Job::new(Site {
        pages: 60,
        latency: Duration::from_millis(100),
        ..Site::default()
    })
    .concurrency(1);
    let output = slow.run_ok();
    let log = stderr(&output);
    assert!(!log.contains('\x1b') && !log.contains('\r'), "{log:?}");
    assert!(!log.contains("pages/s  ETA"), "{log}");
    assert!(
        Regex::new(r"(?m)INFO \] progress: \d+ done, \d+ pending, 0 failed, \d+ items, 0 retries \(\d+\.\d pages/s\)$")
            .unwrap()
            .is_match(&log),
        "{log}"
    );
    let quiet = finish(
        slow.command(&["status", "-q"]).spawn().unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_success(&quiet);
    assert!(stderr(&quiet).is_empty(), "{}", stderr(&quiet));
}

#[test]
fn every_command_has_help_with_an_example() {
    let cli = pagecrawl::cli::Cli::command();
    let names: Vec<String> = cli
        .get_subcommands()
        .map(|c| c.get_name().to_string())
        .collect();
    for expected in ["run", "status", "try", "init", "completions", "man", "demo"] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} in {names:?}"
        );
    }
    for sub in cli.get_subcommands() {
        let name = sub.get_name();
        assert!(
            sub.get_about().is_some(),
            "{name} has a one-line description"
        );
        for arg in sub.get_arguments() {
            assert!(
                arg.get_help().is_some() || arg.is_hide_set(),
                "{name} --{} has help text",
                arg.get_id()
            );
        }
        let help = finish(
            pagecrawl(&[name, "--help"]).spawn().unwrap(),
            COMMAND_TIMEOUT,
        );
        assert_success(&help);
        let text = stdout(&help);
        let example = text
            .lines()
            .skip_while(|l| !l.starts_with("Example"))
            .find(|l| l.contains("pagecrawl "));
        assert!(
            example.is_some(),
            "`pagecrawl {name} --help` shows an example:\n{text}"
        );
    }
    let top = finish(pagecrawl(&["--help"]).spawn().unwrap(), COMMAND_TIMEOUT);
    assert!(
        stdout(&top).contains("pagecrawl init myjob"),
        "{}",
        stdout(&top)
    );
    // clap's suggestions for typos, in subcommands and flags.
    let typo = finish(pagecrawl(&["stauts"]).spawn().unwrap(), COMMAND_TIMEOUT);
    assert_eq!(typo.status.code(), Some(2));
    assert!(
        stderr(&typo).contains("tip: some similar subcommands exist: 'pause', 'status'"),
        "{}",
        stderr(&typo)
    );
    let flag = finish(
        pagecrawl(&["status", "--jsn"]).spawn().unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_eq!(flag.status.code(), Some(2));
    assert!(stderr(&flag).contains("--json"), "{}", stderr(&flag));
}

#[test]
fn completions_and_the_man_page_come_from_the_same_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let output = finish(
            pagecrawl(&["completions", shell]).spawn().unwrap(),
            COMMAND_TIMEOUT,
        );
        assert_success(&output);
        let script = stdout(&output);
        for word in ["enqueue", "completions", "state-dir", "latency-ms"] {
            assert!(script.contains(word), "{shell} completion knows {word}");
        }
    }
    let bash = finish(
        pagecrawl(&["completions", "bash"]).spawn().unwrap(),
        COMMAND_TIMEOUT,
    );
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("pagecrawl.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    let bad = finish(
        pagecrawl(&["completions", "tcsh"]).spawn().unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_eq!(bad.status.code(), Some(2));

    let man = finish(pagecrawl(&["man"]).spawn().unwrap(), COMMAND_TIMEOUT);
    assert_success(&man);
    let page = stdout(&man);
    assert!(
        page.contains("\n.TH pagecrawl 1 "),
        "{}",
        &page[..page.len().min(300)]
    );
    let cli = pagecrawl::cli::Cli::command();
    for sub in cli.get_subcommands() {
        assert!(
            page.contains(&format!(".SS \"{}\"", sub.get_name())),
            "{} in the man page",
            sub.get_name()
        );
    }
    assert!(
        page.contains("\\fB\\-\\-state\\-dir\\fR \\fIDIR\\fR"),
        "options are listed"
    );
    // If a roff formatter is installed, the page must render without
    // warnings.
    let rendered = Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-z"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    if let Ok(mut groff) = rendered {
        use std::io::Write;
        groff
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let result = groff.wait_with_output().unwrap();
        assert!(result.status.success(), "groff failed");
        assert!(
            result.stderr.is_empty(),
            "groff warns: {}",
            String::from_utf8_lossy(&result.stderr)
        );
    }
}

#[test]
fn the_man_page_names_itself_once_and_documents_every_config_key() {
    let man = finish(pagecrawl(&["man"]).spawn().unwrap(), COMMAND_TIMEOUT);
    assert_success(&man);
    let page = stdout(&man);
    // NAME: "pagecrawl \- a resumable...", the name once (the help's first
    // line starts with "pagecrawl: ", which clap_mangen would repeat).
    let name_line = page
        .split("\n.SH NAME\n")
        .nth(1)
        .and_then(|rest| rest.lines().next())
        .expect("a NAME section");
    assert!(
        name_line.starts_with("pagecrawl \\- a resumable"),
        "{name_line}"
    );
    assert_eq!(name_line.matches("pagecrawl").count(), 1, "{name_line}");
    // CONFIGURATION: every key `init` and the README document, from the
    // same list.
    let configuration = page
        .split("\n.SH CONFIGURATION\n")
        .nth(1)
        .map(|rest| rest.split("\n.SH ").next().unwrap_or(rest))
        .expect("a CONFIGURATION section");
    for key in pagecrawl::config_reference::KEYS {
        let entry = format!(".TP\n\\fB{}\\fR", key.name);
        assert!(
            configuration.contains(&entry),
            "the man page documents `{}`",
            key.name
        );
    }
    for key in pagecrawl::config_reference::KEYS {
        assert!(
            configuration.contains(&format!(".SS \"{}\"", key.group.replace('-', "\\-"))),
            "the man page has the group {:?}",
            key.group
        );
    }
    // Defaults as the template shows them: required keys say so, a default
    // the explanation states is not repeated.
    for entry in [
        "\\fBconcurrency\\fR (default: 8)\n",
        "\\fBurl\\fR (required)\n",
        "\\fBuser_agent\\fR\nThe User\\-Agent header (default: pagecrawl/VERSION).",
    ] {
        assert!(
            configuration.contains(entry),
            "the man page holds {entry:?}"
        );
    }
}

#[test]
fn init_writes_a_config_that_try_accepts_and_never_overwrites() {
    let job = Job::new(Site::default());
    let dir = job.dir.path();
    let init = |name: &str| {
        let mut command = pagecrawl(&["init", name]);
        command.current_dir(dir);
        finish(command.spawn().unwrap(), COMMAND_TIMEOUT)
    };
    let first = init("myjob");
    assert_success(&first);
    assert!(
        stdout(&first).contains("wrote myjob.toml"),
        "{}",
        stdout(&first)
    );
    let path = dir.join("myjob.toml");
    let written = std::fs::read_to_string(&path).unwrap();
    for key in pagecrawl::config_reference::parser_keys() {
        assert!(
            written.contains(&format!("\n{key} = ")) || written.contains(&format!("\n# {key} = ")),
            "{key} in the template"
        );
    }
    pagecrawl::config::Config::load(&path).expect("the template is a valid config as written");

    // Never overwritten: one line, exit 2, the file as it was.
    std::fs::write(&path, "# mine\n").unwrap();
    let again = init("myjob.toml");
    assert_eq!(again.status.code(), Some(2));
    let error = stderr(&again);
    assert_eq!(error.lines().count(), 1, "{error}");
    assert!(error.contains("myjob.toml already exists"), "{error}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "# mine\n");
    let bad = init("../elsewhere");
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("not a job name"), "{}", stderr(&bad));
    assert!(!dir.join("../elsewhere.toml").exists());

    // The newcomer's next step: set url and pattern, then `try`.
    std::fs::remove_file(&path).unwrap();
    assert_success(&init("myjob"));
    let example = include_str!("../../data/wooyun.toml");
    let pattern = example
        .lines()
        .find(|l| l.starts_with("pattern = "))
        .unwrap();
    let edited: String = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(|line| {
            if line.starts_with("url = ") {
                format!("url = \"{}\"", job.server.url_template())
            } else if line.starts_with("pattern = ") {
                pattern.to_string()
            } else {
                line.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&path, edited).unwrap();
    let tried = finish(
        pagecrawl(&["try", "--config", path.to_str().unwrap(), "--page", "2"])
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    );
    assert_success(&tried);
    assert_eq!(stdout(&tried).lines().count(), 20, "{}", stdout(&tried));
}

#[test]
fn try_shows_the_captures_and_hints_when_nothing_matches() {
    let job = Job::new(Site::default());
    let pretty = job.exec(&["try", "--page", "3", "--pretty"]);
    assert_success(&pretty);
    let text = stdout(&pretty);
    let first = &job.expected_bugs([3])[0];
    assert!(
        text.starts_with(&format!(
            "page 3, item 1\n  date    {}\n  url     {}\n  title   {}\n  author  {}\n",
            first.date, first.url, first.title, first.author
        )),
        "{text}"
    );
    assert!(!text.contains('\x1b'), "no colors in a pipe");
    assert!(
        text.contains(&format!("[date: {}]", first.date))
            && text.contains(&format!("[title: {}]", first.title)),
        "the first match shows each capture in place: {text}"
    );

    // A pattern whose start is on the page but whose rest is not.
    let output = try_pattern(
        &job,
        r#"<td>(?P<date>\d{4}-\d{2}-\d{2})</td>\s*<td class="title">(?P<title>[^<]*)</td>"#,
    );
    assert_eq!(
        output.status.code(),
        Some(1),
        "nothing matched: exit 1, as grep"
    );
    assert_eq!(stdout(&output), "");
    let hints = stderr(&output);
    assert!(hints.contains("matched nothing"), "{hints}");
    assert!(
        Regex::new(r#"the text before the first group, "<td>", occurs \d+ times in the page; the pattern fails after it\. The first, at byte \d+:\n    <td>\d{4}-\d\d-\d\d</td>"#)
            .unwrap()
            .is_match(&hints),
        "{hints}"
    );
    assert!(hints.contains("curl '"), "{hints}");

    // GBK bytes under a header that says UTF-8: the pattern still matches
    // (its markup is ASCII) but the titles are garbled, and the hint says
    // who declared the wrong charset.
    let garbled = Job::new(Site {
        charset: pagecrawl::fixture::Charset::GbkHeader,
        hostile: vec![(1, Hostile::ContentType("text/html; charset=utf-8".into()))],
        ..Site::default()
    });
    let output = garbled.exec(&["try", "--page", "1"]);
    assert_success(&output);
    let hints = stderr(&output);
    assert!(
        hints.contains("UTF-8 from the Content-Type header"),
        "{hints}"
    );
    assert!(
        Regex::new(r"hint: \d+ characters could not be decoded as UTF-8, which the Content-Type header declares")
            .unwrap()
            .is_match(&hints),
        "{hints}"
    );
    let fine = garbled.exec(&["try", "--page", "2"]);
    let hints = stderr(&fine);
    assert!(
        hints.contains("20 items") && hints.contains("GBK from the Content-Type header"),
        "{hints}"
    );
    assert!(!hints.contains("hint:"), "{hints}");

    // A pattern that matches but is not one-pass gets a hint on speed.
    let output = try_pattern(&job, r"<td>(?P<date>.*?)</td>");
    assert_success(&output);
    let hints = stderr(&output);
    assert!(
        hints.contains("hint: this pattern runs on the general regex engine"),
        "{hints}"
    );
}

/// `try --page 1` of a config for `job`'s site with `pattern`.
fn try_pattern(job: &Job, pattern: &str) -> std::process::Output {
    let config = job.dir.path().join("try.toml");
    std::fs::write(
        &config,
        format!(
            "url = \"{}\"\npages = \"1..=5\"\npattern = '{pattern}'\n",
            job.server.url_template()
        ),
    )
    .unwrap();
    finish(
        pagecrawl(&["try", "--config", config.to_str().unwrap(), "--page", "1"])
            .spawn()
            .unwrap(),
        COMMAND_TIMEOUT,
    )
}

/// The rows of the README's "## Configuration" table: (key, default).
fn readme_config_rows() -> Vec<(String, String)> {
    let readme = include_str!("../../README.md");
    let section = readme
        .split("\n## Configuration\n")
        .nth(1)
        .expect("the README has a Configuration section");
    let section = section.split("\n## ").next().unwrap();
    let row = Regex::new(r"^\| `([a-z_]+)` \| ([^|]+) \|").unwrap();
    section
        .lines()
        .filter_map(|line| row.captures(line))
        .map(|c| (c[1].to_string(), c[2].trim().replace('`', "")))
        .collect()
}

#[test]
fn the_readme_configuration_table_matches_the_parser() {
    let rows = readme_config_rows();
    let documented: BTreeSet<String> = rows.iter().map(|(key, _)| key.clone()).collect();
    assert_eq!(
        documented.len(),
        rows.len(),
        "a key is listed twice: {rows:?}"
    );
    let accepted: BTreeSet<String> = pagecrawl::config_reference::parser_keys()
        .into_iter()
        .collect();
    assert!(
        accepted.contains("url") && accepted.len() > 10,
        "{accepted:?}"
    );
    let missing: Vec<_> = accepted.difference(&documented).collect();
    let refused: Vec<_> = documented.difference(&accepted).collect();
    assert!(
        missing.is_empty() && refused.is_empty(),
        "README.md's configuration table: keys the parser accepts but the table lacks: {missing:?}; \
         keys in the table the parser refuses: {refused:?}"
    );
    // Each default in the table is the one the reference (and so `init`'s
    // template, tested against the parser) shows.
    for (key, default) in rows {
        let doc = pagecrawl::config_reference::KEYS
            .iter()
            .find(|k| k.name == key)
            .unwrap_or_else(|| panic!("{key} is in src/config_reference.rs"));
        assert_eq!(default, doc.default, "README default of {key}");
    }
    // Each key's accepted values are the ones the reference documents (and
    // `config_reference`'s tests hold to the parser's limits).
    let readme = include_str!("../../README.md");
    let accepted_cell = Regex::new(r"(?m)^\| `([a-z_]+)` \| [^|]+ \| ([^|]+) \|").unwrap();
    let section = readme.split("\n## Configuration\n").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    let mut seen = 0;
    for row in accepted_cell.captures_iter(section) {
        let Some(doc) = pagecrawl::config_reference::KEYS
            .iter()
            .find(|k| k.name == &row[1])
        else {
            continue;
        };
        assert_eq!(row[2].trim(), doc.range, "README 'accepted' of {}", &row[1]);
        seen += 1;
    }
    assert_eq!(
        seen,
        pagecrawl::config_reference::KEYS.len(),
        "every key has its accepted values in the README"
    );
}

#[test]
fn the_readme_lists_every_status_json_field() {
    let readme = include_str!("../../README.md");
    let list = readme
        .split("`status --json` fields:")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .expect("the README lists the status --json fields");
    let job = Job::new(Site {
        pages: 5,
        ..Site::default()
    });
    job.run_ok();
    let status = job.status();
    let fields = status.as_object().unwrap();
    assert!(fields.len() >= 20, "{status}");
    for name in fields.keys() {
        assert!(
            list.contains(&format!("`{name}`")),
            "the README documents status field `{name}`"
        );
    }
    for old in [
        "state",
        "pid",
        "state_dir",
        "url",
        "range",
        "pending",
        "done",
        "failed",
        "total",
        "items",
        "retries",
        "output",
        "output_bytes",
        "rate",
        "eta_seconds",
        "open_range_end",
        "errors",
    ] {
        assert!(fields.contains_key(old), "status --json keeps `{old}`");
    }
}

/// A second Ctrl-C while in-flight pages finish exits at once (130) and
/// takes the bar with it, so the shell's prompt starts on a line of its
/// own; the "stopping" bar fits the terminal's 120 columns, and retries
/// are not log lines (they are in the bar).
#[test]
fn a_second_ctrl_c_leaves_a_clean_terminal() {
    let site = Site {
        pages: 400,
        latency: Duration::from_millis(50),
        faults: Faults {
            // Hanging pages keep the first Ctrl-C's grace period going.
            hang: 0.2,
            hang_for: Duration::from_secs(30),
            server_error: 0.2,
            faulty_attempts: 3,
            ..Faults::default()
        },
        ..Site::default()
    };
    let job = Job::new(site).concurrency(4).with("stop_grace = \"60s\"");
    let config = job.write_config();
    let state = job.state_dir();
    let (config, state_text) = (config.to_str().unwrap(), state.to_str().unwrap());
    let mut tmux = Tmux::new(job.dir.path(), "twice");
    tmux.pid_files.push(state.join("run.pid"));
    tmux.run(
        "crawl",
        &["run", "--config", config, "--state-dir", state_text],
    );
    let retried = Regex::new(r"  ([1-9]\d*) retries  ").unwrap();
    tmux.wait_for("crawl", "a bar that counted retries", |s| {
        s.lines().any(|l| retried.is_match(l))
    });
    tmux.keys("crawl", "C-c");
    let stopping = tmux.wait_for("crawl", "the stopping bar", |s| {
        s.lines().any(|l| l.contains(" stopping  "))
    });
    println!("--- stopping:\n{stopping}");
    let bar = stopping
        .lines()
        .find(|l| l.contains(" stopping  "))
        .unwrap();
    assert!(
        bar.chars().count() <= 120 && bar.ends_with(" failed"),
        "the stopping bar fits on one line of 120 columns: {bar:?}"
    );
    assert!(
        !stopping.contains("; retry "),
        "retries are in the bar, not the log:\n{stopping}"
    );
    tmux.keys("crawl", "C-c");
    let screen = tmux.wait_for("crawl", "the crawl's exit", |s| s.contains("[exit "));
    println!("--- after the second Ctrl-C:\n{screen}");
    let last = screen.lines().last().unwrap();
    assert_eq!(
        last, "[exit 130]",
        "the prompt's line is its own:\n{screen}"
    );
    assert!(
        !screen
            .lines()
            .any(|l| l.contains(" pages  ") && l.contains(" items  ")),
        "no bar left behind:\n{screen}"
    );
}
