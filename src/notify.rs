//! The systemd notification protocol (`sd_notify`), in a few lines over a
//! Unix datagram socket: `READY=1`, `STATUS=...`, `WATCHDOG=1`,
//! `STOPPING=1`. Does nothing unless systemd (or a test) set
//! `NOTIFY_SOCKET`.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A connection to the service manager's notification socket.
pub struct Notifier {
    socket: UnixDatagram,
    address: SocketAddr,
}

impl Notifier {
    /// The notifier `NOTIFY_SOCKET` names, if any. A leading `@` means an
    /// abstract socket, as systemd uses.
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let address = match bytes.strip_prefix(b"@") {
            Some(name) => {
                use std::os::linux::net::SocketAddrExt;
                SocketAddr::from_abstract_name(name).ok()?
            }
            None => SocketAddr::from_pathname(&path).ok()?,
        };
        let socket = UnixDatagram::unbound().ok()?;
        Some(Notifier { socket, address })
    }

    /// Sends one notification; failures are logged, never fatal.
    pub fn send(&self, state: &str) {
        if let Err(e) = self.socket.send_to_addr(state.as_bytes(), &self.address) {
            log::debug!("sd_notify {state:?}: {e}");
        }
    }

    /// Half the watchdog interval systemd asked for (`WATCHDOG_USEC`), if it
    /// asked this process (`WATCHDOG_PID`, when set, must be ours).
    pub fn watchdog_interval() -> Option<Duration> {
        if let Some(pid) = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
        {
            if pid != std::process::id() {
                return None;
            }
        }
        let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
        (usec > 0).then(|| Duration::from_micros(usec / 2))
    }

    /// A heartbeat for the commit loop: `WATCHDOG=1` at most every `every`.
    pub fn heartbeat(self: std::sync::Arc<Self>, every: Duration) -> Box<dyn Fn() + Send + Sync> {
        let last: Mutex<Option<Instant>> = Mutex::new(None);
        Box::new(move || {
            let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
            if last.is_none_or(|at| at.elapsed() >= every) {
                self.send("WATCHDOG=1");
                *last = Some(Instant::now());
            }
        })
    }
}
