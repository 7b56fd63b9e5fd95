//! A single-threaded readiness reactor on [`mio`] that serves thousands of
//! TCP connections on one thread, and that you can read end to end.
//!
//! It is the tutorial server (`bind`, `listen(128)`, `accept`, `recv`,
//! `send`) grown up: non-blocking, many clients at once, memory bounded,
//! nothing accepted ever lost. You implement [`Handler`] (the protocol); the
//! [`Reactor`] owns sockets, buffers, timers and limits. One loop holds
//! every socket a program needs: any number of listeners (TCP and Unix),
//! outbound connections, and the program's own sources (see *Sockets of
//! every kind*).
//!
//! # Quick start
//!
//! An uppercasing echo server. It runs here until a client sends `quit`;
//! the test drives it with one client.
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::{SocketAddr, TcpStream};
//! use tcp_reactor::{Addr, Config, ConnId, Context, Handler, ListenerId, Reactor};
//!
//! struct Upper;
//!
//! impl Handler for Upper {
//!     type Conn = ();
//!     type Message = ();
//!     fn on_open(&mut self, _cx: &mut Context<'_>, _id: ConnId, _peer: &Addr, _: ListenerId) {}
//!     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
//!         if data.starts_with(b"quit") {
//!             cx.stop();
//!         } else {
//!             let _ = cx.send(id, &data.to_ascii_uppercase());
//!         }
//!         data.len()
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let addr: SocketAddr = "127.0.0.1:0".parse()?;
//! let mut reactor = Reactor::bind(addr, Config::default(), Upper)?;
//! let addr = reactor.local_addr().expect("bound"); // the port the kernel chose
//! let server = std::thread::spawn(move || reactor.run());
//!
//! let mut client = TcpStream::connect(addr)?;
//! client.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
//! client.write_all(b"hello")?;
//! let mut reply = [0; 5];
//! client.read_exact(&mut reply)?;
//! assert_eq!(&reply, b"HELLO");
//! client.write_all(b"quit")?;
//! drop(client); // a graceful stop waits for each client to close
//! let report = server.join().expect("reactor thread")?;
//! assert_eq!(report.forced, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # One loop turn
//!
//! [`Reactor::run_once`] is one turn; [`Reactor::run`] repeats it until the
//! reactor stops.
//!
//! 1. **Timeout**: zero if a connection has data left from last turn,
//!    accepts are to be retried or a stop was just asked for; else until
//!    the nearest deadline (a timer, the end of an accept pause, the drain
//!    deadline); else none: an idle reactor with no timers sleeps in
//!    `epoll_wait` and never wakes.
//! 2. **Poll**: `epoll_wait`. A signal (`EINTR`) ends the turn here, with
//!    nothing done; `run` waits again. Then the clock is read, once, if
//!    timers are armed or idle timeouts are on; activity stamps and
//!    deadlines use that one reading. (The end of an accept pause or of a
//!    drain reads the clock where it is checked.)
//! 3. **Dispatch**: a listener's event marks it as having connections
//!    waiting; a program's source's event goes to [`Handler::on_source`];
//!    the [`Handle`]'s waker runs queued commands (messages, sends, stop).
//!    A connection's event first finishes its connect if it was under way
//!    ([`Handler::on_connect`]), flushes its queued output, then reads: one
//!    read per event, another only if the read filled its buffer, at most
//!    [`Config::reads_per_turn`] reads; a connection with more goes on the
//!    ready queue.
//! 4. **Ready queue**: connections left over from the last turn are read.
//! 5. **Accept**: from each listener with connections waiting, up to
//!    [`Config::accepts_per_turn`] each, while below
//!    [`Config::max_connections`] and not paused by `EMFILE` & co.
//! 6. **Timers**: due handler timers ([`Handler::on_timer`]), idle checks,
//!    close checks and connect deadlines, in deadline order.
//! 7. **Close**: slots of connections closed during the turn are freed and
//!    [`Handler::on_close`] runs; only now, so no event of this turn's batch
//!    can reach a reused slot.
//! 8. **Stop**: a stop asked for this turn begins (the listener closes,
//!    every connection starts a graceful close); a drain that is done, or
//!    past [`Config::drain_timeout`], ends and the reactor is stopped.
//!
//! # Guarantees
//!
//! - **Ids are never confused.** A [`ConnId`] carries the slot's
//!   generation: events and calls for a closed connection never reach the
//!   connection that took its slot. Generations come from one counter for
//!   the whole process, so ids of different reactors never collide either
//!   (until four billion connections; 16 million for the reactors of a
//!   [`ReactorSet`], whose ids also name their reactor): one map or log can
//!   mix them, and an id given to the wrong reactor is refused there.
//! - **Nothing accepted is lost.** What `on_data` did not consume is offered
//!   again with the next bytes, and at once when reading resumes
//!   ([`Context::resume_read`], or the end of backpressure); what the kernel
//!   did not take is queued and flushed; a graceful close
//!   ([`Context::close`], and the default [`Handler::on_eof`]) flushes
//!   before its FIN (see *Closing* below). A stream cut short (by
//!   [`Context::abort`], a limit, a timeout, or a stop past its drain
//!   deadline) ends with a reset, never with a FIN that would pass it off
//!   as complete.
//! - **Memory is bounded.** Reading from a connection stops while its queued
//!   output is at [`Config::write_high_water`] and resumes at
//!   [`Config::write_low_water`] (with [`Handler::on_drain`]); while output
//!   is queued, reads take only the room left under the high water mark.
//!   Unconsumed input is capped by [`Config::max_input`]. An idle
//!   connection owns no heap buffer. (A proxy turns the first rule off,
//!   [`Config::output_pauses_reading`], and pauses the other side instead.)
//! - **Fair.** Per-turn read and accept budgets: one flooding peer cannot
//!   starve the others.
//! - **Peers cannot stop the server.** Resets, broken pipes, half-closes,
//!   floods and descriptor exhaustion close (or half-close) the connection
//!   concerned, or pause accepting; `run` never returns an error or panics
//!   for them. Writes never raise `SIGPIPE`.
//! - **No busy loops.** Sockets are registered once, edge-triggered, for
//!   readable and writable; the loop never re-registers. With no timer
//!   armed and nothing to do, it sleeps in `epoll_wait` without a timeout.
//! - **Time is cheap.** Timers live in a heap (set O(log n), cancel O(1),
//!   lazily); 100,000 armed timers cost a turn nothing, since only the
//!   nearest is looked at. The idle timeout ([`Config::idle_timeout`])
//!   costs traffic one store per read or write: a connection's single
//!   pending check looks at its activity stamp when it comes due.
//! - **Stopping loses nothing accepted, and waits for no one idle.** A
//!   graceful stop ([`Context::stop`], [`Handle::stop`], or a signal after
//!   `Reactor::stop_on_signals`) closes the listener and closes every
//!   connection gracefully: each flushes what was handed to `send`, and
//!   those with nothing in flight close at once, so a stop among idle peers
//!   ends in the turn it begins. Stragglers are cut with a reset at
//!   [`Config::drain_timeout`]. `run` returns a [`StopReport`] that tells
//!   the truth: drained, forced (cut with a reset, by the deadline or by a
//!   stop at once over output or unread input), failed, bytes unsent.
//!   [`Context::stop_now`] and [`Handle::stop_now`] skip the drain.
//! - **Silent peers cannot hold slots for ever, with the defaults.** TCP
//!   keepalive ([`Config::keepalive`], on) finds peers that vanished; an
//!   idle timeout ([`Config::idle_timeout`], off in the library, 300 s in
//!   `echo_reactor`) closes live ones that say nothing. Without one, a
//!   peer can take every slot and keep it.
//!
//! # Closing
//!
//! A graceful close stops taking input, flushes the queued output, sends
//! FIN, and then frees the slot as soon as closing cannot make the kernel
//! reset the connection (the rule of nginx's `lingering_close auto`):
//!
//! - the peer's FIN has been seen: done;
//! - the peer is quiet (nothing arrived since the close began, nothing
//!   waiting to be read): done at once. A server that answers and closes,
//!   as the tutorial's does, holds no descriptor for a polite but silent
//!   client;
//! - the peer is still sending: the reactor lingers, reading and
//!   discarding, until its FIN or until it has been silent for
//!   [`Config::linger_timeout`] (2 s). Closing while its bytes still
//!   arrive would make our kernel answer them with a reset, which can
//!   destroy output it has not read yet.
//!
//! All of it within [`Config::close_timeout`] (30 s), past which the close
//! is cut with a reset. The reason [`Handler::on_close`] gets is that of
//! whoever closed first: the peer ([`CloseReason::PeerClosed`]), the
//! handler ([`CloseReason::Local`]), or a stop ([`CloseReason::Stopped`]).
//!
//! # Sockets of every kind
//!
//! [`Reactor::new`] builds a reactor with no socket; [`Reactor::bind`] is
//! the one-line form with one TCP listener. Everything else is done through
//! a [`Context`]: the one a callback gets, or [`Reactor::context`] before
//! `run` (set-up: listeners, connects, timers, sends).
//!
//! - **Listeners**: [`Context::listen`] on any TCP address or a Unix socket
//!   path ([`Addr::unix`]), with [`ListenerOptions`] (backlog,
//!   `SO_REUSEADDR`, `SO_REUSEPORT`, `TCP_NODELAY`, `IPV6_V6ONLY` set
//!   explicitly); or adopt one the program bound
//!   ([`Context::adopt_tcp_listener`], [`Context::adopt_unix_listener`]).
//!   [`Handler::on_open`] says which listener a connection came from and
//!   who the peer is ([`Addr`]). [`Context::close_listener`] closes one and
//!   the rest go on. A stale Unix socket file (its server is gone) is
//!   replaced; a live one is `AddrInUse`; the file is removed when the
//!   listener closes.
//! - **Outbound connections**: [`Context::connect`] returns the id at once;
//!   what is sent meanwhile is queued; [`Handler::on_connect`] runs when it
//!   is established, or `on_close` gets [`CloseReason::ConnectFailed`] with
//!   a [`ConnectError`] (refused, unreachable, timed out after
//!   [`Config::connect_timeout`]). Established, it is a connection like any
//!   accepted one.
//! - **The program's own sources**: [`Context::register`] any
//!   [`mio::event::Source`] (a UDP socket, a pipe); its events come to
//!   [`Handler::on_source`]. Edge-triggered: read until `WouldBlock`.
//!
//! Every token carries its kind in one bit (connections) or a reserved
//! value (the waker, the signal pipe); listeners and sources share an
//! endpoint slab. So a connection's event is still told apart with one
//! test, and there is room for any number of each kind.
//!
//! # One reactor per core
//!
//! One reactor is one core. A [`ReactorSet`] runs N of them on N threads,
//! each with its own listener on the same address (`SO_REUSEPORT`): the
//! kernel spreads new connections over the listeners, and no connection
//! ever moves between threads, so each reactor keeps every guarantee
//! above. Handlers come from a factory called on each thread; threads may
//! be pinned to cores ([`ReactorSetBuilder::pin_to_cores`]); one
//! [`SetHandle`] stops them all, and [`ReactorSet::join`] returns each
//! reactor's report and counters with their sums ([`SetReport`]).
//!
//! **Ids name their reactor.** A reactor of a set puts its index (8 bits)
//! in the top of each connection's generation, so [`SetHandle::send`] and
//! [`SetHandle::send_message_for`] go straight to the reactor holding the
//! id. The rest of the generation still comes from the one process-wide
//! counter, so ids stay distinct across the set (and from other reactors
//! of the process) until 16 million connections, instead of four billion
//! for a reactor made alone. The loop never reads those bits: a reactor's
//! cost per message does not change.
//!
//! **What `SO_REUSEPORT` cannot do.** The kernel picks a listener by a
//! hash of each connection's addresses and ports, once, at the handshake:
//! it never looks at how busy a reactor is, and never moves a connection
//! afterwards. Many short connections even out; a few long-lived, busy
//! ones can pile up on one reactor while another idles. And a listener
//! that closes takes its accept queue with it: connections the kernel
//! completed for it but no one accepted yet are reset (Linux 5.14 and
//! later can hand them to another listener of the group instead, with
//! `sysctl net.ipv4.tcp_migrate_req=1`; it is off by default).
//!
//! **What a stop does about it.** The reactors of a set stop together:
//! [`SetHandle::stop`] asks every reactor at once, and a reactor that stops
//! on its own (its handler called [`Context::stop`], or it panicked) stops
//! the rest. So no listener of the set is left taking connections for a
//! set that is going away, and none outlives its reactor's stop by more
//! than a turn. What each reactor does is the single reactor's graceful
//! stop: it closes its listener and drains every connection it accepted.
//! Connections still in the kernel's queues at that moment were never
//! accepted and are refused (reset), as they are by one reactor; draining
//! the queues first would only accept connections to close them at once,
//! with no answer. To lose none, put a load balancer in front that stops
//! sending new connections before the stop (see the README's *Scaling*).
//!
//! The alternative, one acceptor thread handing sockets to N reactors
//! ([`Context::adopt_tcp_stream`]), balances connections exactly, but
//! every connection then costs a hand-over between threads; the README's
//! *Scaling* section has both measured.
//!
//! # Handler state
//!
//! Each connection's `H::Conn` lives in the reactor, indexed like the
//! connection slab. A callback about a connection gets that state as its
//! `conn` argument (moved out of its slot for the call, which costs nothing
//! for a `()` state); its [`Context`] reaches every other connection's
//! state by id ([`Context::conn`], [`Context::conn_mut`]) and can walk them
//! all ([`Context::for_each_conn`], for a broadcast). `on_timer`,
//! `on_message` and `on_source` reach states the same way.
//!
//! # Output flow
//!
//! A protocol that answers pipelined requests (Redis, HTTP/1.1) must stop
//! consuming input while its answers are backed up, or a client that
//! sends a long pipeline and reads slowly makes it queue without bound.
//! The rule: **input left unconsumed while output is queued stops reading
//! until the output falls to [`Config::write_low_water`]; then the
//! leftover is offered again**, without waiting for bytes the peer may
//! never send. So a handler may stop at any threshold of its own (or at
//! [`Context::output_backed_up`]) and is sure to be called again; and the
//! peer's FIN is not read, nor more input buffered, until the pipeline it
//! sent has been answered.
//!
//! ```
//! # use tcp_reactor::{Addr, ConnId, Context, Handler, ListenerId};
//! struct Pipelined;
//!
//! impl Handler for Pipelined {
//!     type Conn = ();
//!     type Message = ();
//!     fn on_open(&mut self, _: &mut Context<'_>, _: ConnId, _: &Addr, _: ListenerId) {}
//!     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
//!         let mut used = 0;
//!         // One request per line; answer until the output backs up.
//!         while let Some(end) = data[used..].iter().position(|&b| b == b'\n') {
//!             if cx.output_backed_up(id) {
//!                 break; // the rest comes back once the output drains
//!             }
//!             let _ = cx.send(id, &data[used..used + end + 1]);
//!             used += end + 1;
//!         }
//!         used
//!     }
//! }
//! ```
//!
//! # Framing
//!
//! [`framing`] cuts the bytes `on_data` gets into lines
//! ([`framing::Lines`]) or length-prefixed frames
//! ([`framing::LengthPrefixed`]), each with a maximum size, without a
//! buffer of its own: `on_data` returns the bytes the whole frames used,
//! and a partial frame stays in the reactor's buffer. A line or frame over
//! the maximum is a [`framing::FrameError`]; the handler answers it and
//! closes that connection, and the rest carry on:
//!
//! ```
//! # use tcp_reactor::{Addr, ConnId, Context, Handler, ListenerId};
//! use tcp_reactor::framing::Lines;
//!
//! const LINES: Lines = Lines::new(8192);
//!
//! struct Shout;
//!
//! impl Handler for Shout {
//!     type Conn = ();
//!     type Message = ();
//!     fn on_open(&mut self, _: &mut Context<'_>, _: ConnId, _: &Addr, _: ListenerId) {}
//!     fn on_data(&mut self, cx: &mut Context<'_>, id: ConnId, _: &mut (), data: &[u8]) -> usize {
//!         let mut lines = LINES.frames(data);
//!         for line in &mut lines {
//!             match line {
//!                 Ok(line) => {
//!                     let mut reply = line.to_ascii_uppercase();
//!                     reply.push(b'\n');
//!                     let _ = cx.send(id, &reply);
//!                 }
//!                 Err(error) => {
//!                     // "error: line longer than 8192 bytes", then FIN.
//!                     let _ = cx.send(id, format!("error: {error}\n").as_bytes());
//!                     cx.close(id);
//!                     return data.len();
//!                 }
//!             }
//!         }
//!         lines.consumed() // a partial line waits for its end
//!     }
//! }
//! ```
//!
//! # Layout
//!
//! | module | job |
//! | --- | --- |
//! | `config` | [`Config`]: defaults and the rules they keep |
//! | `listener` | listening sockets (TCP and Unix), built with `socket2`, and [`ListenerOptions`] |
//! | `endpoint` | what is polled besides connections: listeners and the program's sources |
//! | `engine` | what callbacks and the loop both act on: the table, handler states, endpoints, the poller |
//! | `reactor` | [`Reactor`]: the loop, one turn at a time |
//! | `reactor/read` | serving a connection's input: the one after-read step, leftovers, EOF |
//! | `reactor/accept` | accepting: budgets, limits, the pause after `EMFILE` |
//! | `reactor/outbound` | a connect under way, done at its first writable edge |
//! | `reactor/stop` | stopping: the graceful drain, `stop_now`, the report |
//! | `reactor/signals` | `Reactor::stop_on_signals` (feature `signals`) |
//! | `reactor_set` | [`ReactorSet`]: N reactors on N threads on one port, [`SetHandle`] |
//! | `affinity` | pinning a thread to a CPU (`sched_setaffinity`), the crate's only `unsafe` |
//! | `table` | the slab of connections: slots, ids, lookups |
//! | `table/write` | the write path: `send`, the output queue, `flush`, backpressure |
//! | `table/pool` | the buffer pool: buffers only while bytes wait |
//! | `table/read_schedule` | read scheduling: the ready queue, pause and resume |
//! | `table/close` | the close protocol: `close`, half-close, lingering, the close check |
//! | `table/deadlines` | connection deadlines: the connect timeout, the idle check |
//! | `table/end` | how a connection ends; the one place that counts the stop report |
//! | `conn` | one connection: its lifecycle (with a diagram), bits and buffers |
//! | `connect` | outbound connects: starting one, its result, [`ConnectError`] |
//! | `addr` | [`Addr`]: a TCP or a Unix socket address |
//! | `handler` | [`Handler`] and [`CloseReason`] |
//! | `context` | [`Context`]: what a callback may do |
//! | `timer` | timers and connection deadlines: one heap, [`TimerId`] |
//! | `handle` | [`Handle`]: other threads' way in (waker + command queue) |
//! | `stop` | the stop: what was asked, how far it is, [`StopReport`] |
//! | `id` | [`ConnId`] and the tokens it travels in |
//! | `stats` | [`Stats`] and [`StatsReader`] |
//! | `echo` | [`Echo`], the echo handler |
//! | `framing` | [`framing`]: the error, frames and the `Frames` iterator; `framing/lines`, `framing/length`: the two formats |
//! | `error` | [`Error`], the one error type |
//! | `os_limits` | the open-file limit and `somaxconn`, from `/proc` |
//! | `platform` | refuses targets whose mio back-end cannot serve it |
//!
//! # Features and platforms
//!
//! `signals` (off by default) adds `Reactor::stop_on_signals`, through
//! `signal-hook`. The reactor runs where mio uses epoll or kqueue: Linux,
//! Android, illumos, macOS and Apple's other systems, FreeBSD, NetBSD,
//! OpenBSD and DragonFly BSD (tested on Linux). Other targets (mio's poll(2)
//! and event-port back-ends, Windows) are refused at compile time.

#![deny(unsafe_code)] // allowed in `affinity` only, for `sched_setaffinity`
#![deny(missing_docs, missing_debug_implementations, rust_2018_idioms)]

mod addr;
mod affinity;
mod config;
mod conn;
mod connect;
mod context;
mod echo;
mod endpoint;
mod engine;
mod error;
pub mod framing;
mod handle;
mod handler;
mod id;
mod listener;
mod os_limits;
mod platform;
mod reactor;
mod reactor_set;
mod stats;
mod stop;
mod table;
mod timer;

pub use addr::Addr;
pub use config::{Config, Keepalive};
pub use connect::ConnectError;
pub use context::Context;
pub use echo::Echo;
pub use error::Error;
pub use handle::Handle;
pub use handler::{CloseReason, Handler};
pub use id::{ConnId, ListenerId, SourceId};
pub use listener::ListenerOptions;
pub use reactor::Reactor;
pub use reactor_set::{ReactorReport, ReactorSet, ReactorSetBuilder, SetHandle, SetReport};
pub use stats::{Stats, StatsReader};
pub use stop::StopReport;
pub use timer::TimerId;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
