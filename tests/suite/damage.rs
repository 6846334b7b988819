//! The crawl's surroundings changed behind it: the output truncated,
//! deleted, replaced or rotated while a crawl runs, a state that lost its
//! queue, an output that already holds someone's bytes, and folders or
//! files that others control. Each ends with every item exactly once, or
//! with one line, an exit code and nothing destroyed.

use std::path::Path;
use std::time::Duration;

use pagecrawl::fixture::Site;

use crate::harness::*;

/// A crawl that lasts a few seconds: 1,000 pages at 10 ms, 4 at a time.
fn slow_job() -> Job {
    Job::new(Site {
        pages: 1000,
        latency: Duration::from_millis(10),
        ..Site::default()
    })
    .concurrency(4)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Exactly one `pagecrawl: error:` line, which mentions every needle.
fn assert_error_line(output: &std::process::Output, code: i32, needles: &[&str]) {
    let err = stderr(output);
    assert_eq!(output.status.code(), Some(code), "stderr: {err}");
    let errors: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("pagecrawl: error:"))
        .collect();
    assert_eq!(errors.len(), 1, "one error line expected: {err}");
    for needle in needles {
        assert!(errors[0].contains(needle), "expected {needle:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

#[derive(Debug, Clone, Copy)]
enum Change {
    Truncate,
    Delete,
    Replace,
}

/// `truncate`, `rm` and `mv other items.jsonl` behind a running crawl: the
/// run stops at its next commit with one line and exit 1, `status` says
/// the output is damaged, `export` and `run` refuse, and `repair` then
/// `run` end with every item exactly once.
#[test]
fn an_output_changed_behind_a_running_crawl_stops_it_and_repair_loses_nothing() {
    for change in [Change::Truncate, Change::Delete, Change::Replace] {
        let job = slow_job();
        let output_path = job.output_path("items.jsonl");
        let run = job.spawn_run();
        assert!(
            wait_until(Duration::from_secs(60), || file_len(&output_path) > 100_000),
            "{change:?}: the crawl wrote nothing"
        );
        match change {
            Change::Truncate => {
                let half = file_len(&output_path) / 2;
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&output_path)
                    .unwrap()
                    .set_len(half)
                    .unwrap();
            }
            Change::Delete => std::fs::remove_file(&output_path).unwrap(),
            Change::Replace => {
                let other = job.dir.path().join("other.jsonl");
                std::fs::write(&other, "someone else's file\n").unwrap();
                std::fs::rename(&other, &output_path).unwrap();
            }
        }
        let stopped = finish(run, COMMAND_TIMEOUT);
        let how = match change {
            Change::Truncate => "was truncated behind the crawl",
            Change::Delete => "was deleted behind the crawl",
            Change::Replace => "was replaced behind the crawl",
        };
        assert_error_line(&stopped, 1, &[how, "pagecrawl repair"]);
        let status = job.status();
        assert_eq!(status["state"], "damaged", "{change:?}: {status}");
        assert!(
            status["damaged"].as_str().unwrap().contains(how),
            "{status}"
        );
        let export = job.exec(&["export"]);
        assert_ne!(
            export.status.code(),
            Some(0),
            "{change:?}: export of a damaged output"
        );
        assert_error_line(&job.exec(&["run"]), 1, &["damaged", "pagecrawl repair"]);

        let repaired = job.exec(&["repair"]);
        assert_success(&repaired);
        assert!(
            stdout(&repaired).starts_with("repaired"),
            "{}",
            stdout(&repaired)
        );
        if let Change::Replace = change {
            let aside: Vec<_> = std::fs::read_dir(job.state_dir())
                .unwrap()
                .filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with("items.jsonl.damaged-")
                })
                .collect();
            assert_eq!(aside.len(), 1, "{change:?}: the foreign file is kept aside");
            assert_eq!(
                std::fs::read_to_string(aside[0].path()).unwrap(),
                "someone else's file\n"
            );
        }
        assert_eq!(job.status()["damaged"], serde_json::Value::Null);
        job.run_ok();
        assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=1000));
        assert_eq!(job.status()["state"], "finished");
    }
}

/// A changed output found while no crawl runs: `status` says so, `run`
/// refuses with the file untouched, `repair` keeps the intact items.
#[test]
fn an_output_truncated_between_runs_is_repaired_without_refetching_intact_pages() {
    let job = Job::new(Site {
        pages: 50,
        ..Site::default()
    });
    job.run_ok();
    let path = job.output_path("items.jsonl");
    let full = std::fs::read(&path).unwrap();
    // Cut in the middle of a line, about 30 pages in.
    let cut = full.len() * 3 / 5 + 7;
    std::fs::write(&path, &full[..cut]).unwrap();
    let status = job.status();
    assert_eq!(status["state"], "damaged", "{status}");
    assert_error_line(
        &job.exec(&["run"]),
        1,
        &["truncated outside pagecrawl", "pagecrawl repair"],
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        &full[..cut],
        "run changed nothing"
    );
    let before = job.server.stats().total();
    assert_success(&job.exec(&["repair"]));
    let kept = std::fs::read(&path).unwrap();
    assert!(kept.len() <= cut && full.starts_with(&kept) && kept.ends_with(b"\n"));
    let kept_pages = job
        .output_bugs()
        .iter()
        .map(|b| b.page)
        .collect::<std::collections::BTreeSet<_>>()
        .len() as u64;
    assert!(
        kept_pages >= 25,
        "whole pages before the cut are kept ({kept_pages})"
    );
    job.run_ok();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=50));
    let fetched = job.server.stats().total() - before;
    assert!(
        fetched <= 50 - kept_pages + 1,
        "only the pages past the cut are fetched again ({fetched} requests, {kept_pages} pages kept)"
    );
}

/// Rotation: the output moved aside while the crawl runs keeps taking
/// items until `pagecrawl reopen` (or SIGUSR1); each item is in exactly
/// one of the files.
#[test]
fn a_rotated_output_holds_every_item_once_across_the_files() {
    let job = slow_job();
    let path = job.output_path("items.jsonl");
    let run = job.spawn_run();
    let mut rotated = Vec::new();
    for round in 1..=2 {
        assert!(
            wait_until(Duration::from_secs(60), || file_len(&path) > 60_000),
            "round {round}: nothing written"
        );
        let aside = job.state_dir().join(format!("items.jsonl.{round}"));
        std::fs::rename(&path, &aside).unwrap();
        if round == 1 {
            let reopened = job.exec(&["reopen"]);
            assert_success(&reopened);
            assert!(
                stdout(&reopened).starts_with("reopened"),
                "{}",
                stdout(&reopened)
            );
        } else {
            signal(&run, "USR1");
        }
        assert!(
            wait_until(Duration::from_secs(30), || path.exists()),
            "round {round}: no new file"
        );
        rotated.push(aside);
    }
    let unmoved = job.exec(&["reopen"]);
    assert_success(&unmoved);
    assert!(
        stdout(&unmoved).starts_with("nothing to reopen"),
        "{}",
        stdout(&unmoved)
    );
    let done = finish(run, COMMAND_TIMEOUT);
    assert_success(&done);
    let mut all = Vec::new();
    for file in rotated.iter().chain([&path]) {
        let bugs = read_jsonl_bugs(file);
        assert!(!bugs.is_empty(), "{} holds items", file.display());
        all.extend(bugs);
    }
    assert_same_items(&all, &job.expected_bugs(1..=1000));
    // With no crawl running, reopen points the checkpoint at a new file.
    std::fs::rename(&path, job.state_dir().join("items.jsonl.3")).unwrap();
    assert_success(&job.exec(&["reopen"]));
    assert_eq!(job.status()["damaged"], serde_json::Value::Null);
    assert_eq!(job.status()["output_bytes"], 0);
}

/// What a power loss between the two batches of older pagecrawls' job
/// creation left: the job recorded, none of its pages, and an output that
/// had been synced. It is never reported finished nor truncated; `repair`
/// keeps the items and queues the rest.
#[test]
fn a_state_that_lost_its_pages_is_refused_then_repaired() {
    let job = Job::new(Site {
        pages: 40,
        ..Site::default()
    });
    job.run_ok();
    let path = job.output_path("items.jsonl");
    let full = std::fs::read(&path).unwrap();
    forget_pages(&job.state_dir());
    let status = job.status();
    assert_eq!(status["state"], "damaged", "{status}");
    assert_eq!(status["done"], 0);
    let refused = job.exec(&["run"]);
    assert_error_line(&refused, 1, &["none of its pages", "pagecrawl repair"]);
    assert!(!stdout(&refused).contains("finished"));
    assert_eq!(
        std::fs::read(&path).unwrap(),
        full,
        "the output is untouched"
    );
    let repaired = job.exec(&["repair"]);
    assert_success(&repaired);
    assert!(
        stdout(&repaired).contains("39 pages recorded as done from the file"),
        "every whole page but the last is kept: {}",
        stdout(&repaired)
    );
    job.run_ok();
    assert_same_items(&job.output_bugs(), &job.expected_bugs(1..=40));
}

/// Rewrites a state as older pagecrawls could leave it after a power
/// loss: the job and counters of the first batch, nothing of the rest.
fn forget_pages(state: &Path) {
    let db = sled::open(state.join("queue.sled")).unwrap();
    let tree = db.open_tree("queue").unwrap();
    for prefix in [b'p', b'd', b'f', b'q', b'k', b'r'] {
        for key in tree.scan_prefix([prefix]).keys() {
            tree.remove(key.unwrap()).unwrap();
        }
    }
    let key = b"mcounters";
    let counters = pagecrawl::store::Counters::decode(&tree.get(key).unwrap().unwrap());
    let emptied = pagecrawl::store::Counters {
        frontier: counters.frontier,
        ..Default::default()
    };
    tree.insert(key, emptied.encode()).unwrap();
    db.flush().unwrap();
}

/// An output file that this state never wrote (a new job, an old file at
/// the path) is refused, not truncated; so is an item of a done page past
/// the checkpoint, which no crash can leave.
#[test]
fn bytes_the_checkpoint_does_not_prove_uncommitted_are_never_cut() {
    let job = Job::new(Site {
        pages: 5,
        ..Site::default()
    });
    std::fs::create_dir_all(job.state_dir()).unwrap();
    let path = job.output_path("items.jsonl");
    std::fs::write(&path, "precious\n").unwrap();
    assert_error_line(
        &job.exec(&["run"]),
        2,
        &["already holds 9 bytes", "move it aside"],
    );
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious\n");
    std::fs::remove_file(&path).unwrap();
    job.run_ok();
    let mut bytes = std::fs::read(&path).unwrap();
    let first_line = bytes.split(|&b| b == b'\n').next().unwrap().to_vec();
    bytes.extend_from_slice(&first_line);
    bytes.push(b'\n');
    std::fs::write(&path, &bytes).unwrap();
    // Another page pending again: the line past the checkpoint is still
    // one of a done page.
    let first_page = read_jsonl_bugs(&path)[0].page;
    let other = if first_page == 5 { "4" } else { "5" };
    assert_success(&job.exec(&["enqueue", other]));
    assert_error_line(
        &job.exec(&["run"]),
        1,
        &["which the checkpoint records as done", "nothing was cut"],
    );
    assert_eq!(std::fs::read(&path).unwrap(), bytes);
}

/// Files and folders others control: an output that is a symlink, a state
/// directory owned by `nobody`, one writable by everyone. One line, exit
/// 2, nothing written through them.
#[test]
fn folders_and_files_others_control_are_refused() {
    let job = Job::new(Site {
        pages: 3,
        ..Site::default()
    });
    // The output as a symlink to a file of someone else's.
    std::fs::create_dir_all(job.state_dir()).unwrap();
    let target = job.dir.path().join("root-only");
    std::fs::write(&target, "5,000,000 bytes of someone's data").unwrap();
    std::os::unix::fs::symlink(&target, job.output_path("items.jsonl")).unwrap();
    assert_error_line(&job.exec(&["run"]), 2, &["is a symbolic link"]);
    assert!(
        !job.state_dir().join("queue.sled").exists(),
        "nothing written"
    );
    assert_eq!(
        std::fs::read_to_string(&target).unwrap(),
        "5,000,000 bytes of someone's data"
    );
    std::fs::remove_file(job.output_path("items.jsonl")).unwrap();

    use std::os::unix::fs::PermissionsExt;
    let state = job.state_dir();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).unwrap();
    assert_error_line(
        &job.exec(&["run"]),
        2,
        &["writable by everyone (mode 777)", "chmod go-w"],
    );
    assert!(!state.join("queue.sled").exists(), "nothing written");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();

    let nobody_owns = std::process::Command::new("chown")
        .arg("nobody")
        .arg(&state)
        .status()
        .is_ok_and(|s| s.success());
    if !nobody_owns {
        eprintln!("skipped the `nobody` case: chown to nobody failed (not root?)");
        assert!(
            std::env::var_os("CI").is_none(),
            "CI runs as root: chown must work"
        );
        return;
    }
    assert_error_line(
        &job.exec(&["run"]),
        2,
        &["belongs to another user", "sudo -u '#65534'"],
    );
    assert_error_line(&job.exec(&["status"]), 2, &["belongs to another user"]);
    assert!(!state.join("queue.sled").exists(), "nothing written");
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    /// `None` (with the reason printed) where mounting is not allowed;
    /// CI runs as root, where it must work.
    fn mount(size: &str) -> Option<SmallDisk> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let mounted = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (not root?)");
            assert!(
                std::env::var_os("CI").is_none(),
                "CI runs as root: mount must work"
            );
            return None;
        }
        Some(SmallDisk { path, _dir: dir })
    }

    fn grow(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.path)
            .status()
            .unwrap();
        assert!(status.success(), "remount");
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A full disk under the state directory (and the output in it), with
/// `key` set: the run stops with one line and exit 1, every command run
/// while it is full says why in one line, and once space is freed the
/// same `run` resumes with nothing lost or doubled, in 10 of 10 tries.
/// On a read-only disk, `status` says why it cannot read the state.
/// (sled 0.34 leaves an unfinished `snap.*.generating` file when the disk
/// fills as it opens, and then reads it back as a corrupt database; the
/// store removes such files before opening.)
#[test]
fn a_full_disk_stops_the_crawl_and_the_same_run_resumes_once_space_is_freed() {
    let site = Site {
        pages: 400,
        ..Site::default()
    };
    for attempt in 0..10 {
        let size = format!("{}k", 700 + attempt * 90);
        let Some(disk) = SmallDisk::mount(&size) else {
            return;
        };
        let job = Job::new(site.clone()).with("key = \"url\"");
        let state = disk.path.join("state");
        let config = job.write_config();
        let run_on_disk = || {
            let run = pagecrawl(&["run", "--config"])
                .arg(&config)
                .arg("--state-dir")
                .arg(&state)
                .spawn()
                .unwrap();
            finish(run, COMMAND_TIMEOUT)
        };
        let full = run_on_disk();
        assert_error_line(&full, 1, &["No space left on device", "free some space"]);
        let dir = state.to_string_lossy().into_owned();
        for command in [
            vec!["status", "--state-dir", &dir],
            vec!["queue", "--state-dir", &dir],
            vec!["export", "--state-dir", &dir],
        ] {
            let output = finish(pagecrawl(&command).spawn().unwrap(), COMMAND_TIMEOUT);
            if !output.status.success() {
                assert_error_line(&output, 1, &["No space left on device"]);
            }
        }
        let again = run_on_disk();
        assert_ne!(
            again.status.code(),
            Some(0),
            "size {size}: a run on a full disk"
        );
        disk.grow("64m");
        let resumed = run_on_disk();
        assert_success(&resumed);
        let bugs = read_jsonl_bugs(&state.join("items.jsonl"));
        assert_same_items(&bugs, &job.expected_bugs(1..=400));
        if attempt == 0 {
            // Read-only: `status` says exactly why it cannot read the state.
            let remounted = std::process::Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&disk.path)
                .status()
                .unwrap();
            assert!(remounted.success());
            let status = finish(
                pagecrawl(&["status", "--state-dir", &dir]).spawn().unwrap(),
                COMMAND_TIMEOUT,
            );
            assert_error_line(&status, 1, &["Read-only file system", "copy the folder"]);
        }
        drop(disk);
    }
}
