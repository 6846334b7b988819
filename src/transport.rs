//! A thin layer over ureq's connections that spares five system calls per
//! request on a kept-alive connection, out of about a dozen.
//!
//! - **One liveness probe instead of two.** ureq probes a pooled connection
//!   when a response has been read and it goes back to the pool, and again
//!   when it is taken out for the next request: each probe is a
//!   non-blocking `recv` between two `ioctl`s. The second probe alone
//!   decides (bytes the server sent past the body, or a close, both show
//!   there), so the first one is answered "open" without looking.
//! - **Socket timeouts set once, not twice per request.** ureq gives each
//!   read and write the time left before the deadline, and sets it on the
//!   socket whenever it changed since the last call, which it always has.
//!   Rounded down to 4 significant bits, it is the same value from one
//!   request to the next, so the socket keeps it. A timeout can then fire
//!   up to 1/8 early (27 s instead of 30), never late.
//!
//! Both assume ureq 3.5's pool (the probe on take); the test
//! `crawl::a_connection_the_server_closed_is_not_reused` checks that a
//! connection closed by the server while pooled is not used again.
//!
//! It also tells one failure apart: a request on a **reused** connection
//! that broke before any byte of its response came back. The server
//! closed the idle connection as the request crossed it (the probe on take
//! cannot see a close that is still on its way), so the request was never
//! answered and can be sent again on a new connection, as curl and Go's
//! HTTP client do. Such an error carries [`ClosedBeforeAnswer`].

use std::io;
use std::time::Duration as StdDuration;

use ureq::unversioned::transport::time::Duration;
use ureq::unversioned::transport::{Buffers, ConnectionDetails, Connector, NextTimeout, Transport};
use ureq::Error;

/// Wraps whatever the connectors before it made (TCP, or TLS over TCP).
#[derive(Debug, Default)]
pub struct Lean;

impl<In: Transport> Connector<In> for Lean {
    type Out = LeanTransport<In>;

    fn connect(
        &self,
        _details: &ConnectionDetails,
        chained: Option<In>,
    ) -> Result<Option<Self::Out>, Error> {
        Ok(chained.map(|inner| LeanTransport {
            inner,
            used_since_probe: false,
            reused: false,
            answered: false,
        }))
    }
}

#[derive(Debug)]
pub struct LeanTransport<T> {
    inner: T,
    /// Bytes went either way since the last liveness question: the next
    /// one is the pool taking the connection back.
    used_since_probe: bool,
    /// A response was read on it before: the pool gave it back, and the
    /// server may close it at any time.
    reused: bool,
    /// Some byte of the current request's response arrived.
    answered: bool,
}

/// The mark on an error that broke a request on a reused connection before
/// any byte of its response came. Most often the server had closed the
/// connection before the request reached it; either way the request is a
/// GET, which may be sent again (idempotent, RFC 9110 §9.2.2).
#[derive(Debug, thiserror::Error)]
#[error("the server closed the kept-alive connection before answering ({0})")]
pub struct ClosedBeforeAnswer(io::Error);

impl ClosedBeforeAnswer {
    /// Whether `error` is one.
    pub fn is(error: &Error) -> bool {
        matches!(error, Error::Io(io) if io.get_ref().is_some_and(|e| e.is::<ClosedBeforeAnswer>()))
    }
}

/// What a socket says when its peer closed it.
fn is_closed(error: &Error) -> bool {
    matches!(error, Error::Io(io) if matches!(
        io.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::NotConnected
    ))
}

impl<T> LeanTransport<T> {
    /// `error`, marked when it is a close that cut a request on a reused
    /// connection before any of its answer.
    fn mark(&self, error: Error) -> Error {
        if !self.reused || self.answered || !is_closed(&error) {
            return error;
        }
        let Error::Io(io) = error else {
            return error;
        };
        Error::Io(io::Error::new(io.kind(), ClosedBeforeAnswer(io)))
    }
}

impl<T: Transport> Transport for LeanTransport<T> {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self.inner.buffers()
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        self.used_since_probe = true;
        // A GET is all sent before its answer comes: a new request starts.
        self.answered = false;
        self.inner
            .transmit_output(amount, coarse(timeout))
            .map_err(|e| self.mark(e))
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.used_since_probe = true;
        match self.inner.await_input(coarse(timeout)) {
            Ok(true) => {
                self.answered = true;
                Ok(true)
            }
            // The end of the stream where an answer should start.
            Ok(false) if self.reused && !self.answered => Err(self.mark(Error::Io(
                io::Error::new(io::ErrorKind::UnexpectedEof, "closed by the server"),
            ))),
            Ok(false) => Ok(false),
            Err(error) => Err(self.mark(error)),
        }
    }

    fn is_open(&mut self) -> bool {
        if std::mem::replace(&mut self.used_since_probe, false) {
            // Back to the pool right after a response: it is probed when it
            // is taken out again.
            self.reused = true;
            return true;
        }
        self.inner.is_open()
    }

    fn is_tls(&self) -> bool {
        self.inner.is_tls()
    }
}

/// The timeout rounded down to 4 significant bits (at most 1/8 less).
fn coarse(mut timeout: NextTimeout) -> NextTimeout {
    timeout.after = round_down(timeout.after);
    timeout.per_read = timeout.per_read.map(round_down);
    timeout.per_write = timeout.per_write.map(round_down);
    timeout
}

fn round_down(duration: Duration) -> Duration {
    let Duration::Exact(exact) = duration else {
        return duration;
    };
    let nanos = u64::try_from(exact.as_nanos()).unwrap_or(u64::MAX);
    let bits = u64::BITS - nanos.leading_zeros();
    if bits <= 4 {
        return duration;
    }
    let shift = bits - 4;
    Duration::Exact(StdDuration::from_nanos(nanos >> shift << shift))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_round_down_by_less_than_an_eighth_and_settle() {
        for millis in [1, 7, 999, 1_000, 29_999, 30_000, 86_400_000] {
            let exact = StdDuration::from_millis(millis);
            let Duration::Exact(rounded) = round_down(Duration::Exact(exact)) else {
                panic!("stays exact");
            };
            assert!(rounded <= exact, "{millis} ms");
            assert!(rounded >= exact - exact / 8, "{millis} ms → {rounded:?}");
        }
        // What is left of a 30 s deadline a few milliseconds apart: one
        // socket timeout for all of them.
        let left = |ms: u64| round_down(Duration::Exact(StdDuration::from_millis(ms)));
        assert_eq!(left(30_000), left(29_000));
        assert_eq!(left(29_000), left(28_000));
        assert_eq!(round_down(Duration::NotHappening), Duration::NotHappening);
    }
}
