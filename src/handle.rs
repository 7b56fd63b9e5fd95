//! `Handle`: talking to a running reactor from other threads.
//!
//! Commands go into a mutex-guarded queue and a `mio::Waker` wakes the
//! loop, which swaps the whole queue out in one lock and runs it. Only the
//! first command after the loop emptied the queue wakes it (one `write` to
//! the eventfd per batch, not per command), so many threads sending at once
//! cost the loop one wake-up per turn.
//!
//! A stop takes no lock: it raises an atomic level and wakes the loop (an
//! eventfd `write`), so it is async-signal-safe and a signal handler may
//! call it.

use std::fmt;
use std::io;
use std::mem;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use mio::{Registry, Waker};

use crate::id::WAKER;
use crate::stop::StopRequest;
use crate::{ConnId, Error};

/// What a [`Handle`] asks of the loop.
pub(crate) enum Command<M> {
    Send(ConnId, Vec<u8>),
    Message(M),
}

struct Inbox<M> {
    commands: Vec<Command<M>>,
    /// False once the reactor has stopped (or been dropped).
    open: bool,
    /// A wake-up is on its way; later commands need not send another.
    woken: bool,
}

struct Shared<M> {
    inbox: Mutex<Inbox<M>>,
    /// The strongest stop asked for and not yet taken by the loop
    /// (`StopRequest as u8`).
    stop: AtomicU8,
    waker: Box<dyn Wake>,
}

/// What wakes the loop: the reactor's `mio::Waker` (an eventfd write), or
/// a stand-in that fails on demand in this module's tests.
trait Wake: Send + Sync {
    fn wake(&self) -> io::Result<()>;
}

impl Wake for Waker {
    fn wake(&self) -> io::Result<()> {
        Waker::wake(self)
    }
}

impl<M> Shared<M> {
    fn inbox(&self) -> MutexGuard<'_, Inbox<M>> {
        // The lock is only held to push or swap a Vec: a panic cannot leave
        // the inbox half-changed, so a poisoned lock is still sound.
        self.inbox
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Controls a reactor from any thread: stop it, send bytes to one of its
/// connections, or hand its handler a message of the handler's own
/// [`Message`](crate::Handler::Message) type.
///
/// Get one with [`Reactor::handle`](crate::Reactor::handle) before the
/// reactor runs, and clone it freely (a handler that wants one keeps a
/// clone in its own state). Each call queues a command and wakes the loop,
/// which runs queued commands in the order they were queued. Once the
/// reactor has stopped, every call is refused with [`Error::Stopped`].
///
/// ```
/// use std::net::SocketAddr;
/// use tcp_reactor::{Config, Echo, Reactor};
///
/// # fn main() -> Result<(), tcp_reactor::Error> {
/// let addr: SocketAddr = "127.0.0.1:0".parse().expect("an address");
/// let mut reactor = Reactor::bind(addr, Config::default(), Echo)?;
/// let handle = reactor.handle();
/// let stopper = std::thread::spawn(move || handle.stop());
/// let report = reactor.run()?; // returns once the stop has drained
/// assert_eq!(report.forced, 0);
/// stopper.join().expect("the stopping thread");
/// # Ok(())
/// # }
/// ```
pub struct Handle<M> {
    shared: Arc<Shared<M>>,
}

impl<M> Clone for Handle<M> {
    fn clone(&self) -> Handle<M> {
        Handle {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M> fmt::Debug for Handle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle")
            .field("stopped", &self.is_stopped())
            .finish_non_exhaustive()
    }
}

impl<M> Handle<M> {
    /// Creates the handle's shared state and registers its waker.
    pub(crate) fn new(registry: &Registry) -> io::Result<Handle<M>> {
        Ok(Handle::with_waker(Box::new(Waker::new(registry, WAKER)?)))
    }

    fn with_waker(waker: Box<dyn Wake>) -> Handle<M> {
        Handle {
            shared: Arc::new(Shared {
                inbox: Mutex::new(Inbox {
                    commands: Vec::new(),
                    open: true,
                    woken: false,
                }),
                stop: AtomicU8::new(StopRequest::None as u8),
                waker,
            }),
        }
    }

    /// Stops the reactor gracefully, as [`Context::stop`](crate::Context::stop)
    /// does. Stopping a reactor that has stopped does nothing.
    ///
    /// Async-signal-safe: it takes no lock and allocates nothing (an atomic
    /// update and a `write(2)` to the loop's eventfd), so a signal handler
    /// may call it (`Reactor::stop_on_signals` needs none: its handler only
    /// writes to a socket pair the loop polls).
    pub fn stop(&self) {
        self.request_stop(StopRequest::Graceful);
    }

    /// Stops the reactor at once, as [`Context::stop_now`](crate::Context::stop_now)
    /// does. Also ends a graceful stop in progress. Async-signal-safe, as
    /// [`stop`](Self::stop).
    pub fn stop_now(&self) {
        self.request_stop(StopRequest::Now);
    }

    fn request_stop(&self, level: StopRequest) {
        self.shared.stop.fetch_max(level as u8, Ordering::SeqCst);
        // A failed wake is an OS fault with no one to report it to here;
        // the request stays recorded and is seen on the loop's next turn.
        let _ = self.shared.waker.wake();
    }

    /// Sends `data` to connection `id`, as [`Context::send`](crate::Context::send)
    /// does, on the loop's next turn. Bytes for a connection that has closed
    /// (or been shut down for writing) by then are dropped; its `on_close`
    /// tells the handler why.
    ///
    /// # Errors
    ///
    /// [`Error::Stopped`] once the reactor has stopped; [`Error::Poll`] if
    /// waking the loop fails (an OS fault): the bytes stay queued, and the
    /// next call tries the wake-up again.
    pub fn send(&self, id: ConnId, data: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.push(Command::Send(id, data.into()))
    }

    /// Hands `message` to the handler's
    /// [`on_message`](crate::Handler::on_message) on the loop's next turn.
    /// Messages from one thread arrive in the order they were sent.
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send): a message refused with [`Error::Stopped`] is
    /// dropped; one whose wake-up failed stays queued.
    pub fn send_message(&self, message: M) -> Result<(), Error> {
        self.push(Command::Message(message))
    }

    /// Whether the reactor has stopped: every call is refused from then on.
    pub fn is_stopped(&self) -> bool {
        !self.shared.inbox().open
    }

    fn push(&self, command: Command<M>) -> Result<(), Error> {
        let wake = {
            let mut inbox = self.shared.inbox();
            if !inbox.open {
                return Err(Error::Stopped);
            }
            inbox.commands.push(command);
            !mem::replace(&mut inbox.woken, true)
        };
        if wake {
            if let Err(source) = self.shared.waker.wake() {
                // No wake-up is on its way after all: the next command
                // must send one, or the queue would wait for good.
                self.shared.inbox().woken = false;
                return Err(Error::Poll {
                    op: "wake (eventfd write)",
                    source,
                });
            }
        }
        Ok(())
    }

    /// The loop's side: the stop asked for since the last call, if any.
    pub(crate) fn take_stop_request(&self) -> StopRequest {
        match self
            .shared
            .stop
            .swap(StopRequest::None as u8, Ordering::SeqCst)
        {
            2 => StopRequest::Now,
            1 => StopRequest::Graceful,
            _ => StopRequest::None,
        }
    }

    /// The loop's side: moves every queued command into `into` (which must
    /// be empty; its capacity is reused, so a steady stream of commands
    /// costs no allocation here).
    pub(crate) fn take_commands(&self, into: &mut Vec<Command<M>>) {
        let mut inbox = self.shared.inbox();
        mem::swap(&mut inbox.commands, into);
        inbox.woken = false;
    }

    /// The reactor stopped: refuse every call from now on and drop what is
    /// still queued.
    pub(crate) fn close(&self) {
        let dropped = {
            let mut inbox = self.shared.inbox();
            inbox.open = false;
            mem::take(&mut inbox.commands)
        };
        drop(dropped);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts wake-ups; the first `fail_first` of them fail.
    struct FlakyWaker {
        calls: Arc<AtomicUsize>,
        fail_first: usize,
    }

    impl Wake for FlakyWaker {
        fn wake(&self) -> io::Result<()> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call < self.fail_first {
                Err(io::Error::other("injected wake failure"))
            } else {
                Ok(())
            }
        }
    }

    #[test]
    fn a_failed_wake_is_retried_by_the_next_command() {
        let calls = Arc::new(AtomicUsize::new(0));
        let handle: Handle<u32> = Handle::with_waker(Box::new(FlakyWaker {
            calls: Arc::clone(&calls),
            fail_first: 1,
        }));
        assert!(matches!(handle.send_message(1), Err(Error::Poll { .. })));
        handle.send_message(2).expect("the second wake works");
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the second command woke");
        // Both wait for the loop, in order; later commands need no wake-up
        // until the loop has taken them.
        handle.send_message(3).expect("queued");
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        let mut taken = Vec::new();
        handle.take_commands(&mut taken);
        let messages: Vec<u32> = taken
            .into_iter()
            .map(|c| match c {
                Command::Message(m) => m,
                Command::Send(..) => unreachable!("only messages were sent"),
            })
            .collect();
        assert_eq!(messages, [1, 2, 3]);
        handle.send_message(4).expect("queued");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            3,
            "an empty queue wakes again"
        );
    }
}
