//! Small helpers shared by several modules.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// An I/O error's reason without Rust's "(os error N)" suffix, with what
/// to do when the disk is full.
pub fn io_reason(error: &std::io::Error) -> String {
    // sled wraps the OS error in another: the inner one has the text.
    if let Some(inner) = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<std::io::Error>())
    {
        return io_reason(inner);
    }
    const FULL: &str =
        "(free some space, then run the same command again: nothing committed is lost)";
    match error.kind() {
        // Also when the OS error only survives as its kind (sled rebuilds
        // some errors from their debug text).
        std::io::ErrorKind::StorageFull => return format!("No space left on device {FULL}"),
        std::io::ErrorKind::QuotaExceeded => return format!("Disk quota exceeded {FULL}"),
        std::io::ErrorKind::ReadOnlyFilesystem => return "Read-only file system".into(),
        _ => {}
    }
    let text = error.to_string();
    match text.find(" (os error") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// A sled error as one readable line (sled's own shows I/O errors in
/// their debug form).
pub fn sled_reason(error: &sled::Error) -> String {
    match error {
        sled::Error::Io(io) => io_reason(io),
        other => other.to_string(),
    }
}

use std::sync::atomic::{AtomicBool, Ordering};

/// Set while [`quietly`] runs, so the panic hook stays silent for a panic we
/// catch and turn into an error.
static QUIET_PANICS: AtomicBool = AtomicBool::new(false);

/// Runs `f`, turning a panic inside it (from a dependency) into an error
/// message instead of a backtrace on the user's terminal.
pub fn quietly<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    QUIET_PANICS.store(true, Ordering::SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    QUIET_PANICS.store(false, Ordering::SeqCst);
    result.map_err(|payload| {
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown panic".into())
            .replace('\n', " ")
    })
}

/// Replaces Rust's panic message with one line that says it is a bug, so
/// that even an unforeseen panic reads as a message, not a backtrace.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        if QUIET_PANICS.load(Ordering::SeqCst) {
            return;
        }
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_default();
        let location = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!(
            "pagecrawl: internal error{location}: {message} (this is a bug; please report it)"
        );
    }));
}

/// `fsync`s a folder, so that files created, renamed or removed in it
/// survive a power loss (a file's own `fsync` does not cover its name).
pub fn sync_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|folder| folder.sync_all())
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot sync the folder {}: {}",
                dir.display(),
                io_reason(&e)
            )
        })
}

/// `fsync`s the folder that holds `path` (`.` for a bare file name), so
/// that `path`'s name survives a power loss.
pub fn sync_parent(path: &std::path::Path) -> anyhow::Result<()> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    sync_dir(parent.unwrap_or(std::path::Path::new(".")))
}

/// Why a folder cannot be trusted with the crawl's files, if it cannot:
/// another user owns it, or users other than its owner may write in it
/// (and so swap a file for a symlink between a check and an open), as
/// ssh's StrictModes judges. `shared_ok` accepts a root-owned folder
/// with the sticky bit (like `/tmp`), where others cannot replace our
/// files; the state directory must be the user's own.
pub fn untrusted_dir(dir: &std::path::Path, shared_ok: bool) -> Option<String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let metadata = std::fs::metadata(dir).ok()?;
    let me = rustix::process::geteuid().as_raw();
    let mode = metadata.permissions().mode();
    let owner = metadata.uid();
    let sticky = mode & 0o1000 != 0;
    if owner != me && !(shared_ok && owner == 0) {
        let fix = if me == 0 {
            // A systemd job's state belongs to its dynamic user: root
            // reaches a running crawl through its socket, and a stopped
            // one as that user.
            format!("run the command as its owner: sudo -u '#{owner}' pagecrawl ...")
        } else {
            "use a folder of your own, or `chown` it to you".to_string()
        };
        return Some(format!(
            "{} belongs to another user (uid {owner}, you are uid {me}): that user could replace the crawl's files; {fix}",
            dir.display()
        ));
    }
    if mode & 0o022 != 0 && !(shared_ok && sticky) {
        return Some(format!(
            "{} is writable by {} (mode {:o}): another user could replace the crawl's files; \
             run `chmod go-w {}` (or use another folder)",
            dir.display(),
            if mode & 0o002 != 0 {
                "everyone"
            } else {
                "its group"
            },
            mode & 0o7777,
            dir.display()
        ));
    }
    None
}

/// A value from the user (config, command line, control request, server
/// header) as a message shows it: control characters
/// escaped (a `\r\n` must not split the one-line error), and cut after 80
/// characters (a 50 MB value must not fill the terminal).
pub fn shown(text: &str) -> String {
    const LIMIT: usize = 80;
    let mut out: String = text
        .chars()
        .take(LIMIT)
        .flat_map(|c| {
            if c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}') {
                c.escape_debug().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if text.chars().nth(LIMIT).is_some() {
        out.push_str("...");
    }
    out
}
