//! Measuring a child process: wall time, CPU (user + sys, from the kernel's
//! accounting of reaped children) and peak RSS (`VmHWM`, polled from
//! `/proc`), with a time limit.

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How often a running child's `/proc` entry is read.
pub const POLL: Duration = Duration::from_millis(10);

/// What a child cost.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub wall: Duration,
    /// User + system time of the child (all its threads), from the parent's
    /// accounting of reaped children (`/proc/self/stat` cutime + cstime,
    /// which is what `getrusage(RUSAGE_CHILDREN)` reads).
    pub cpu: Duration,
    /// The system part of `cpu`.
    pub sys: Duration,
    /// Highest `VmHWM` seen while it ran, KiB.
    pub peak_rss_kib: u64,
    pub status: Option<ExitStatus>,
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Usage {
    pub fn ok(&self) -> bool {
        !self.timed_out && self.status.is_some_and(|s| s.success())
    }

    /// How the run ended, for a FAILED row.
    pub fn outcome(&self) -> String {
        if self.ok() {
            "finished".into()
        } else {
            self.describe_failure()
        }
    }

    pub fn describe_failure(&self) -> String {
        if self.timed_out {
            return "timed out (killed)".into();
        }
        let last = self.stderr.lines().last().unwrap_or("").trim();
        format!(
            "exit {}: {last}",
            self.status
                .and_then(|s| s.code())
                .map_or("signal".into(), |c| c.to_string())
        )
    }
}

/// Clock ticks per second of `/proc` times (`getconf CLK_TCK`; 100 on
/// Linux).
pub fn clock_ticks() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .unwrap_or(100)
    })
}

/// CPU time (user + sys) of this process's reaped children so far.
pub fn children_cpu() -> Result<Duration> {
    let (user, sys) = children_times()?;
    Ok(user + sys)
}

/// User and system time of this process's reaped children so far.
pub fn children_times() -> Result<(Duration, Duration)> {
    let stat = fs::read_to_string("/proc/self/stat").context("cannot read /proc/self/stat")?;
    let fields = stat_fields(&stat).context("unexpected /proc/self/stat")?;
    // Fields 16 and 17 (1-based) of stat(5); the slice starts at field 3.
    let ticks = |i: usize| -> Result<Duration> {
        let t: u64 = fields[i].parse()?;
        Ok(Duration::from_secs_f64(t as f64 / clock_ticks() as f64))
    };
    Ok((ticks(13)?, ticks(14)?))
}

/// The fields of a `/proc/PID/stat` line from the state (field 3) on.
pub fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    (fields.len() > 15).then_some(fields)
}

/// CPU time (user + sys, all threads) of a live process so far.
pub fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields = stat_fields(&stat)?;
    // Fields 14 and 15 (1-based) of stat(5).
    let ticks = fields[11].parse::<u64>().ok()? + fields[12].parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / clock_ticks() as f64))
}

/// `VmHWM` of a live process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Sends SIGTERM (safe Rust can only SIGKILL a `Child`; kill(1) costs
/// about a millisecond of CPU, below the tick resolution).
pub fn terminate(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Runs `command` to its end (or `limit`), with stdout and stderr in files
/// beside `log`, measuring wall time, CPU and peak RSS. `poll` is called
/// every few milliseconds with the pid and the time since the start.
pub fn measure(
    mut command: Command,
    log: &Path,
    limit: Duration,
    mut poll: impl FnMut(u32, Duration),
) -> Result<Usage> {
    let out_path = log.with_extension("stdout");
    let err_path = log.with_extension("stderr");
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out_path)?)
        .stderr(File::create(&err_path)?);
    for var in pagecrawl::fixture::ENVIRONMENT_TO_DROP {
        command.env_remove(var);
    }
    command.env("no_proxy", "127.0.0.1,localhost");
    command.env("NO_PROXY", "127.0.0.1,localhost");
    let (user_before, sys_before) = children_times()?;
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {:?}", command.get_program()))?;
    let pid = child.id();
    let (exit_tx, exit_rx) = mpsc::channel();
    let waiter = thread::spawn(move || {
        let status = child.wait();
        let _ = exit_tx.send((Instant::now(), status));
    });
    let mut usage = Usage::default();
    let (ended, status) = loop {
        if let Some(hwm) = vm_hwm_kib(pid) {
            usage.peak_rss_kib = usage.peak_rss_kib.max(hwm);
        }
        match exit_rx.recv_timeout(POLL) {
            Ok(exit) => break exit,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("lost the child {pid}"),
        }
        let elapsed = started.elapsed();
        if elapsed > limit && !usage.timed_out {
            usage.timed_out = true;
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(pid.to_string())
                .status();
        }
        if !usage.timed_out {
            poll(pid, elapsed);
        }
    };
    let _ = waiter.join();
    usage.wall = ended - started;
    let (user, sys) = children_times()?;
    usage.sys = sys.saturating_sub(sys_before);
    usage.cpu = user.saturating_sub(user_before) + usage.sys;
    usage.status = status.ok();
    usage.stdout = fs::read_to_string(&out_path).unwrap_or_default();
    usage.stderr = fs::read_to_string(&err_path).unwrap_or_default();
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_parse() {
        let stat = "12 (a b) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18";
        let fields = stat_fields(stat).unwrap();
        // Field k (1-based, as stat(5) numbers them) is fields[k - 3]: cutime
        // is field 16.
        assert_eq!((fields[0], fields[13], fields[14]), ("S", "13", "14"));
    }
}
