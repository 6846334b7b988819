//! One file per subcommand, and the one `match` that dispatches to them.

mod completions;
mod demo;
mod enqueue;
mod export;
pub mod init;
mod metrics;
mod pause;
mod queue;
mod reopen;
mod repair;
mod retry;
pub mod run;
mod run_store;
mod status;
mod try_page;

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::cli::{Command, StateArgs};
use crate::config::Config;
use crate::error::UserError;
use crate::exit_code::Exit;

pub fn dispatch(command: Command) -> Result<Exit> {
    match command {
        Command::Run {
            config,
            url,
            pages,
            pattern,
            output,
            state_dir,
            follow,
        } => {
            let job = run::JobSource::from_flags(config, url, pages, pattern, output)?;
            run::command(&job, state_dir, follow.as_deref())
        }
        Command::Status { state, json } => match location(&state)? {
            Location::Dir(dir) => status::command(&dir, json),
            Location::Store { url, job } => status::command_store(&url, &job, json),
        },
        Command::Queue {
            state,
            which,
            stage,
            limit,
            json,
        } => match location(&state)? {
            Location::Dir(dir) => queue::command(&dir, which, stage, limit, json),
            Location::Store { url, job } => {
                queue::command_store(&url, &job, which, stage, limit, json)
            }
        },
        Command::Enqueue { state, ranges } => match location(&state)? {
            Location::Dir(dir) => enqueue::command(&dir, &ranges),
            Location::Store { url, job } => enqueue::command_store(&url, &job, &ranges),
        },
        Command::Retry { state, pages } => match location(&state)? {
            Location::Dir(dir) => retry::command(&dir, &pages),
            Location::Store { url, job } => retry::command_store(&url, &job, &pages),
        },
        Command::Export {
            state,
            format,
            output,
        } => match location(&state)? {
            Location::Dir(dir) => export::command(&dir, format, output.as_deref()),
            Location::Store { url, job } => {
                export::command_store(&url, &job, format, output.as_deref())
            }
        },
        Command::Repair { state } => repair::command(&state_dir_only(&state, "repair")?),
        Command::Reopen { state } => reopen::command(&state_dir_only(&state, "reopen")?),
        Command::Metrics { state } => match location(&state)? {
            Location::Dir(dir) => metrics::command(&dir),
            Location::Store { url, job } => metrics::command_store(&url, &job),
        },
        Command::Pause { state } => match location(&state)? {
            Location::Dir(dir) => pause::command(&dir, true),
            Location::Store { url, job } => pause::command_store(&url, &job, true),
        },
        Command::Resume { state } => match location(&state)? {
            Location::Dir(dir) => pause::command(&dir, false),
            Location::Store { url, job } => pause::command_store(&url, &job, false),
        },
        Command::Try {
            config,
            page,
            json,
            pretty,
        } => try_page::command(&config, page, try_page::View::choose(json, pretty)),
        Command::Demo {
            dir,
            latency_ms,
            listing_only,
        } => demo::command(dir, latency_ms, listing_only),
        Command::Init { name } => init::command(&name),
        Command::Completions { shell } => completions::completions(shell),
        Command::Man => completions::man(),
    }
}

/// `$STATE_DIRECTORY` as systemd sets it (the first entry if several).
fn state_directory_env() -> Option<PathBuf> {
    let value = std::env::var_os("STATE_DIRECTORY")?;
    let first = value
        .to_string_lossy()
        .split(':')
        .next()
        .unwrap_or_default()
        .to_string();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// The state directory for `run`: the flag, the environment, or the
/// default beside the config.
pub fn run_state_dir(flag: Option<PathBuf>, config: &Config) -> PathBuf {
    flag.or_else(state_directory_env)
        .unwrap_or_else(|| config.default_state_dir())
}

/// Where a command finds its job: a state directory, or a job in a
/// PostgreSQL store.
enum Location {
    Dir(PathBuf),
    Store { url: String, job: String },
}

/// Where the job of `status` and `export` is: `--store URL --job NAME`, a
/// config's `store` (and `job`), else the state directory.
fn location(args: &StateArgs) -> Result<Location> {
    if let Some(url) = &args.store {
        let job = match (&args.job, &args.config) {
            (Some(job), _) => job.clone(),
            (None, Some(config)) => Config::load(config)?.job_name(),
            (None, None) => {
                return Err(UserError::Usage(
                    "--store needs --job NAME: the job's name in that database".into(),
                )
                .into())
            }
        };
        check_job_flag(&job)?;
        return Ok(Location::Store {
            url: url.clone(),
            job,
        });
    }
    if args.state_dir.is_none() {
        if let Some(path) = &args.config {
            let config = Config::load(path)?;
            if let Some(url) = &config.store {
                let job = args.job.clone().unwrap_or_else(|| config.job_name());
                check_job_flag(&job)?;
                return Ok(Location::Store {
                    url: url.clone(),
                    job,
                });
            }
        }
    }
    if args.job.is_some() {
        return Err(UserError::Usage(
            "--job names a job in a PostgreSQL database: pass --store URL too (or a --config that sets store)"
                .into(),
        )
        .into());
    }
    Ok(Location::Dir(state_dir(args)?))
}

fn check_job_flag(job: &str) -> Result<()> {
    crate::config::check_job_name(job)
        .map_err(|why| UserError::Usage(format!("--job: {why}")).into())
}

/// The state directory for the commands that read no store database yet:
/// a store named by `--store`, `--job` or the config is refused (exit 2)
/// rather than a state directory read in its place.
fn state_dir_only(args: &StateArgs, command: &str) -> Result<PathBuf> {
    match location(args)? {
        Location::Dir(dir) => Ok(dir),
        Location::Store { .. } => Err(UserError::Usage(format!(
            "`pagecrawl {command}` does not work on a job in a PostgreSQL store yet (status, queue, enqueue, retry, pause, resume, metrics and export do): \
             pass --state-dir for a state directory"
        ))
        .into()),
    }
}

/// The state directory for the inspection commands.
fn state_dir(args: &StateArgs) -> Result<PathBuf> {
    if let Some(dir) = args.state_dir.clone().or_else(state_directory_env) {
        return Ok(dir);
    }
    if let Some(config) = &args.config {
        return Ok(Config::load(config)?.default_state_dir());
    }
    let found = jobs_here(Path::new("."));
    match found.as_slice() {
        [only] => Ok(only.clone()),
        [] => Err(UserError::Usage(
            "no state directory given, and none here: pass --state-dir DIR (or --config FILE to use the one beside it)"
                .into(),
        )
        .into()),
        several => Err(UserError::Usage(format!(
            "no state directory given, and {} here ({}): pass --state-dir DIR to say which",
            several.len(),
            several
                .iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

/// The crawl states in `dir`: its folders that hold one (`NAME.state`
/// beside `NAME.toml`, or any other), in name order. The inspection
/// commands use the one there is when none is named.
fn jobs_here(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = entries
        .flatten()
        .map(|entry| entry.path())
        .filter(|path| path.is_dir() && crate::store::exists(path))
        .map(|path| {
            path.strip_prefix(".")
                .map(Path::to_path_buf)
                .unwrap_or(path)
        })
        .collect();
    found.sort();
    found
}

/// Writes a command's output to stdout. A reader that went away (`| head`)
/// is not an error: it has what it wanted.
pub fn write_stdout(bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map_err(|e| {
            anyhow::anyhow!(
                "cannot write to standard output: {}",
                crate::util::io_reason(&e)
            )
        }),
    }
}
