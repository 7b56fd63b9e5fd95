//! [`ReactorSet`]: one reactor per core on one port, through `SO_REUSEPORT`.
//!
//! A thin layer over [`Reactor`]: N threads, each building its own reactor
//! (with a handler from the program's factory) and its own listener on the
//! same address; one [`SetHandle`] for them all, which reads from a
//! connection's id which reactor holds it (the id's generation carries the
//! reactor's index in its top bits, see `id::Generations`).

use std::fmt;
use std::net::SocketAddr;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;

use crate::id::MAX_REACTORS;
use crate::{
    Config, ConnId, Error, Handle, Handler, ListenerOptions, Reactor, Stats, StatsReader,
    StopReport,
};

/// Builds a [`ReactorSet`]: how many reactors, their [`Config`], their
/// listener's options, whether to pin each thread to a CPU.
///
/// ```
/// use tcp_reactor::{Config, Echo, ReactorSet};
///
/// # fn main() -> Result<(), tcp_reactor::Error> {
/// let addr = "127.0.0.1:0".parse().expect("an address");
/// let set = ReactorSet::builder(2, Config::default()).bind(addr, |_reactor| Echo)?;
/// println!("listening on {}", set.local_addr());
/// set.handle().stop(); // from any thread; here at once, so this ends
/// let stopped = set.join()?;
/// assert_eq!(stopped.reactors.len(), 2);
/// assert_eq!(stopped.report().forced, 0);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReactorSetBuilder {
    reactors: usize,
    config: Config,
    options: ListenerOptions,
    pin: bool,
    #[cfg(feature = "signals")]
    signals: bool,
}

impl ReactorSetBuilder {
    /// Sets the listener's options ([`ListenerOptions::from_config`] by
    /// default). `SO_REUSEPORT` is turned on whatever `options` say: every
    /// reactor binds the same port.
    pub fn listener_options(mut self, options: ListenerOptions) -> ReactorSetBuilder {
        self.options = options;
        self
    }

    /// Pins reactor `i`'s thread to the `i`-th CPU this process may run on
    /// (modulo their number), so each reactor keeps its core's caches.
    /// Off by default. Linux and Android only: elsewhere `bind` fails with
    /// [`Error::Thread`].
    pub fn pin_to_cores(mut self, on: bool) -> ReactorSetBuilder {
        self.pin = on;
        self
    }

    /// Stops the whole set on SIGINT or SIGTERM: every reactor installs
    /// [`Reactor::stop_on_signals`], so one signal reaches them all (the
    /// first gracefully, a second at once). Feature `signals`.
    #[cfg(feature = "signals")]
    pub fn stop_on_signals(mut self) -> ReactorSetBuilder {
        self.signals = true;
        self
    }

    /// Starts the set: reactor 0 binds `addr` (port 0 picks a free port),
    /// then reactors 1.. bind the port it got, one after the other, each on
    /// its own thread with the handler `factory(index)` made there (so the
    /// handler need not be `Send`). Returns once every reactor listens.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidConfig`] for no reactor or more than 256, or a bad
    /// config; what [`Reactor::new`] or [`Context::listen_with`](crate::Context::listen_with)
    /// return; [`Error::Thread`] when a thread cannot be spawned or pinned;
    /// [`Error::Panicked`] when the factory panicked. Reactors already
    /// started are stopped and joined first.
    pub fn bind<H, F>(self, addr: SocketAddr, factory: F) -> Result<ReactorSet<H::Message>, Error>
    where
        H: Handler + 'static,
        F: Fn(usize) -> H + Send + Sync + 'static,
    {
        if self.reactors == 0 || self.reactors > MAX_REACTORS {
            return Err(Error::InvalidConfig(format!(
                "a reactor set holds 1 to {MAX_REACTORS} reactors, not {}",
                self.reactors
            )));
        }
        self.config.validate()?;
        let cpus = if self.pin {
            let cpus = crate::affinity::allowed_cpus().map_err(|source| Error::Thread {
                reactor: 0,
                op: "sched_getaffinity",
                source,
            })?;
            Some(cpus)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            builder: self,
            factory,
            set: OnceLock::new(),
        });
        let mut starting = Starting {
            handles: Vec::new(),
            stats: Vec::new(),
            threads: Vec::new(),
        };
        let mut bound = addr;
        for index in 0..shared.builder.reactors {
            let cpu = cpus.as_ref().map(|cpus| cpus[index % cpus.len()]);
            match start_reactor(index, bound, cpu, &shared) {
                Ok((thread, ready)) => {
                    starting.threads.push(thread);
                    let ready = ready.recv().map_err(|_| Error::Panicked { reactor: index });
                    let (local, handle, stats) = match ready.and_then(|ready| ready) {
                        Ok(ready) => ready,
                        Err(e) => return Err(starting.abandon(e)),
                    };
                    // Reactor 0 resolved port 0; the others bind its port.
                    bound = local;
                    starting.handles.push(handle);
                    starting.stats.push(stats);
                }
                Err(e) => return Err(starting.abandon(e)),
            }
        }
        let handle = SetHandle {
            handles: starting.handles.into(),
        };
        let _ = shared.set.set(handle.clone());
        // A reactor that stopped before the set's handle existed could not
        // stop the rest: do it for it.
        if handle.handles.iter().any(Handle::is_stopped) {
            handle.stop();
        }
        Ok(ReactorSet {
            addr: bound,
            handle,
            stats: starting.stats,
            threads: starting.threads,
        })
    }
}

/// What every reactor's thread shares.
struct Shared<F, M> {
    builder: ReactorSetBuilder,
    factory: F,
    /// The set's handle, once every reactor has started: a reactor that
    /// stops stops the rest through it.
    set: OnceLock<SetHandle<M>>,
}

/// What a reactor reports once it listens: its address, its handle, its
/// stats reader; or why it could not start.
type Ready<M> = Result<(SocketAddr, Handle<M>, StatsReader), Error>;

/// What a reactor's thread returns.
type Outcome = Result<ReactorReport, Error>;

/// The reactors started so far, while the set starts.
struct Starting<M> {
    handles: Vec<Handle<M>>,
    stats: Vec<StatsReader>,
    threads: Vec<JoinHandle<Outcome>>,
}

impl<M> Starting<M> {
    /// A reactor could not start: stop the ones that did, join every
    /// thread, and hand back `error`.
    fn abandon(self, error: Error) -> Error {
        for handle in &self.handles {
            handle.stop_now();
        }
        for thread in self.threads {
            let _ = thread.join();
        }
        error
    }
}

/// A reactor's thread, and where it says it is ready.
type Started<M> = (JoinHandle<Outcome>, Receiver<Ready<M>>);

/// Spawns reactor `index`'s thread; the receiver gets its [`Ready`].
fn start_reactor<H, F>(
    index: usize,
    addr: SocketAddr,
    cpu: Option<usize>,
    shared: &Arc<Shared<F, H::Message>>,
) -> Result<Started<H::Message>, Error>
where
    H: Handler + 'static,
    F: Fn(usize) -> H + Send + Sync + 'static,
{
    let (ready, receiver) = mpsc::channel();
    let shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name(format!("reactor-{index}"))
        .spawn(move || run_reactor(index, addr, cpu, &shared, &ready))
        .map_err(|source| Error::Thread {
            reactor: index,
            op: "spawning its thread",
            source,
        })?;
    Ok((thread, receiver))
}

/// A reactor's thread: pin, build, listen, report ready, run; then stop
/// the rest of the set (one stops, all stop), also when unwinding.
fn run_reactor<H, F>(
    index: usize,
    addr: SocketAddr,
    cpu: Option<usize>,
    shared: &Shared<F, H::Message>,
    ready: &Sender<Ready<H::Message>>,
) -> Outcome
where
    H: Handler + 'static,
    F: Fn(usize) -> H,
{
    let _stops_the_rest = StopsTheSet(&shared.set);
    let mut reactor = match set_up(index, addr, cpu, shared) {
        Ok(reactor) => reactor,
        Err(e) => {
            let _ = ready.send(Err(e));
            return Err(Error::Stopped);
        }
    };
    let local = reactor.local_addr().unwrap_or(addr);
    // The set's thread is waiting on this: if it is gone, so is the set.
    if ready
        .send(Ok((local, reactor.handle(), reactor.stats_reader())))
        .is_err()
    {
        return Err(Error::Stopped);
    }
    let report = reactor.run()?;
    Ok(ReactorReport {
        report,
        stats: reactor.stats(),
    })
}

/// Pins the thread, builds the reactor with its handler and tag, listens.
fn set_up<H, F>(
    index: usize,
    addr: SocketAddr,
    cpu: Option<usize>,
    shared: &Shared<F, H::Message>,
) -> Result<Reactor<H>, Error>
where
    H: Handler + 'static,
    F: Fn(usize) -> H,
{
    if let Some(cpu) = cpu {
        crate::affinity::pin_current_thread(cpu).map_err(|source| Error::Thread {
            reactor: index,
            op: "sched_setaffinity",
            source,
        })?;
    }
    let builder = &shared.builder;
    let mut reactor = Reactor::new(builder.config.clone(), (shared.factory)(index))?;
    reactor.join_set(index);
    let options = builder.options.reuse_port(true);
    reactor.context().listen_with(addr, options)?;
    #[cfg(feature = "signals")]
    if builder.signals {
        reactor.stop_on_signals()?;
    }
    Ok(reactor)
}

/// Stops the whole set when a reactor's thread ends, however it ends.
struct StopsTheSet<'a, M>(&'a OnceLock<SetHandle<M>>);

impl<M> Drop for StopsTheSet<'_, M> {
    fn drop(&mut self) {
        if let Some(set) = self.0.get() {
            set.stop();
        }
    }
}

/// N reactors on N threads serving one address; see the
/// [crate documentation](crate#one-reactor-per-core) for what the kernel
/// does with `SO_REUSEPORT` and what a stop does.
///
/// Made by [`ReactorSet::builder`]. Stop it through its [`SetHandle`]
/// (or a signal, with `ReactorSetBuilder::stop_on_signals`; or any
/// reactor's own [`Context::stop`](crate::Context::stop): when one reactor
/// stops, the set stops), then [`join`](Self::join) it for the report.
/// Dropped without a `join`, it stops at once and joins its threads.
pub struct ReactorSet<M: Send + 'static> {
    addr: SocketAddr,
    handle: SetHandle<M>,
    stats: Vec<StatsReader>,
    threads: Vec<JoinHandle<Outcome>>,
}

impl<M: Send + 'static> fmt::Debug for ReactorSet<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorSet")
            .field("addr", &self.addr)
            .field("reactors", &self.stats.len())
            .finish_non_exhaustive()
    }
}

impl ReactorSet<()> {
    /// A builder for `reactors` reactors (1 to 256) with `config` each.
    pub fn builder(reactors: usize, config: Config) -> ReactorSetBuilder {
        ReactorSetBuilder {
            reactors,
            options: ListenerOptions::from_config(&config),
            config,
            pin: false,
            #[cfg(feature = "signals")]
            signals: false,
        }
    }
}

impl<M: Send + 'static> ReactorSet<M> {
    /// The address every reactor listens on (with port 0, the real port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many reactors the set runs.
    pub fn reactors(&self) -> usize {
        self.stats.len()
    }

    /// The handle for every reactor: stop them, send to any connection.
    pub fn handle(&self) -> SetHandle<M> {
        self.handle.clone()
    }

    /// Each reactor's counters, by index (each at most one turn old; see
    /// [`StatsReader`]).
    pub fn stats(&self) -> Vec<Stats> {
        self.stats.iter().map(StatsReader::get).collect()
    }

    /// Every reactor's counters added up (see [`Stats::add`]).
    pub fn total_stats(&self) -> Stats {
        self.stats().iter().sum()
    }

    /// Waits until every reactor has stopped and returns what each stop
    /// achieved.
    ///
    /// # Errors
    ///
    /// The first reactor's error ([`Error::Poll`] from its loop), or
    /// [`Error::Panicked`]; every reactor has stopped by then.
    pub fn join(mut self) -> Result<SetReport, Error> {
        let mut reactors = Vec::new();
        let mut failed = None;
        for (index, thread) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            match thread.join() {
                Ok(Ok(report)) => reactors.push(report),
                Ok(Err(e)) => {
                    failed.get_or_insert(e);
                }
                Err(_) => {
                    failed.get_or_insert(Error::Panicked { reactor: index });
                }
            }
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(SetReport { reactors }),
        }
    }
}

impl<M: Send + 'static> Drop for ReactorSet<M> {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.handle.stop_now();
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// What a [`ReactorSet`]'s stop achieved, reactor by reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SetReport {
    /// Each reactor's, by index.
    pub reactors: Vec<ReactorReport>,
}

impl SetReport {
    /// The stop reports added up: one report for the set.
    pub fn report(&self) -> StopReport {
        self.reactors.iter().map(|r| &r.report).sum()
    }

    /// The final counters added up (see [`Stats::add`]).
    pub fn stats(&self) -> Stats {
        self.reactors.iter().map(|r| &r.stats).sum()
    }
}

/// One reactor's stop report and final counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReactorReport {
    /// What its stop achieved.
    pub report: StopReport,
    /// Its counters when it stopped.
    pub stats: Stats,
}

/// Controls every reactor of a [`ReactorSet`] from any thread: stop them
/// all, send to a connection whichever reactor holds it, message a
/// reactor's handler. `Send + Sync`; clone it freely.
///
/// A connection's [`ConnId`] names the reactor that holds it, so
/// [`send`](Self::send) goes straight to that reactor's [`Handle`]. An id
/// that no reactor of this set handed out is refused by the reactor its
/// bits name, as any unknown id is (bytes for it are dropped).
pub struct SetHandle<M> {
    handles: Arc<[Handle<M>]>,
}

impl<M> Clone for SetHandle<M> {
    fn clone(&self) -> SetHandle<M> {
        SetHandle {
            handles: Arc::clone(&self.handles),
        }
    }
}

impl<M> fmt::Debug for SetHandle<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SetHandle")
            .field("reactors", &self.handles.len())
            .field("stopped", &self.is_stopped())
            .finish()
    }
}

impl<M> SetHandle<M> {
    /// Stops every reactor gracefully ([`Handle::stop`] on each; each
    /// closes its listener and drains its connections, up to its
    /// [`Config::drain_timeout`]). Async-signal-safe, as `Handle::stop`.
    pub fn stop(&self) {
        for handle in self.handles.iter() {
            handle.stop();
        }
    }

    /// Stops every reactor at once ([`Handle::stop_now`] on each).
    pub fn stop_now(&self) {
        for handle in self.handles.iter() {
            handle.stop_now();
        }
    }

    /// Whether every reactor has stopped.
    pub fn is_stopped(&self) -> bool {
        self.handles.iter().all(Handle::is_stopped)
    }

    /// How many reactors the set has.
    pub fn reactors(&self) -> usize {
        self.handles.len()
    }

    /// The index of the reactor holding connection `id` (`None` if the set
    /// has no reactor with the index its bits name).
    pub fn reactor_of(&self, id: ConnId) -> Option<usize> {
        let index = id.reactor_index();
        (index < self.handles.len()).then_some(index)
    }

    /// Reactor `index`'s own handle.
    pub fn reactor(&self, index: usize) -> Option<&Handle<M>> {
        self.handles.get(index)
    }

    /// Sends `data` to connection `id` through the reactor that holds it
    /// (see [`Handle::send`]).
    ///
    /// # Errors
    ///
    /// [`Error::UnknownConnection`] for an id no reactor of the set can
    /// hold; otherwise as [`Handle::send`].
    pub fn send(&self, id: ConnId, data: impl Into<Vec<u8>>) -> Result<(), Error> {
        self.holder(id)?.send(id, data)
    }

    /// Hands `message` to the handler of the reactor that holds connection
    /// `id` ([`Handler::on_message`] there).
    ///
    /// # Errors
    ///
    /// As [`send`](Self::send).
    pub fn send_message_for(&self, id: ConnId, message: M) -> Result<(), Error> {
        self.holder(id)?.send_message(message)
    }

    /// Hands `message` to reactor `index`'s handler.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchReactor`]; otherwise as [`Handle::send_message`].
    pub fn send_message_to(&self, index: usize, message: M) -> Result<(), Error> {
        self.handles
            .get(index)
            .ok_or(Error::NoSuchReactor(index))?
            .send_message(message)
    }

    fn holder(&self, id: ConnId) -> Result<&Handle<M>, Error> {
        self.handles
            .get(id.reactor_index())
            .ok_or(Error::UnknownConnection(id))
    }
}
