//! Stopping on SIGINT and SIGTERM (cargo feature `signals`): the first
//! signal stops the reactor gracefully, any later one at once.
//!
//! signal-hook's handler writes one byte per signal into a socket pair
//! whose other end is registered with the reactor's poll under the
//! `SIGNALS` token. So a signal wakes the loop whichever thread the kernel
//! delivers it to, the handler does nothing but a `send(2)` (async-signal-
//! safe, and no `unsafe` here), and no thread is started: the process stays
//! single-threaded, which keeps glibc on its cheaper path for every read and
//! write (see the README's Performance section).

use std::io::{self, Read};
use std::os::unix::net::UnixStream as StdUnixStream;

use mio::net::UnixStream;
use mio::{Interest, Registry};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::low_level::pipe;
use signal_hook::{SigId, low_level};

use crate::id::SIGNALS;
use crate::stop::StopRequest;
use crate::{Error, Handler, Reactor};

use super::Core;

impl<H: Handler> Reactor<H> {
    /// Stops this reactor on SIGINT or SIGTERM, as a server run from a
    /// terminal or by a service manager should: the first signal stops it
    /// gracefully (as [`Handle::stop`](crate::Handle::stop): pending output
    /// is delivered, up to [`Config::drain_timeout`](crate::Config::drain_timeout)),
    /// a second one at once (as [`Handle::stop_now`](crate::Handle::stop_now)).
    /// `run` then returns its [`StopReport`](crate::StopReport).
    ///
    /// Needs the cargo feature `signals`. No thread is started: the signal
    /// handler writes a byte to a socket pair the loop polls, so the signal
    /// wakes the loop from whatever thread it lands on. Call it once, before
    /// `run`; a second call does nothing. The handlers stay installed until
    /// the reactor is dropped; after that SIGINT and SIGTERM are ignored
    /// (signal-hook cannot put the default action back), so a program that
    /// goes on after its reactor is gone installs its own.
    ///
    /// ```
    /// # fn main() -> Result<(), tcp_reactor::Error> {
    /// use tcp_reactor::{Config, Echo, Reactor};
    /// let addr = "127.0.0.1:0".parse().expect("an address");
    /// let mut reactor = Reactor::bind(addr, Config::default(), Echo)?;
    /// reactor.stop_on_signals()?;
    /// // reactor.run()?; // until Ctrl-C
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Signals`] if the socket pair or the handlers cannot be set
    /// up; nothing is left installed then.
    pub fn stop_on_signals(&mut self) -> Result<(), Error> {
        let core = &mut self.core;
        if core.signals.is_none() {
            let pipe = SignalPipe::install(core.engine.poll.registry())
                .map_err(|source| Error::Signals { source })?;
            core.signals = Some(pipe);
        }
        Ok(())
    }
}

impl<H: Handler> Core<H> {
    /// The signal pipe is readable: the first signal ever asks for a
    /// graceful stop, any later one for a stop at once.
    #[cold]
    pub(super) fn signals_received(&mut self) {
        let Some(pipe) = self.signals.as_mut() else {
            return;
        };
        let (before, now) = pipe.take();
        self.engine.table.stats.signals = now;
        let request = match (before, now) {
            (_, 0) => StopRequest::None,
            (0, 1) => StopRequest::Graceful,
            _ => StopRequest::Now,
        };
        self.engine.table.request_stop(request);
    }
}

/// The read end of the signal pipe, and the handlers writing to it.
#[derive(Debug)]
pub(crate) struct SignalPipe {
    reader: UnixStream,
    handlers: Vec<SigId>,
    /// Signals taken from the pipe so far.
    received: u64,
}

impl SignalPipe {
    /// Registers the read end with the poll and a handler for SIGINT and
    /// SIGTERM writing to the other end.
    pub(crate) fn install(registry: &Registry) -> io::Result<SignalPipe> {
        let (reader, writer) = StdUnixStream::pair()?;
        // Non-blocking both: a burst of signals that fills the pipe loses
        // bytes, never blocks a handler; the loop reads until WouldBlock.
        reader.set_nonblocking(true)?;
        writer.set_nonblocking(true)?;
        let mut signals = SignalPipe {
            reader: UnixStream::from_std(reader),
            handlers: Vec::new(),
            received: 0,
        };
        registry.register(&mut signals.reader, SIGNALS, Interest::READABLE)?;
        // On an error below, dropping `signals` unregisters what was set.
        let second_writer = writer.try_clone()?;
        signals.handlers.push(pipe::register(SIGINT, writer)?);
        signals
            .handlers
            .push(pipe::register(SIGTERM, second_writer)?);
        Ok(signals)
    }

    /// Takes the signals that arrived since the last call; returns how many
    /// had arrived before them and how many there are now.
    pub(crate) fn take(&mut self) -> (u64, u64) {
        let before = self.received;
        let mut bytes = [0u8; 64];
        loop {
            match self.reader.read(&mut bytes) {
                Ok(0) => break,
                Ok(n) => self.received += n as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // WouldBlock: all taken. Any other error cannot come from a
                // local socket pair whose writers live in signal handlers.
                Err(_) => break,
            }
        }
        (before, self.received)
    }
}

impl Drop for SignalPipe {
    /// The handlers stop writing. signal-hook cannot restore the default
    /// action: once the reactor is gone, SIGINT and SIGTERM do nothing
    /// unless the program installs handlers of its own.
    fn drop(&mut self) {
        for handler in self.handlers.drain(..) {
            low_level::unregister(handler);
        }
    }
}
