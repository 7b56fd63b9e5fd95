//! What a program implements to serve connections: the `Handler` trait and
//! the reasons a connection ends.

use std::fmt;
use std::io;

use mio::event::Event;

use crate::{Addr, ConnId, ConnectError, Context, ListenerId, SourceId, TimerId};

/// The protocol side of a server: the reactor owns sockets, buffers and
/// limits; the handler decides what bytes mean and what to answer.
///
/// Callbacks run on the reactor's thread, one at a time, and must not block.
/// Each gets a [`Context`] to act on any connection. Closing (`close`,
/// `abort`, errors) is deferred: `on_close` runs after the current callback
/// returns, never inside another callback, and an id is never reused for
/// another connection.
pub trait Handler: Sized {
    /// Per-connection state the handler keeps, stored in the reactor beside
    /// the socket: a callback about the connection gets it as `conn`, and
    /// any callback reaches any connection's with [`Context::conn_mut`].
    /// Use `()` when there is none.
    type Conn;

    /// What other threads send the handler through a
    /// [`Handle`](crate::Handle) (see [`on_message`](Self::on_message)).
    /// Use `()` when there is nothing to send.
    type Message: Send + 'static;

    /// A connection was accepted from `listener`; `peer` is who connected
    /// (a TCP address, or a Unix socket address, usually unnamed). Return
    /// its state. The handler may `send` a greeting, or `abort` to refuse
    /// it. (Outbound connections get their state from
    /// [`Context::connect`] and hear [`on_connect`](Self::on_connect).)
    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        listener: ListenerId,
    ) -> Self::Conn;

    /// An outbound connection ([`Context::connect`]) is established: what
    /// was sent meanwhile is being flushed, and from now on it is a
    /// connection like any other. One that fails instead goes to
    /// [`on_close`](Self::on_close) with [`CloseReason::ConnectFailed`].
    fn on_connect(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, conn: &mut Self::Conn) {
        let _ = (cx, id, conn);
    }

    /// Bytes arrived. `data` holds what the handler left unconsumed last
    /// time followed by the new bytes. Return how many bytes were consumed
    /// (more than `data.len()` counts as all); the rest is kept, up to
    /// [`Config::max_input`](crate::Config::max_input), and offered again
    /// with the next bytes, or without new bytes when reading resumes after
    /// [`Context::pause_read`] or backpressure (a paused handler with a
    /// pipelined request gets it back on `resume_read`). Input left while
    /// output is queued stops reading until the output falls to the low
    /// water mark, then is offered again: a handler of pipelined requests
    /// stops consuming when its output backs up (see the crate docs,
    /// *Output flow*).
    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        conn: &mut Self::Conn,
        data: &[u8],
    ) -> usize;

    /// The peer sent its FIN: no more bytes will arrive. The default closes
    /// gracefully: everything already sent is flushed, then FIN. A handler
    /// that still has things to say can send them first, or keep the
    /// connection half-open and close later. Input it left unconsumed (an
    /// unfinished frame) is dropped when the connection closes.
    fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, conn: &mut Self::Conn) {
        let _ = conn;
        cx.close(id);
    }

    /// Reading had stopped for the connection's output (queued output
    /// reached the write high water mark, or the handler left input
    /// unconsumed while output was queued) and the output has fallen to the
    /// low water mark: reading has resumed, unconsumed input is offered
    /// again, and the handler may produce more.
    fn on_drain(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, conn: &mut Self::Conn) {
        let _ = (cx, id, conn);
    }

    /// A timer set with [`Context::set_timer`] or [`Context::set_interval`]
    /// is due; `key` is the number it was set with. Timers fire no earlier
    /// than their deadline, in deadline order (equal deadlines in the order
    /// they were set), after the turn's I/O.
    fn on_timer(&mut self, cx: &mut Context<'_, Self::Conn>, timer: TimerId, key: u64) {
        let _ = (cx, timer, key);
    }

    /// One of the program's own sources ([`Context::register`]) is ready.
    /// Sources are edge-triggered: read (or write) until `WouldBlock`, or
    /// this will not be called again for what is left.
    fn on_source(&mut self, cx: &mut Context<'_, Self::Conn>, source: SourceId, event: &Event) {
        let _ = (cx, source, event);
    }

    /// A message from another thread, sent with
    /// [`Handle::send_message`](crate::Handle::send_message).
    fn on_message(&mut self, cx: &mut Context<'_, Self::Conn>, message: Self::Message) {
        let _ = (cx, message);
    }

    /// The connection is gone; its state is handed back. Runs once per
    /// connection whose `on_open` ran.
    fn on_close(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        conn: Self::Conn,
        reason: CloseReason,
    ) {
        let _ = (cx, id, conn, reason);
    }
}

/// Why a connection closed.
#[derive(Debug)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer sent FIN first; the reactor flushed what was queued, sent its
    /// own FIN and closed.
    PeerClosed,
    /// The handler closed first ([`Context::close`] or
    /// [`Context::shutdown_write`]): output was flushed, FIN sent and the
    /// peer's FIN seen.
    Local,
    /// The handler called [`Context::abort`]: queued output was dropped and
    /// the peer got a reset.
    Aborted,
    /// The peer reset the connection (`ECONNRESET`, `EPIPE`,
    /// `ECONNABORTED`). Normal on the internet; logged at debug level.
    Reset,
    /// Another I/O error on the socket.
    Io(io::Error),
    /// The peer sent more than [`Config::max_input`](crate::Config::max_input)
    /// bytes that the handler would not consume.
    InputLimit,
    /// Queued output passed [`Config::max_output`](crate::Config::max_output).
    OutputLimit,
    /// No read or write moved a byte for [`Config::idle_timeout`](crate::Config::idle_timeout),
    /// or a graceful close did not complete within
    /// [`Config::close_timeout`](crate::Config::close_timeout) (then cut
    /// with a reset).
    TimedOut,
    /// The reactor stopped: the connection drained (output flushed, FINs
    /// exchanged) or was cut at the drain deadline or by `stop_now`; the
    /// [`StopReport`](crate::StopReport) counts which.
    Stopped,
    /// An outbound connection ([`Context::connect`]) was never
    /// established; output sent to it meanwhile is dropped.
    ConnectFailed(ConnectError),
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::PeerClosed => f.write_str("closed by the peer"),
            CloseReason::Local => f.write_str("closed"),
            CloseReason::Aborted => f.write_str("aborted"),
            CloseReason::Reset => f.write_str("reset by the peer"),
            CloseReason::Io(e) => write!(f, "I/O error: {e}"),
            CloseReason::InputLimit => f.write_str("input limit passed"),
            CloseReason::OutputLimit => f.write_str("output limit passed"),
            CloseReason::TimedOut => f.write_str("timed out"),
            CloseReason::Stopped => f.write_str("the reactor stopped"),
            CloseReason::ConnectFailed(e) => write!(f, "connect failed: {e}"),
        }
    }
}

impl CloseReason {
    /// Maps a socket error to a reason: the ways a peer can vanish are a
    /// `Reset`, anything else is `Io`.
    pub(crate) fn from_io(error: io::Error) -> CloseReason {
        match error.kind() {
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::NotConnected => CloseReason::Reset,
            _ => CloseReason::Io(error),
        }
    }
}
