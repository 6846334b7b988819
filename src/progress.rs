//! What a person watching `run` sees while it crawls.
//!
//! On a terminal (stderr is a TTY and info messages are on, i.e. no `-q`)
//! a progress bar: pages finished of the total (or, for an open range, the
//! frontier), pages/s over the last minute, ETA, items, retries, failures.
//! Log lines are routed through it (see `logger`), so they print above the
//! bar and never tear it. Anywhere else (a service, a pipe) there is no bar,
//! and `run` logs a progress line every few seconds instead.
//!
//! The rate over the last minute is also published for the control socket,
//! so `status` can show it while the crawl runs.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle, TermLike};

use crate::store::Counters;

/// The span "pages/s" is measured over, in the bar and in `status`.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);

/// Pages per second over a sliding window of (time, pages done) samples.
/// Pure: the caller supplies the clock, so it is tested without sleeping.
#[derive(Debug, Clone)]
pub struct RateWindow {
    span: Duration,
    samples: VecDeque<(Instant, u64)>,
}

impl RateWindow {
    pub fn new(span: Duration) -> RateWindow {
        RateWindow {
            span,
            samples: VecDeque::new(),
        }
    }

    /// Adds a sample and forgets those the window no longer needs: it keeps
    /// the newest sample at least `span` old, so the rate covers the whole
    /// span once the crawl has run that long.
    pub fn record(&mut self, at: Instant, done: u64) {
        if let Some(&(last, _)) = self.samples.back() {
            if at < last {
                return;
            }
        }
        self.samples.push_back((at, done));
        while self.samples.len() > 2
            && self
                .samples
                .get(1)
                .is_some_and(|&(second, _)| at.duration_since(second) >= self.span)
        {
            self.samples.pop_front();
        }
    }

    /// Pages per second between the oldest and newest sample; `None` until
    /// the samples span at least half a second (a rate from less than that
    /// is noise).
    pub fn rate(&self) -> Option<f64> {
        let (&(first_at, first), &(last_at, last)) = (self.samples.front()?, self.samples.back()?);
        let seconds = last_at.duration_since(first_at).as_secs_f64();
        (seconds >= 0.5).then(|| last.saturating_sub(first) as f64 / seconds)
    }
}

/// The daemon's rate over the last minute, for `status` over the control
/// socket (`None` until measured, and in processes that do not crawl).
static RECENT_RATE: Mutex<Option<f64>> = Mutex::new(None);

/// Publishes the crawl's current rate (see [`recent_rate`]).
pub fn publish_recent_rate(rate: Option<f64>) {
    *RECENT_RATE.lock().unwrap_or_else(|e| e.into_inner()) = rate;
}

/// The rate the crawl running in this process measured over the last
/// minute.
pub fn recent_rate() -> Option<f64> {
    *RECENT_RATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Seconds as a person reads them: `42s`, `3m07s`, `2h05m`.
pub fn human_duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// What the bar shows, from the store's counters and the supervisor's
/// flags.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Snapshot {
    pub done: u64,
    pub failed: u64,
    pub pending: u64,
    pub items: u64,
    pub retries: u64,
    /// Open ranges: the next page the range has not queued yet.
    pub frontier: Option<u64>,
    /// Pages per second over the last minute.
    pub rate: Option<f64>,
    pub paused: bool,
    pub stopping: bool,
}

impl Snapshot {
    pub fn new(counters: &Counters, open_range: bool, rate: Option<f64>) -> Snapshot {
        Snapshot {
            done: counters.tasks_done(),
            failed: counters.tasks_failed(),
            pending: counters.tasks_pending(),
            items: counters.items,
            retries: counters.retries,
            frontier: open_range.then_some(counters.frontier),
            rate,
            paused: false,
            stopping: false,
        }
    }

    /// Pages done or failed: the bar's position.
    pub fn finished(&self) -> u64 {
        self.done + self.failed
    }

    pub fn total(&self) -> u64 {
        self.finished() + self.pending
    }

    /// Seconds until the pending pages are done at the current rate.
    pub fn eta_seconds(&self) -> Option<f64> {
        match self.rate {
            Some(rate) if rate > 0.0 && self.frontier.is_none() => Some(self.pending as f64 / rate),
            _ => None,
        }
    }
}

/// The text right of the bar, e.g.
/// `1234/5900 pages  98.3 pages/s  ETA 47s  24680 items  12 retries  3 failed`.
/// Stopping or paused, the rate and ETA give way to the state, so the line
/// is no wider than a running one (the layout was chosen for that width).
pub fn bar_message(s: &Snapshot) -> String {
    let pages = match s.frontier {
        Some(frontier) => format!(
            "open range: {} pages, frontier page {frontier}",
            s.finished()
        ),
        None => format!("{}/{} pages", s.finished(), s.total()),
    };
    let rate = s
        .rate
        .map_or_else(|| "-- pages/s".to_string(), |r| format!("{r:.1} pages/s"));
    let eta = match (s.frontier, s.eta_seconds()) {
        (Some(_), _) => String::new(),
        (None, Some(eta)) => format!("  ETA {}", human_duration(eta)),
        (None, None) => "  ETA --".to_string(),
    };
    let state = if s.stopping {
        "stopping"
    } else if s.paused {
        "paused"
    } else {
        ""
    };
    if !state.is_empty() {
        return format!(
            "{pages}  {state}  {} items  {} retries  {} failed",
            s.items, s.retries, s.failed
        );
    }
    format!(
        "{pages}  {rate}{eta}  {} items  {} retries  {} failed",
        s.items, s.retries, s.failed
    )
}

/// Whether `run` should draw a bar: stderr is a terminal that can draw one,
/// and info messages are on (`-q` silences the bar with the progress log).
pub fn wants_bar() -> bool {
    std::io::stderr().is_terminal()
        && std::env::var_os("TERM").is_none_or(|term| term != "dumb")
        && log::log_enabled!(log::Level::Info)
}

/// The bar's layout for a terminal this wide: spinner, elapsed time, bar
/// and counts where they fit; the bar goes first, then the elapsed time, so
/// that the counts stay on one line down to 80 columns.
pub fn template(columns: u16, open_range: bool) -> String {
    // The counts' usual width; spinner and elapsed time with their spaces;
    // the bar's brackets and space.
    const COUNTS: u16 = 76;
    const SPINNER: u16 = 2;
    const ELAPSED: u16 = 9;
    const BRACKETS: u16 = 3;
    let usable = columns.saturating_sub(ECHO_MARGIN);
    let room = usable.saturating_sub(SPINNER + ELAPSED + BRACKETS + COUNTS);
    if !open_range && room >= 10 {
        format!(
            "{{spinner:.green}} {{elapsed_precise}} [{{bar:{}.cyan/blue}}] {{msg}}",
            room.min(30)
        )
    } else if usable >= SPINNER + ELAPSED + COUNTS {
        "{spinner:.green} {elapsed_precise} {msg}".to_string()
    } else {
        "{spinner:.green} {msg}".to_string()
    }
}

/// The progress bar of one run; cleared (and log lines no longer routed
/// through it) when dropped.
pub struct ProgressView {
    bar: ProgressBar,
    open_range: bool,
}

impl ProgressView {
    /// Draws a bar if [`wants_bar`] says so.
    pub fn start(open_range: bool) -> Option<ProgressView> {
        if !wants_bar() {
            return None;
        }
        let columns = console::Term::stderr().size().1;
        let template = template(columns, open_range);
        // A bad template is a bug; it shows as no bar rather than an error.
        let style = ProgressStyle::with_template(&template)
            .ok()?
            .progress_chars("=> ");
        let target = ProgressDrawTarget::term_like_with_hz(
            Box::new(EchoSafeTerm(console::Term::buffered_stderr())),
            8,
        );
        let bar = ProgressBar::with_draw_target(Some(0), target).with_style(style);
        bar.enable_steady_tick(Duration::from_millis(125));
        crate::logger::route_through(Some(bar.clone()));
        Some(ProgressView { bar, open_range })
    }

    pub fn open_range(&self) -> bool {
        self.open_range
    }

    /// Redraws the bar with new numbers.
    pub fn show(&self, snapshot: &Snapshot) {
        if !self.open_range {
            self.bar.set_length(snapshot.total());
            self.bar.set_position(snapshot.finished());
        }
        self.bar.set_message(bar_message(snapshot));
    }
}

/// Stderr as indicatif sees it, a few columns narrower than it is.
///
/// indicatif pads the bar's line to the terminal's full width, leaving the
/// cursor in the last column; the `^C` a terminal echoes for Ctrl-C then
/// wraps onto a new line, and the next redraw clears that line instead of
/// the bar's, leaving a stale copy of the bar above the log. With a margin
/// the echo stays on the bar's line and is cleared with it.
#[derive(Debug)]
struct EchoSafeTerm(console::Term);

/// Columns left free for the terminal's echo of `^C` / `^\`.
const ECHO_MARGIN: u16 = 3;

impl TermLike for EchoSafeTerm {
    fn width(&self) -> u16 {
        self.0.size().1.saturating_sub(ECHO_MARGIN).max(20)
    }

    fn height(&self) -> u16 {
        self.0.size().0
    }

    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_up(n)
    }

    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_down(n)
    }

    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_right(n)
    }

    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.0.move_cursor_left(n)
    }

    fn write_line(&self, text: &str) -> std::io::Result<()> {
        self.0.write_line(text)
    }

    fn write_str(&self, text: &str) -> std::io::Result<()> {
        self.0.write_str(text)
    }

    fn clear_line(&self) -> std::io::Result<()> {
        self.0.clear_line()
    }

    fn flush(&self) -> std::io::Result<()> {
        self.0.flush()
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        crate::logger::route_through(None);
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rate_covers_the_last_span_only() {
        let start = Instant::now();
        let mut window = RateWindow::new(Duration::from_secs(60));
        assert_eq!(window.rate(), None);
        window.record(start, 0);
        window.record(start + Duration::from_millis(100), 50);
        assert_eq!(window.rate(), None, "too short to tell");
        // 10 pages/s for two minutes, then 1 page/s for one.
        for second in 1..=120 {
            window.record(start + Duration::from_secs(second), second * 10);
        }
        assert!((window.rate().unwrap() - 10.0).abs() < 1e-9);
        for second in 121..=180 {
            window.record(start + Duration::from_secs(second), 1200 + (second - 120));
        }
        assert!(
            (window.rate().unwrap() - 1.0).abs() < 1e-9,
            "{:?}",
            window.rate()
        );
        assert!(window.samples.len() <= 62, "old samples are dropped");
        // A clock that goes backwards is ignored rather than dividing by it.
        window.record(start, 0);
        assert!((window.rate().unwrap() - 1.0).abs() < 1e-9);
    }

    #[test]
    fn durations_read_like_a_person_writes_them() {
        assert_eq!(human_duration(0.4), "0s");
        assert_eq!(human_duration(42.0), "42s");
        assert_eq!(human_duration(187.0), "3m07s");
        assert_eq!(human_duration(7500.0), "2h05m");
        assert_eq!(human_duration(-3.0), "0s");
    }

    #[test]
    fn the_layout_fits_the_terminal() {
        assert_eq!(
            template(120, false),
            "{spinner:.green} {elapsed_precise} [{bar:27.cyan/blue}] {msg}"
        );
        assert_eq!(
            template(200, false),
            "{spinner:.green} {elapsed_precise} [{bar:30.cyan/blue}] {msg}"
        );
        assert_eq!(
            template(120, true),
            "{spinner:.green} {elapsed_precise} {msg}"
        );
        assert_eq!(
            template(100, false),
            "{spinner:.green} {elapsed_precise} {msg}"
        );
        assert_eq!(template(80, false), "{spinner:.green} {msg}");
        assert_eq!(template(0, false), "{spinner:.green} {msg}");
    }

    #[test]
    fn the_bar_message_names_every_count() {
        let snapshot = Snapshot {
            done: 1231,
            failed: 3,
            pending: 4666,
            items: 24620,
            retries: 12,
            frontier: None,
            rate: Some(98.3),
            paused: false,
            stopping: false,
        };
        assert_eq!(
            bar_message(&snapshot),
            "1234/5900 pages  98.3 pages/s  ETA 47s  24620 items  12 retries  3 failed"
        );
        let open = Snapshot {
            frontier: Some(1240),
            rate: None,
            paused: true,
            ..snapshot
        };
        assert_eq!(
            bar_message(&open),
            "open range: 1234 pages, frontier page 1240  paused  24620 items  12 retries  3 failed"
        );
        assert_eq!(open.eta_seconds(), None, "an open range has no ETA");
        let stopping = Snapshot {
            stopping: true,
            rate: Some(0.0),
            ..snapshot
        };
        assert_eq!(
            bar_message(&stopping),
            "1234/5900 pages  stopping  24620 items  12 retries  3 failed"
        );
    }

    #[test]
    fn a_stopping_or_paused_bar_is_no_wider_than_a_running_one() {
        // Wide numbers: a million pages, ten million items, a slow rate.
        let running = Snapshot {
            done: 999_000,
            failed: 999,
            pending: 1,
            items: 19_999_999,
            retries: 99_999,
            frontier: None,
            rate: Some(0.1),
            paused: false,
            stopping: false,
        };
        let width = bar_message(&running).chars().count();
        for state in [
            Snapshot {
                stopping: true,
                ..running
            },
            Snapshot {
                paused: true,
                ..running
            },
        ] {
            let message = bar_message(&state);
            assert!(
                message.chars().count() <= width,
                "{message} is wider than {width}"
            );
        }
    }
}
