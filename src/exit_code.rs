//! The process exit codes, one typed list so scripts can branch on them.

/// What a `pagecrawl` process tells its caller when it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The command did what it was asked.
    Success = 0,
    /// A runtime failure: I/O, a corrupt state directory, an unwritable output.
    Failure = 1,
    /// Bad input: arguments, configuration, pattern, range, or a job that does
    /// not match the state directory. Nothing was changed.
    Usage = 2,
    /// The state directory is held by another running `pagecrawl run`.
    Busy = 3,
    /// The crawl finished, but some pages failed for good (after their
    /// retries): `pagecrawl queue --state failed` lists them and
    /// `pagecrawl retry` queues them again. wget uses 8 for the same
    /// ("server issued an error response").
    FailedPages = 8,
    /// A service the command needs cannot be reached now (the PostgreSQL
    /// store: refused, unknown host, timed out); trying again later may
    /// work. sysexits.h's `EX_UNAVAILABLE`.
    Unavailable = 69,
    /// A second SIGINT/SIGTERM cut the graceful stop short (the checkpoint is
    /// still consistent; the next run resumes).
    Interrupted = 130,
}

impl From<Exit> for std::process::ExitCode {
    fn from(exit: Exit) -> Self {
        std::process::ExitCode::from(exit as u8)
    }
}
