//! lossyfs: a FUSE file system that keeps only what was synced, for
//! power-loss tests (like SQLite's crash VFS or LazyFS, written for
//! pagecrawl's suite).
//!
//! ```text
//! lossyfs [--dirs strict|journal] [--torn SEED] [--sync-delay MS] [--shadow DIR] BACKING MOUNTPOINT
//! ```
//!
//! It mounts BACKING at MOUNTPOINT, passing every operation through, and
//! keeps beside it (in the shadow directory, `BACKING.durable` unless
//! given) what a disk would still hold after a power loss: a file's bytes
//! as of its last `fsync`/`fdatasync`, a directory's entries as of its last
//! `fsync` (`--dirs strict`, the default) or as of any `fsync` at all
//! (`--dirs journal`). What BACKING holds at mount time is durable.
//!
//! `--sync-delay MS` makes each file's `fsync`/`fdatasync` wait that long
//! before it makes anything durable, like a slow disk: a power loss during
//! the wait wins, so a program that reports a write before its sync
//! returns is caught.
//!
//! It prints `lossyfs: mounted` once the mount is up, then reads commands
//! on stdin, one a line:
//!
//! - `crash`: a power loss. Nothing more becomes durable; the mount goes
//!   away; BACKING is rebuilt to hold exactly what was durable (with
//!   `--torn SEED`, each file also keeps a seeded random prefix of its
//!   unsynced writes, the last one cut at a random byte); the report is
//!   printed and lossyfs exits. Kill the programs using the mount first.
//! - `cut`: the power goes now: nothing more becomes durable (a sync
//!   still in progress included); a later `crash` restores the state of
//!   this instant. Send it before killing the programs, so that no sync
//!   they had started can still complete.
//! - `cut-after-creations N`: arms a power cut: once N more files,
//!   directories, sockets or symlinks have been created, nothing else
//!   becomes durable (it prints `lossyfs: cut after creating PATH`); a later
//!   `crash` then restores the state of that instant.
//! - `quit`, or the end of stdin: a clean unmount; BACKING keeps the live
//!   state (as an orderly shutdown writes every cache back).
//!
//! With `LOSSYFS_TRACE=FILE` in its environment, it appends to FILE one
//! line per name change (create, rename, unlink) and per sync, marked
//! `(cut)` once nothing becomes durable any more, and the name changes a
//! power loss dropped: enough to tell which operation's loss a program
//! did not survive.
//!
//! The report lists, per file, the fsync, fdatasync, fsyncdir and flush
//! (close) calls FUSE delivered, the writes and bytes, and what the power
//! loss dropped. `sync_file_range` never reaches a FUSE file system (its
//! writes are already sent through, there is nothing for it to start), and
//! `flush` is only `close`: neither makes anything durable here.

mod durable;
mod fs;

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex};

use durable::{DirMode, Durable, Rng};
use fs::{Inner, LossyFs};

struct Args {
    backing: PathBuf,
    mountpoint: PathBuf,
    shadow: PathBuf,
    dirs: DirMode,
    torn: Option<u64>,
    sync_delay: std::time::Duration,
}

const USAGE: &str = "usage: lossyfs [--dirs strict|journal] [--torn SEED] [--sync-delay MS] [--shadow DIR] BACKING MOUNTPOINT";

fn parse(mut args: impl Iterator<Item = String>) -> Result<Args, String> {
    let mut positional = Vec::new();
    let mut dirs = DirMode::Strict;
    let mut torn = None;
    let mut shadow = None;
    let mut sync_delay = std::time::Duration::ZERO;
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value; {USAGE}"));
        match arg.as_str() {
            "--dirs" => {
                dirs = match value("--dirs")?.as_str() {
                    "strict" => DirMode::Strict,
                    "journal" => DirMode::Journal,
                    other => return Err(format!("--dirs {other}: use strict or journal")),
                }
            }
            "--torn" => {
                let seed = value("--torn")?;
                torn = Some(
                    seed.parse()
                        .map_err(|_| format!("--torn {seed}: the seed is a number"))?,
                );
            }
            "--sync-delay" => {
                let ms = value("--sync-delay")?;
                sync_delay = std::time::Duration::from_millis(
                    ms.parse()
                        .map_err(|_| format!("--sync-delay {ms}: milliseconds, a number"))?,
                );
            }
            "--shadow" => shadow = Some(PathBuf::from(value("--shadow")?)),
            other if other.starts_with("--") => {
                return Err(format!("unknown flag {other}; {USAGE}"))
            }
            _ => positional.push(PathBuf::from(arg)),
        }
    }
    let [backing, mountpoint] =
        <[PathBuf; 2]>::try_from(positional).map_err(|_| USAGE.to_string())?;
    let shadow = shadow.unwrap_or_else(|| {
        let mut name = backing.file_name().unwrap_or_default().to_os_string();
        name.push(".durable");
        backing.with_file_name(name)
    });
    Ok(Args {
        backing,
        mountpoint,
        shadow,
        dirs,
        torn,
        sync_delay,
    })
}

fn main() -> ExitCode {
    let args = match parse(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("lossyfs: {message}");
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("lossyfs: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), String> {
    let durable = Durable::baseline(
        &args.backing,
        &args.shadow,
        args.dirs,
        args.torn.map(Rng::new),
    )
    .map_err(|e| {
        format!(
            "cannot take {} as the durable state: {e}",
            args.backing.display()
        )
    })?;
    let inner = Arc::new(Mutex::new(Inner::new(durable)));
    let mut config = fuser::Config::default();
    config.mount_options = vec![fuser::MountOption::FSName("lossyfs".into())];
    config.n_threads = Some(1);
    let session = fuser::spawn_mount(
        LossyFs(inner.clone(), args.sync_delay),
        &args.mountpoint,
        &config,
    )
    .map_err(|e| format!("cannot mount {}: {e}", args.mountpoint.display()))?;
    lock(&inner).durable.note(|_| {
        format!(
            "mounted {} ({:?} directories)",
            args.mountpoint.display(),
            args.dirs
        )
    });
    println!("lossyfs: mounted {}", args.mountpoint.display());

    let mut crash = false;
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["crash"] => {
                crash = true;
                break;
            }
            ["quit"] => break,
            ["cut"] => {
                let mut inner = lock(&inner);
                inner.durable.cut = true;
                inner.durable.note(|_| "cut".to_string());
            }
            ["cut-after-creations", n] => match n.parse::<u64>() {
                Ok(n) if n > 0 => lock(&inner).cut_after_creations = Some(n),
                _ => eprintln!("lossyfs: cut-after-creations takes a count above 0"),
            },
            [] => {}
            _ => {
                eprintln!(
                    "lossyfs: unknown command {line:?} (crash, cut, cut-after-creations N, quit)"
                )
            }
        }
    }
    if crash {
        // The power goes now: whatever arrives while unmounting is lost.
        lock(&inner).durable.cut = true;
    }
    unmount(&args.mountpoint);
    if let Err(e) = session.join() {
        eprintln!("lossyfs: the session ended with {e}");
    }

    let mut inner = lock(&inner);
    report(&inner);
    if crash {
        let (files, bytes, names) = inner.durable.unsynced();
        inner.durable.note_dropped();
        let torn = inner
            .durable
            .tear()
            .map_err(|e| format!("cannot tear the unsynced writes: {e}"))?;
        for line in &torn {
            println!("lossyfs: {line}");
        }
        inner
            .durable
            .materialize()
            .map_err(|e| format!("cannot rebuild the durable state: {e}"))?;
        println!(
            "lossyfs: crash: dropped the unsynced writes of {files} files ({bytes} bytes) and {names} unsynced name changes"
        );
    }
    inner
        .durable
        .remove_shadow()
        .map_err(|e| format!("cannot remove the shadow directory: {e}"))?;
    println!("lossyfs: done");
    Ok(())
}

fn lock(inner: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    inner
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Unmounts: `umount` as root, `fusermount3 -u` otherwise, lazily if the
/// mount is still busy.
fn unmount(mountpoint: &Path) {
    let quiet = |command: &mut Command| {
        command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if quiet(Command::new("umount").arg(mountpoint))
        || quiet(Command::new("fusermount3").arg("-u").arg(mountpoint))
    {
        return;
    }
    eprintln!(
        "lossyfs: {} is busy; unmounting lazily",
        mountpoint.display()
    );
    if !quiet(Command::new("umount").arg("-l").arg(mountpoint)) {
        quiet(Command::new("fusermount3").arg("-uz").arg(mountpoint));
    }
}

fn report(inner: &Inner) {
    let mut objects: Vec<_> = inner
        .durable
        .objects
        .values()
        .filter(|o| o.counts.any())
        .collect();
    objects.sort_by(|a, b| a.last_path.cmp(&b.last_path));
    for object in objects {
        let c = &object.counts;
        println!(
            "lossyfs: file /{} fsync={} fdatasync={} fsyncdir={} flush={} writes={} bytes={}",
            object.last_path.display(),
            c.fsync,
            c.fdatasync,
            c.fsyncdir,
            c.flush,
            c.writes,
            c.bytes
        );
    }
    for (name, count) in &inner.unimplemented {
        println!("lossyfs: unimplemented {name} x{count}");
    }
}
