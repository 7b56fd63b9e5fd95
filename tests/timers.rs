//! Handler timers, seen from the handler: one-shot timers fire in deadline
//! order (equal delays in set order) and never before their deadline; a
//! cancelled timer never fires, even when cancelled from another timer's
//! callback; an interval repeats, never early, skips the periods it missed
//! instead of firing them in a burst, and stops once cancelled; a zero-delay
//! timer set from `on_timer` waits for the next turn and cannot starve I/O;
//! an idle reactor does not wake up, even with a far-future timer armed;
//! 100,000 armed timers leave the loop serving; and timers pending when the
//! reactor stops are dropped, not waited for.
//!
//! Timing rules: a firing is compared with an `Instant` read just before
//! the timer was set (the reactor reads its clock after that, so the real
//! deadline can only be later); nothing asserts speed; the only sleeps
//! observe that something does *not* happen within a bounded window.

mod common;

use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Plan, Reports, any_local_address, drive_until, run_echo_clients, wait_until};
use tcp_reactor::{
    Addr, Config, ConnId, Context, Error, Handle, Handler, ListenerId, Reactor, StatsReader,
    StopReport, TimerId,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// One `on_timer` call, as the handler saw it.
#[derive(Debug, Clone, Copy)]
struct Fired {
    timer: TimerId,
    key: u64,
    /// `Instant::now()` inside `on_timer`.
    at: Instant,
    /// The loop turn it fired in (`Stats::turns` from inside the callback).
    turn: u64,
}

/// A timer the handler set.
#[derive(Debug, Clone, Copy)]
struct Armed {
    key: u64,
    timer: TimerId,
    /// Read just before `set_timer`: the deadline is at least `before + after`.
    before: Instant,
    after: Duration,
    /// The loop turn it was set in.
    turn: u64,
}

/// What the handler recorded, read by the test through `Reactor::handler`
/// (or from the reactor handed back once `run` returned).
#[derive(Debug, Default)]
struct Log {
    armed: Vec<Armed>,
    fired: Vec<Fired>,
    /// Each `cancel_timer` call: the timer's key and the result.
    cancels: Vec<(u64, bool)>,
    /// Instants a reaction noted (the end of a stall).
    marks: Vec<Instant>,
}

impl Log {
    fn set(&mut self, cx: &mut Context<'_>, after: Duration, key: u64, repeat: bool) -> TimerId {
        let before = Instant::now();
        let timer = if repeat {
            cx.set_interval(after, key)
        } else {
            cx.set_timer(after, key)
        };
        self.armed.push(Armed {
            key,
            timer,
            before,
            after,
            turn: cx.stats().turns,
        });
        timer
    }

    /// Cancels the latest timer set with `key`, and records the result.
    fn cancel(&mut self, cx: &mut Context<'_>, key: u64) -> bool {
        let armed = self.armed.iter().rev().find(|a| a.key == key);
        let timer = armed.expect("cancel: no timer with this key").timer;
        let result = cx.cancel_timer(timer);
        self.cancels.push((key, result));
        result
    }

    fn fired_keys(&self) -> Vec<u64> {
        self.fired.iter().map(|f| f.key).collect()
    }
}

/// What the test asks of the handler through `Handle::send_message`.
#[derive(Debug)]
enum Cmd {
    /// Set these one-shot timers `(delay, key)`, in this order.
    Arm(Vec<(Duration, u64)>),
    /// Set a repeating timer.
    Every(Duration, u64),
    /// Set this many one-shot timers this far away, keys `0..n`.
    ArmMany(u64, Duration),
    /// Cancel the latest timer set with this key.
    Cancel(u64),
    /// Cancel every timer set so far; counts how many were still armed.
    CancelAll,
    /// Nothing; just reports that it ran.
    Ping,
}

/// What the handler tells a test running the reactor on another thread.
#[derive(Debug)]
enum Report {
    /// A command ran; `count` is what `CancelAll` counted, else 0.
    Handled { count: u64 },
}

/// What a test makes the handler do when a timer fires.
type React = Box<dyn FnMut(&mut Context<'_>, &mut Log, Fired) + Send>;

/// A handler that sets and cancels timers on command, logs every firing,
/// reacts to it as the test says, and echoes whatever a client sends.
struct Clockwork {
    log: Log,
    react: React,
    /// Log each firing (off for a timer chain that fires once per turn).
    record_fired: bool,
    reports: Option<Sender<Report>>,
}

impl Clockwork {
    fn new(
        react: impl FnMut(&mut Context<'_, <Clockwork as Handler>::Conn>, &mut Log, Fired)
        + Send
        + 'static,
    ) -> Clockwork {
        Clockwork {
            log: Log::default(),
            react: Box::new(react),
            record_fired: true,
            reports: None,
        }
    }

    /// Does nothing when a timer fires but log it.
    fn idle() -> Clockwork {
        Clockwork::new(|_, _, _| {})
    }

    fn reporting(mut self, reports: Sender<Report>) -> Clockwork {
        self.reports = Some(reports);
        self
    }
}

impl Handler for Clockwork {
    type Conn = ();
    type Message = Cmd;

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _peer: &Addr,
        _listener: ListenerId,
    ) {
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        let _ = cx.send(id, data);
        data.len()
    }

    fn on_timer(&mut self, cx: &mut Context<'_, Self::Conn>, timer: TimerId, key: u64) {
        let fired = Fired {
            timer,
            key,
            at: Instant::now(),
            turn: cx.stats().turns,
        };
        if self.record_fired {
            self.log.fired.push(fired);
        }
        (self.react)(cx, &mut self.log, fired);
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self::Conn>, message: Cmd) {
        let mut count = 0;
        match message {
            Cmd::Arm(timers) => {
                for (after, key) in timers {
                    self.log.set(cx, after, key, false);
                }
            }
            Cmd::Every(every, key) => {
                self.log.set(cx, every, key, true);
            }
            Cmd::ArmMany(n, after) => {
                for key in 0..n {
                    self.log.set(cx, after, key, false);
                }
            }
            Cmd::Cancel(key) => {
                self.log.cancel(cx, key);
            }
            Cmd::CancelAll => {
                let timers: Vec<TimerId> = self.log.armed.iter().map(|a| a.timer).collect();
                count = timers.into_iter().filter(|&t| cx.cancel_timer(t)).count() as u64;
            }
            Cmd::Ping => {}
        }
        if let Some(reports) = &self.reports {
            let _ = reports.send(Report::Handled { count });
        }
    }
}

fn bind(handler: Clockwork) -> Reactor<Clockwork> {
    Reactor::bind(any_local_address(), Config::default(), handler).expect("bind on port 0")
}

/// Turns the loop for `window`. Only to observe that something does *not*
/// happen within a bounded window.
fn drive_for(reactor: &mut Reactor<Clockwork>, window: Duration) {
    let end = Instant::now() + window;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        reactor.run_once(Some(left.min(ms(10)))).expect("run_once");
    }
}

/// What the reactor thread hands back: the reactor and what `run` returned.
type Ran = (Reactor<Clockwork>, Result<StopReport, Error>);

/// A reactor in `Reactor::run` on its own thread.
struct Running {
    handle: Handle<Cmd>,
    addr: SocketAddr,
    stats: StatsReader,
    thread: Option<JoinHandle<Ran>>,
}

fn spawn_run(mut reactor: Reactor<Clockwork>) -> Running {
    let handle = reactor.handle();
    let addr = reactor.local_addr().expect("a TCP listener");
    let stats = reactor.stats_reader();
    let thread = std::thread::spawn(move || {
        let result = reactor.run();
        (reactor, result)
    });
    Running {
        handle,
        addr,
        stats,
        thread: Some(thread),
    }
}

impl Running {
    fn send(&self, cmd: Cmd) {
        self.handle.send_message(cmd).expect("send_message");
    }

    /// Waits (bounded) for `run` to return, a stop having been asked for;
    /// hands back the reactor and its report.
    fn join(mut self) -> (Reactor<Clockwork>, StopReport) {
        let thread = self.thread.take().expect("reactor thread");
        wait_until("run to return", || thread.is_finished());
        let (reactor, result) = thread.join().expect("reactor thread panicked");
        (reactor, result.expect("run must not fail"))
    }

    /// Stops the reactor gracefully and joins it.
    fn stop(self) -> (Reactor<Clockwork>, StopReport) {
        self.handle.stop();
        self.join()
    }
}

impl Drop for Running {
    /// A test that failed midway leaves no loop running behind it.
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.handle.stop_now();
        }
    }
}

#[test]
fn one_shot_timers_fire_in_deadline_order_equal_delays_in_set_order_never_early() {
    let mut reactor = bind(Clockwork::idle());
    // Set in this order; keys 1, 3 and 6 share a delay.
    let plan = vec![
        (ms(120), 0),
        (ms(30), 1),
        (ms(80), 2),
        (ms(30), 3),
        (ms(0), 4),
        (ms(60), 5),
        (ms(30), 6),
    ];
    reactor
        .handle()
        .send_message(Cmd::Arm(plan.clone()))
        .expect("send_message");
    drive_until(&mut reactor, "all seven timers", |r| {
        r.handler().log.fired.len() >= plan.len()
    });

    let log = &reactor.handler().log;
    assert_eq!(log.fired_keys(), [4, 1, 3, 6, 5, 2, 0]);
    for armed in &log.armed {
        let fired = log.fired.iter().find(|f| f.timer == armed.timer);
        let fired = fired.unwrap_or_else(|| panic!("timer {} never fired", armed.key));
        assert_eq!(fired.key, armed.key, "on_timer got another timer's key");
        let waited = fired.at - armed.before;
        assert!(
            waited >= armed.after,
            "timer {} fired after {waited:?}, before its delay of {:?}",
            armed.key,
            armed.after
        );
    }
    assert_eq!(reactor.stats().timers_fired, plan.len() as u64);
}

#[test]
fn a_cancelled_timer_never_fires_even_when_cancelled_from_another_timer() {
    // Keys: 1 (40 ms) is cancelled at once by a command; 3 (20 ms) cancels
    // 4 (100 ms) from its callback; 2 (150 ms) fires, and in its callback
    // tries to cancel itself, which a fired one-shot timer no longer is.
    let mut reactor = bind(Clockwork::new(|cx, log, fired| match fired.key {
        3 => {
            log.cancel(cx, 4);
        }
        2 => {
            log.cancel(cx, 2);
        }
        _ => {}
    }));
    let handle = reactor.handle();
    let plan = vec![(ms(40), 1), (ms(150), 2), (ms(20), 3), (ms(100), 4)];
    handle.send_message(Cmd::Arm(plan)).expect("send_message");
    handle.send_message(Cmd::Cancel(1)).expect("send_message");
    drive_until(&mut reactor, "timer 2 to fire", |r| {
        r.handler().log.fired_keys().contains(&2)
    });
    // Timers fire in deadline order, so 1 (40 ms) and 4 (100 ms) would
    // have fired before 2 (150 ms) had they still been armed.
    assert_eq!(reactor.handler().log.fired_keys(), [3, 2]);

    // Cancelling what has fired, or was cancelled, again: false each time.
    for key in [2, 1, 4] {
        handle.send_message(Cmd::Cancel(key)).expect("send_message");
    }
    drive_until(&mut reactor, "the three cancels", |r| {
        r.handler().log.cancels.len() >= 6
    });
    let log = &reactor.handler().log;
    assert_eq!(
        log.cancels,
        [
            (1, true),  // armed: cancelled by the command
            (4, true),  // armed: cancelled from timer 3's callback
            (2, false), // from its own callback: a one-shot that fired
            (2, false),
            (1, false),
            (4, false),
        ]
    );
    assert_eq!(log.fired_keys(), [3, 2]);
    assert_eq!(reactor.stats().timers_fired, 2);
}

#[test]
fn an_interval_repeats_never_early_skips_missed_periods_and_stops_when_cancelled() {
    const EVERY: Duration = Duration::from_millis(25);
    const KEY: u64 = 7;
    const FIRINGS: usize = 7;
    // The 2nd firing stalls the loop for five periods (a slow callback);
    // the 7th cancels the interval from its own callback.
    let mut reactor = bind(Clockwork::new(|cx, log, _fired| match log.fired.len() {
        2 => {
            let end = Instant::now() + 5 * EVERY;
            while Instant::now() < end {
                std::hint::spin_loop();
            }
            log.marks.push(Instant::now());
        }
        FIRINGS => {
            log.cancel(cx, KEY);
        }
        _ => {}
    }));
    reactor
        .handle()
        .send_message(Cmd::Every(EVERY, KEY))
        .expect("send_message");
    drive_until(&mut reactor, "the interval to be cancelled", |r| {
        !r.handler().log.cancels.is_empty()
    });
    // Cancelled from its own callback: it was armed for the next period.
    assert_eq!(reactor.handler().log.cancels, [(KEY, true)]);

    // No firing after the cancel, over several periods.
    drive_for(&mut reactor, 10 * EVERY);
    let log = &reactor.handler().log;
    assert_eq!(log.fired.len(), FIRINGS, "fired after it was cancelled");
    assert_eq!(reactor.stats().timers_fired, FIRINGS as u64);

    // Never early: each period's deadline is at least one period after the
    // last one's (a late firing only pushes the next deadline later), so
    // firing k comes no earlier than k periods after the interval was set.
    let start = log.armed[0].before;
    for (k, fired) in (1u32..).zip(&log.fired) {
        assert_eq!(fired.timer, log.armed[0].timer);
        let since = fired.at - start;
        assert!(
            since >= k * EVERY,
            "firing {k} came {since:?} after the set, before {:?}",
            k * EVERY
        );
    }
    // One firing per turn at most.
    for pair in log.fired.windows(2) {
        assert!(
            pair[1].turn > pair[0].turn,
            "two firings in turn {}",
            pair[0].turn
        );
    }
    // The stall missed four periods. Firing 3 comes late, once; the missed
    // periods are skipped, so firing 4 waits a whole period after the stall
    // rather than following at once in a burst.
    let stall_end = log.marks[0];
    assert!(log.fired[2].at >= stall_end);
    let gap = log.fired[3].at - stall_end;
    assert!(
        gap >= EVERY,
        "firing 4 came {gap:?} after the stall ended: missed periods fired in a burst"
    );
}

#[test]
fn a_zero_delay_timer_set_from_on_timer_fires_on_a_later_turn() {
    const KEY: u64 = 9;
    const CHAIN: usize = 50;
    // Each firing sets the next, with zero delay, until the chain is long
    // enough.
    let mut reactor = bind(Clockwork::new(|cx, log, fired| {
        if fired.key == KEY && log.fired.len() < CHAIN {
            log.set(cx, Duration::ZERO, KEY, false);
        }
    }));
    reactor
        .handle()
        .send_message(Cmd::Arm(vec![(Duration::ZERO, KEY)]))
        .expect("send_message");
    drive_until(&mut reactor, "the whole chain", |r| {
        r.handler().log.fired.len() >= CHAIN
    });

    let log = &reactor.handler().log;
    assert_eq!(log.armed.len(), CHAIN);
    // The first was set from on_message, the others from on_timer: those
    // wait for the next turn even though they are due at once.
    for (armed, fired) in log.armed.iter().zip(&log.fired).skip(1) {
        assert_eq!(armed.timer, fired.timer);
        assert!(
            fired.turn > armed.turn,
            "a timer set from on_timer in turn {} fired in that same turn",
            armed.turn
        );
    }
}

#[test]
fn a_timer_chain_rearming_with_zero_delay_does_not_starve_io() {
    const KEY: u64 = 9;
    // Every firing sets the next with zero delay, for as long as the
    // reactor runs: the loop never sleeps, and timers are due every turn.
    let mut handler = Clockwork::new(|cx, _log, fired| {
        if fired.key == KEY {
            cx.set_timer(Duration::ZERO, KEY);
        }
    });
    handler.record_fired = false;
    let server = spawn_run(bind(handler));
    server.send(Cmd::Arm(vec![(Duration::ZERO, KEY)]));
    wait_until("the timer chain to run", || {
        server.stats.get().timers_fired >= 100
    });
    let fired_before = server.stats.get().timers_fired;

    // Clients in ping-pong need the loop to serve their I/O turn after
    // turn while the chain fires.
    let plans = [Plan {
        total: 64 * 1024,
        message: 1024,
        half_close: true,
    }; 4];
    for (i, outcome) in run_echo_clients(server.addr, &plans).iter().enumerate() {
        assert!(outcome.is_exact(plans[i].total), "client {i}: {outcome:?}");
        assert!(outcome.eof, "client {i}: no EOF after its half-close");
    }
    let fired_after = server.stats.get().timers_fired;
    assert!(
        fired_after > fired_before,
        "the chain stopped firing while clients were served"
    );

    let (reactor, report) = server.stop();
    assert_eq!(report.forced, 0, "{report}");
    assert!(reactor.stats().timers_fired >= fired_after);
}

/// Runs a reactor that gets `cmd` and then nothing at all for a while, and
/// checks that it did not turn meanwhile: one turn for the command, one for
/// the stop, none in between.
fn assert_no_turns_while_idle(cmd: Cmd) -> Reactor<Clockwork> {
    let (tx, mut reports) = Reports::new();
    let server = spawn_run(bind(Clockwork::idle().reporting(tx)));
    server.send(cmd);
    reports.wait_for("the command to run", |r| match r {
        Report::Handled { .. } => Ok(()),
    });
    // Observing absence: the only sleep. Nothing may wake the loop now.
    std::thread::sleep(ms(300));
    // Published before each wait: 1 once the loop is back in epoll_wait
    // after the command's turn (0 if it has not got there yet).
    let published = server.stats.get().turns;
    assert!(published <= 1, "the idle loop turned: {published} turns");

    let (reactor, report) = server.stop();
    assert_eq!(report, StopReport::default());
    assert_eq!(
        reactor.stats().turns,
        2,
        "expected one turn for the command and one for the stop"
    );
    reactor
}

#[test]
fn an_idle_reactor_without_timers_never_wakes() {
    assert_no_turns_while_idle(Cmd::Ping);
}

#[test]
fn a_far_future_timer_does_not_wake_an_idle_reactor() {
    let reactor = assert_no_turns_while_idle(Cmd::Arm(vec![(Duration::from_secs(3600), 1)]));
    assert_eq!(reactor.handler().log.armed.len(), 1);
    assert!(reactor.handler().log.fired.is_empty());
    assert_eq!(reactor.stats().timers_fired, 0);
}

#[test]
fn a_hundred_thousand_armed_timers_leave_the_loop_serving_and_all_cancel() {
    const TIMERS: u64 = 100_000;
    let (tx, mut reports) = Reports::new();
    let server = spawn_run(bind(Clockwork::idle().reporting(tx)));
    let handled = |reports: &mut Reports<Report>, what: &str| {
        reports.wait_for(what, |r| match r {
            Report::Handled { count } => Ok(count),
        })
    };
    server.send(Cmd::ArmMany(TIMERS, Duration::from_secs(3600)));
    handled(&mut reports, "100,000 timers armed");

    let plans = [Plan {
        total: 256 * 1024,
        message: 4096,
        half_close: true,
    }; 4];
    for (i, outcome) in run_echo_clients(server.addr, &plans).iter().enumerate() {
        assert!(outcome.is_exact(plans[i].total), "client {i}: {outcome:?}");
    }

    server.send(Cmd::CancelAll);
    assert_eq!(
        handled(&mut reports, "cancelling all"),
        TIMERS,
        "every timer should still have been armed"
    );
    server.send(Cmd::CancelAll);
    assert_eq!(handled(&mut reports, "cancelling all again"), 0);

    let (reactor, _) = server.stop();
    assert_eq!(reactor.stats().timers_fired, 0);
    assert_eq!(reactor.handler().log.armed.len(), TIMERS as usize);
}

#[test]
fn timers_pending_at_stop_never_fire_and_run_does_not_wait_for_them() {
    let reactor = bind(Clockwork::idle());
    let handle = reactor.handle();
    // Queued before the loop runs, so both commands run in its first turn:
    // the timers are armed, then the stop comes at the end of that turn.
    handle
        .send_message(Cmd::Arm(vec![(ms(200), 1), (Duration::from_secs(3600), 2)]))
        .expect("send_message");
    handle.stop();
    // `join` fails at the deadline if `run` waits for the timers.
    let (mut reactor, report) = spawn_run(reactor).join();
    assert_eq!(report, StopReport::default());
    assert_eq!(
        reactor.handler().log.armed.len(),
        2,
        "armed before the stop"
    );
    assert!(matches!(
        handle.send_message(Cmd::Ping),
        Err(Error::Stopped)
    ));

    // Past the short timer's deadline: it was dropped, not postponed.
    let turns = reactor.stats().turns;
    drive_for(&mut reactor, ms(300));
    assert!(reactor.handler().log.fired.is_empty());
    assert_eq!(reactor.stats().timers_fired, 0);
    assert_eq!(
        reactor.stats().turns,
        turns,
        "run_once turned a stopped reactor"
    );
}
