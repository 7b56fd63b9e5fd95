//! Reactor settings, their defaults and the rules they must keep.

use std::time::Duration;

use crate::Error;
use crate::os_limits::{FD_RESERVE, open_file_limit};

/// Settings of a [`Reactor`](crate::Reactor).
///
/// Start from [`Config::default()`] and change what you need with the
/// chainable setters (each named after its field) or by assigning the public
/// fields. [`Reactor::bind`](crate::Reactor::bind) checks the rules in
/// [`Config::validate`] before anything is bound.
///
/// ```
/// use tcp_reactor::Config;
/// let config = Config::default().backlog(256).max_connections(500);
/// assert!(config.validate().is_ok());
/// assert!(Config::default().backlog(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Length of the kernel's queue of connections not yet accepted
    /// (`listen(2)` backlog). Default 128, as in the tutorial this grew
    /// from. The kernel caps it at `net.core.somaxconn` (logged when lower).
    pub backlog: u32,
    /// `SO_REUSEADDR` on the listener (Unix only), so a restarted server
    /// binds its port at once while old connections sit in `TIME_WAIT`.
    /// Default on.
    pub reuse_address: bool,
    /// `TCP_NODELAY` on accepted sockets. Default on: Nagle's algorithm plus
    /// the peer's delayed ACK stalls small request/response traffic by 40 ms.
    pub nodelay: bool,
    /// TCP keepalive on accepted sockets: after this much silence the
    /// kernel probes the peer, and a peer that has vanished (powered off,
    /// unplugged, dropped by a NAT) is found and its connection closed as
    /// [`CloseReason::Reset`](crate::CloseReason::Reset) or
    /// [`CloseReason::Io`](crate::CloseReason::Io) (`ETIMEDOUT`), where
    /// without probes it would hold its slot until the idle timeout, or
    /// forever. Default on, with [`Keepalive::default`] (Redis's settings).
    /// `None` turns it off. Keepalive finds dead peers only: a live peer
    /// that stays silent answers the probes; that is the idle timeout's job.
    pub keepalive: Option<Keepalive>,
    /// Connections held at once. At the limit the reactor stops accepting and
    /// the kernel backlog holds newcomers until one closes. Default: the
    /// process's open-file limit less a reserve of 32 descriptors.
    pub max_connections: usize,
    /// Bytes asked of `read(2)` at most; also the size of the one scratch
    /// buffer shared by all connections. Default 64 KiB.
    pub read_chunk: usize,
    /// Queued output (bytes the kernel would not take yet) at which the
    /// reactor stops reading from that connection. Default 64 KiB.
    pub write_high_water: usize,
    /// Queued output at or below which reading resumes and the handler's
    /// `on_drain` runs. Default 16 KiB.
    pub write_low_water: usize,
    /// Whether a connection's own queued output at
    /// [`write_high_water`](Self::write_high_water) stops reading from it
    /// (backpressure). Default on: a handler whose answers go back to the
    /// connection they came from (echo, request/response) then holds at
    /// most the high water mark per peer, whatever the peer does.
    ///
    /// A proxy turns it off. What it reads from one side goes out on the
    /// other, so one side's output says nothing about reading from it; a
    /// side that stopped reading because its own output is backed up would
    /// starve a peer that writes before it reads, and both would wait for
    /// ever. Off, reading no longer stops at the high water mark (input the
    /// handler leaves unconsumed behind queued output still waits for it,
    /// see the crate docs, *Output flow*), and
    /// [`Handler::on_drain`](crate::Handler::on_drain) still runs when the
    /// output, having reached the high water mark, falls to the low water
    /// mark: the proxy pauses the other side at the high water mark and
    /// resumes it there (see `examples/proxy.rs`). Bounding memory is then
    /// the handler's job.
    pub output_pauses_reading: bool,
    /// Input the handler left unconsumed that one connection may hold; a
    /// peer that sends more without the handler consuming it is closed with
    /// [`CloseReason::InputLimit`](crate::CloseReason::InputLimit).
    /// Default 1 MiB.
    pub max_input: usize,
    /// Hard cap on one connection's queued output. The high water mark stops
    /// reading, but a handler can still send to a connection that does not
    /// read (a broadcast, say); past this cap the connection is aborted with
    /// [`CloseReason::OutputLimit`](crate::CloseReason::OutputLimit).
    /// Default 16 MiB.
    pub max_output: usize,
    /// Events taken from one `epoll_wait`. Default 1024. Turns that fill it
    /// are counted in [`Stats::full_event_batches`](crate::Stats::full_event_batches).
    pub event_capacity: usize,
    /// Reads one connection gets per loop turn before the others get theirs;
    /// a connection with more waiting is served again next turn. Default 4.
    pub reads_per_turn: usize,
    /// Connections accepted per loop turn before connections already
    /// accepted get served. Default 64.
    pub accepts_per_turn: usize,
    /// How long accepting pauses after a resource error (`EMFILE`, `ENFILE`,
    /// `ENOBUFS`, `ENOMEM`). Accepting also resumes as soon as a connection
    /// closes. Default 100 ms.
    pub accept_backoff: Duration,
    /// A connection on which no read or write has moved a byte for this
    /// long is closed with [`CloseReason::TimedOut`](crate::CloseReason::TimedOut)
    /// (with a reset if output is still queued). `None`, the default, keeps
    /// idle connections open.
    ///
    /// **Without an idle timeout, a peer that connects and stays silent
    /// keeps its slot for as long as it likes**: a few thousand such peers
    /// (one process, opening sockets and never writing) take every slot up
    /// to [`max_connections`](Self::max_connections), and from then on the
    /// server accepts no one. Keepalive does not help against them (their
    /// kernel answers the probes). A server open to untrusted peers should
    /// set one; `echo_reactor` defaults to 300 s.
    ///
    /// Checked lazily: activity stamps the connection
    /// with the clock read once per turn, and a connection's one pending
    /// check looks at the stamp when it comes due, so traffic costs no timer
    /// work. The stamp is the time the turn began, so the timeout counts
    /// from the start of the turn of the last activity. Closed no earlier
    /// than that, and normally within a millisecond or two after.
    pub idle_timeout: Option<Duration>,
    /// How long a graceful close ([`Context::close`](crate::Context::close),
    /// the default `on_eof`) may take in all: flushing its output, then
    /// lingering while the peer is still sending (see
    /// [`linger_timeout`](Self::linger_timeout)). Past it the connection is
    /// cut with a reset and closed as
    /// [`CloseReason::TimedOut`](crate::CloseReason::TimedOut), so a peer
    /// that never reads, or never stops sending, cannot hold a slot forever.
    /// Default 30 s (nginx's `lingering_time`). Must be above zero: a zero
    /// close timeout would cut every close that has anything to flush.
    pub close_timeout: Duration,
    /// How long a lingering close waits for a peer that was still sending
    /// to fall silent. After a graceful close has flushed its output and
    /// sent its FIN, a peer that has nothing in flight (nothing arrived
    /// since the close began, nothing waiting to be read) is closed at
    /// once; one that was still sending is read from and ignored until it
    /// sends its FIN or has sent nothing for this long, so that its late
    /// bytes do not make our kernel answer with a reset that could destroy
    /// the output it has not read yet. Default 2 s (Apache's lingering
    /// close; nginx's `lingering_timeout` is 5 s). At least 1 ms.
    pub linger_timeout: Duration,
    /// How long a graceful stop ([`Context::stop`](crate::Context::stop),
    /// [`Handle::stop`](crate::Handle::stop)) lets connections drain: flush
    /// their output, send FIN and see the peer's FIN. Those still draining
    /// then are cut with a reset and counted as forced in the
    /// [`StopReport`](crate::StopReport). Connections with nothing in
    /// flight close at once, so a stop with only idle peers ends at once.
    /// Default 5 s. Must be above zero
    /// ([`stop_now`](crate::Context::stop_now) is the stop without a drain).
    pub drain_timeout: Duration,
    /// How long an outbound connection ([`Context::connect`](crate::Context::connect))
    /// may take to be established before it fails with
    /// [`ConnectError::TimedOut`](crate::ConnectError::TimedOut)
    /// ([`Context::connect_within`](crate::Context::connect_within) sets
    /// it per call). Default 10 s: a peer that answers takes a round trip,
    /// and the kernel's own limit (about two minutes of SYN retries) is
    /// longer than a caller wants to wait. At least 1 ms.
    pub connect_timeout: Duration,
}

/// TCP keepalive settings ([`Config::keepalive`]): `SO_KEEPALIVE` with
/// `TCP_KEEPIDLE`, `TCP_KEEPINTVL` and `TCP_KEEPCNT` (where the OS has
/// them). A peer that answers none of the probes is declared dead after
/// about `idle + retries * interval`.
///
/// ```
/// use std::time::Duration;
/// use tcp_reactor::{Config, Keepalive};
/// let quick = Keepalive::new(Duration::from_secs(60), Duration::from_secs(10), 5);
/// assert!(Config::default().keepalive(Some(quick)).validate().is_ok());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Keepalive {
    /// Silence before the first probe (`TCP_KEEPIDLE`). Whole seconds,
    /// 1 to 32767.
    pub idle: Duration,
    /// Time between unanswered probes (`TCP_KEEPINTVL`). Whole seconds,
    /// 1 to 32767.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`),
    /// 1 to 127.
    pub retries: u32,
}

impl Keepalive {
    /// Keepalive probes after `idle` of silence, every `interval`, giving
    /// up after `retries` unanswered ones.
    pub fn new(idle: Duration, interval: Duration, retries: u32) -> Keepalive {
        Keepalive {
            idle,
            interval,
            retries,
        }
    }
}

impl Default for Keepalive {
    /// Redis's defaults (`tcp-keepalive 300`): the first probe after 300 s
    /// of silence, then every 100 s, three unanswered probes: a vanished
    /// peer is found within about 10 minutes. That is one probe per five
    /// idle minutes, which costs nothing, and keeps the connection's entry
    /// alive in NATs that drop silent ones after a few minutes, which the
    /// OS default (first probe after 2 hours) would not.
    fn default() -> Keepalive {
        Keepalive::new(Duration::from_secs(300), Duration::from_secs(100), 3)
    }
}

impl Default for Config {
    fn default() -> Config {
        Config {
            backlog: 128,
            reuse_address: true,
            nodelay: true,
            keepalive: Some(Keepalive::default()),
            max_connections: default_max_connections(),
            read_chunk: 64 * 1024,
            write_high_water: 64 * 1024,
            write_low_water: 16 * 1024,
            output_pauses_reading: true,
            max_input: 1024 * 1024,
            max_output: 16 * 1024 * 1024,
            event_capacity: 1024,
            reads_per_turn: 4,
            accepts_per_turn: 64,
            accept_backoff: Duration::from_millis(100),
            idle_timeout: None,
            close_timeout: Duration::from_secs(30),
            linger_timeout: Duration::from_secs(2),
            drain_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

/// The open-file limit less [`FD_RESERVE`], or 992 where the limit cannot be
/// read (1024, the most common default, less the reserve).
fn default_max_connections() -> usize {
    let limit = open_file_limit().unwrap_or(1024);
    let usable = limit.saturating_sub(FD_RESERVE).max(1);
    usize::try_from(usable).unwrap_or(usize::MAX).min(MAX_SLOTS)
}

/// Idle stamps are 32-bit milliseconds (they wrap after 49 days); half of
/// that keeps wrapping differences unambiguous.
const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 24 * 3600);

/// Connection slots must fit in their part of the token space (see `id`).
const MAX_SLOTS: usize = crate::id::MAX_SLOTS;

/// The kernel's bounds on keepalive settings (Linux `MAX_TCP_KEEPIDLE`,
/// `MAX_TCP_KEEPINTVL`, `MAX_TCP_KEEPCNT`); it takes whole seconds.
const KEEPALIVE_SECONDS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(32767);
const KEEPALIVE_RETRIES: std::ops::RangeInclusive<u32> = 1..=127;

macro_rules! setters {
    ($($(#[$doc:meta])* $name:ident: $ty:ty),* $(,)?) => {
        impl Config {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $ty) -> Config {
                    self.$name = value;
                    self
                }
            )*
        }
    };
}

setters! {
    /// Sets [`Config::backlog`](#structfield.backlog).
    backlog: u32,
    /// Sets [`Config::reuse_address`](#structfield.reuse_address).
    reuse_address: bool,
    /// Sets [`Config::nodelay`](#structfield.nodelay).
    nodelay: bool,
    /// Sets [`Config::keepalive`](#structfield.keepalive).
    keepalive: Option<Keepalive>,
    /// Sets [`Config::max_connections`](#structfield.max_connections).
    max_connections: usize,
    /// Sets [`Config::read_chunk`](#structfield.read_chunk).
    read_chunk: usize,
    /// Sets [`Config::write_high_water`](#structfield.write_high_water).
    write_high_water: usize,
    /// Sets [`Config::write_low_water`](#structfield.write_low_water).
    write_low_water: usize,
    /// Sets [`Config::output_pauses_reading`](#structfield.output_pauses_reading).
    output_pauses_reading: bool,
    /// Sets [`Config::max_input`](#structfield.max_input).
    max_input: usize,
    /// Sets [`Config::max_output`](#structfield.max_output).
    max_output: usize,
    /// Sets [`Config::event_capacity`](#structfield.event_capacity).
    event_capacity: usize,
    /// Sets [`Config::reads_per_turn`](#structfield.reads_per_turn).
    reads_per_turn: usize,
    /// Sets [`Config::accepts_per_turn`](#structfield.accepts_per_turn).
    accepts_per_turn: usize,
    /// Sets [`Config::accept_backoff`](#structfield.accept_backoff).
    accept_backoff: Duration,
    /// Sets [`Config::idle_timeout`](#structfield.idle_timeout).
    idle_timeout: Option<Duration>,
    /// Sets [`Config::close_timeout`](#structfield.close_timeout).
    close_timeout: Duration,
    /// Sets [`Config::linger_timeout`](#structfield.linger_timeout).
    linger_timeout: Duration,
    /// Sets [`Config::drain_timeout`](#structfield.drain_timeout).
    drain_timeout: Duration,
    /// Sets [`Config::connect_timeout`](#structfield.connect_timeout).
    connect_timeout: Duration,
}

impl Config {
    /// Checks the rules a config must keep, naming the first one broken.
    pub fn validate(&self) -> Result<(), Error> {
        let rules: [(bool, &str); 17] = [
            (self.backlog >= 1, "backlog must be at least 1"),
            (
                self.backlog <= i32::MAX as u32,
                "backlog must fit in a C int",
            ),
            (
                (1..=MAX_SLOTS).contains(&self.max_connections),
                "max_connections must be between 1 and 2^31 - 2",
            ),
            (self.read_chunk >= 1, "read_chunk must be at least 1 byte"),
            (
                self.write_high_water >= 1,
                "write_high_water must be at least 1 byte",
            ),
            (
                self.write_low_water <= self.write_high_water,
                "write_low_water must not be above write_high_water",
            ),
            (self.max_input >= 1, "max_input must be at least 1 byte"),
            (
                self.max_output >= self.write_high_water,
                "max_output must not be below write_high_water",
            ),
            (
                self.event_capacity >= 1,
                "event_capacity must be at least 1",
            ),
            (
                self.reads_per_turn >= 1 && self.accepts_per_turn >= 1,
                "reads_per_turn and accepts_per_turn must be at least 1",
            ),
            (
                !self.accept_backoff.is_zero(),
                "accept_backoff must be above zero, or accept errors spin the loop",
            ),
            (
                self.idle_timeout
                    .is_none_or(|t| t >= Duration::from_millis(1) && t <= MAX_IDLE_TIMEOUT),
                "idle_timeout must be between 1 ms and 24 days",
            ),
            (
                !self.close_timeout.is_zero(),
                "close_timeout must be above zero, or every close with output to flush is cut",
            ),
            (
                self.linger_timeout >= Duration::from_millis(1),
                "linger_timeout must be at least 1 ms",
            ),
            (
                !self.drain_timeout.is_zero(),
                "drain_timeout must be above zero (stop_now is the stop without a drain)",
            ),
            (
                self.connect_timeout >= Duration::from_millis(1),
                "connect_timeout must be at least 1 ms",
            ),
            (
                self.keepalive.is_none_or(|k| {
                    KEEPALIVE_SECONDS.contains(&k.idle)
                        && KEEPALIVE_SECONDS.contains(&k.interval)
                        && KEEPALIVE_RETRIES.contains(&k.retries)
                }),
                "keepalive idle and interval must be 1 to 32767 s, retries 1 to 127",
            ),
        ];
        match rules.iter().find(|(ok, _)| !ok) {
            Some((_, rule)) => Err(Error::InvalidConfig((*rule).to_string())),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_follow_the_fd_limit() {
        let config = Config::default();
        assert_eq!(config.validate().ok(), Some(()));
        assert_eq!(config.backlog, 128);
        if let Some(limit) = open_file_limit() {
            assert_eq!(config.max_connections as u64, limit - FD_RESERVE);
        }
    }

    #[test]
    fn each_broken_rule_is_named() {
        let cases = [
            (Config::default().backlog(0), "backlog"),
            (
                Config::default().write_low_water(1 << 30),
                "write_low_water",
            ),
            (Config::default().max_connections(0), "max_connections"),
            (Config::default().read_chunk(0), "read_chunk"),
            (Config::default().max_output(1), "max_output"),
            (
                Config::default().accept_backoff(Duration::ZERO),
                "accept_backoff",
            ),
            (
                Config::default().idle_timeout(Some(Duration::ZERO)),
                "idle_timeout",
            ),
            (
                Config::default().idle_timeout(Some(Duration::from_secs(30 * 24 * 3600))),
                "idle_timeout",
            ),
            (
                Config::default().close_timeout(Duration::ZERO),
                "close_timeout",
            ),
            (
                Config::default().drain_timeout(Duration::ZERO),
                "drain_timeout",
            ),
            (
                Config::default().linger_timeout(Duration::ZERO),
                "linger_timeout",
            ),
            (
                Config::default().connect_timeout(Duration::ZERO),
                "connect_timeout",
            ),
            (
                Config::default().keepalive(Some(Keepalive::new(
                    Duration::from_millis(500),
                    Duration::from_secs(1),
                    3,
                ))),
                "keepalive",
            ),
            (
                Config::default().keepalive(Some(Keepalive::new(
                    Duration::from_secs(1),
                    Duration::from_secs(1),
                    0,
                ))),
                "keepalive",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(Error::InvalidConfig(rule)) => assert!(rule.contains(field), "{rule}"),
                other => panic!("{field}: expected InvalidConfig, got {other:?}"),
            }
        }
    }
}
