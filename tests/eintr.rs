//! `EINTR` from `epoll_wait` is never fatal: a signal delivered to the
//! reactor's thread while it sleeps in `run` does not end the loop, and
//! ends a `run_once` wait early so the program driving it can act.
//! Its own test binary: it installs a process-wide signal handler.

mod common;

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{DEADLINE, any_local_address, echo_once, wait_until};
use tcp_reactor::{Config, ConnId, Context, Echo, Handler, Reactor};

static SIGNALS_HANDLED: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_signal(_: libc::c_int) {
    SIGNALS_HANDLED.fetch_add(1, Ordering::SeqCst);
}

/// Echo, and stop the reactor when a client sends `stop`.
struct StoppableEcho;

impl Handler for StoppableEcho {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _peer: &tcp_reactor::Addr,
        _listener: tcp_reactor::ListenerId,
    ) {
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        conn: &mut (),
        data: &[u8],
    ) -> usize {
        if data == b"stop" {
            cx.stop();
            return data.len();
        }
        Echo.on_data(cx, id, conn, data)
    }
}

/// Installs `count_signal` for SIGUSR1, without SA_RESTART: epoll_wait
/// returns EINTR when it runs (it is never restarted anyway, whatever the
/// flags).
fn count_sigusr1() {
    // SAFETY: `count_signal` only touches an atomic, which is
    // async-signal-safe; the sigaction struct is fully initialised.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = count_signal as *const () as libc::sighandler_t;
        libc::sigemptyset(&mut action.sa_mask);
        assert_eq!(
            libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()),
            0
        );
    }
}

#[test]
fn signals_while_waiting_do_not_end_the_loop() {
    count_sigusr1();

    let mut reactor =
        Reactor::bind(any_local_address(), Config::default(), StoppableEcho).expect("bind");
    let addr = reactor.local_addr().expect("a TCP listener");
    let stats = reactor.stats_reader();
    // `run` with no timeout: between events the thread sleeps in epoll_wait.
    let thread = std::thread::spawn(move || reactor.run());
    assert_eq!(echo_once(addr, b"before"), b"before");
    let turns_before = stats.get().turns;

    for sent in 1..=100 {
        // SAFETY: the thread has not been joined, so its pthread_t is valid.
        let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGUSR1) };
        assert_eq!(rc, 0, "pthread_kill");
        wait_until("the signal handled", || {
            SIGNALS_HANDLED.load(Ordering::SeqCst) >= sent
        });
        assert!(!thread.is_finished(), "run() returned after signal {sent}");
    }

    // Still serving, and the interrupted waits were retried inside one turn
    // rather than counted as turns with nothing to do.
    assert_eq!(echo_once(addr, b"after"), b"after");
    let turns = stats.get().turns - turns_before;
    assert!(
        turns < 50,
        "{turns} turns for one exchange: EINTR counted as turns"
    );
    let mut stopper = common::connect(addr);
    std::io::Write::write_all(&mut stopper, b"stop").expect("stop");
    // The graceful stop ends once this last client has closed too.
    drop(stopper);
    wait_until("run to return", || thread.is_finished());
    let result = thread.join().expect("reactor thread");
    assert!(result.is_ok(), "run returned {result:?}");
}

#[test]
fn a_signal_ends_a_run_once_wait_early_with_nothing_done() {
    count_sigusr1();
    let mut reactor =
        Reactor::bind(any_local_address(), Config::default(), StoppableEcho).expect("bind");
    let (returned, returns) = mpsc::channel();
    // No connection, no timer: `run_once(None)` waits until a signal.
    let thread = std::thread::spawn(move || {
        for _ in 0..3 {
            reactor.run_once(None).expect("run_once after EINTR");
            if returned.send(()).is_err() {
                break;
            }
        }
        reactor
    });
    for i in 0..3 {
        // The signal may land before the thread is back in epoll_wait;
        // send it again until the wait ends.
        let deadline = Instant::now() + DEADLINE;
        loop {
            // SAFETY: the thread has not been joined, so its pthread_t is valid.
            let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGUSR1) };
            assert_eq!(rc, 0, "pthread_kill");
            if returns.recv_timeout(Duration::from_millis(20)).is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "run_once {i} never returned");
        }
    }
    let reactor = thread.join().expect("reactor thread");
    assert_eq!(
        reactor.stats().turns,
        0,
        "an interrupted wait is not a turn"
    );
    assert!(!reactor.is_stopped());
}

/// Sets a timer when a client connects, reports when it fires, and stops
/// the reactor then.
struct TimerOnOpen {
    delay: Duration,
    fired: mpsc::Sender<Instant>,
}

impl Handler for TimerOnOpen {
    type Conn = ();
    type Message = ();

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _peer: &tcp_reactor::Addr,
        _listener: tcp_reactor::ListenerId,
    ) {
        cx.set_timer(self.delay, 0);
    }

    fn on_data(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _conn: &mut (),
        data: &[u8],
    ) -> usize {
        data.len()
    }

    fn on_timer(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        _timer: tcp_reactor::TimerId,
        _key: u64,
    ) {
        let _ = self.fired.send(Instant::now());
        cx.stop_now();
    }
}

#[test]
fn signals_more_often_than_a_timer_s_delay_do_not_put_it_off() {
    count_sigusr1();
    let delay = Duration::from_millis(300);
    let (fired, fires) = mpsc::channel();
    let mut reactor = Reactor::bind(
        any_local_address(),
        Config::default(),
        TimerOnOpen { delay, fired },
    )
    .expect("bind");
    let addr = reactor.local_addr().expect("a TCP listener");
    let thread = std::thread::spawn(move || reactor.run());
    // Read before the connect: the timer is set (in on_open) after it.
    let set = Instant::now();
    let _client = common::connect(addr);
    // A signal every 30 ms, ten within the delay: each ends a wait early.
    // Were the next wait measured from the clock reading before the
    // signal, every one would restart the whole 300 ms and the timer would
    // not fire while the signals went on.
    let deadline = set + DEADLINE;
    let fired_at = loop {
        // SAFETY: the thread has not been joined, so its pthread_t is valid.
        let rc = unsafe { libc::pthread_kill(thread.as_pthread_t(), libc::SIGUSR1) };
        assert_eq!(rc, 0, "pthread_kill");
        if let Ok(at) = fires.recv_timeout(Duration::from_millis(30)) {
            break at;
        }
        assert!(Instant::now() < deadline, "the timer never fired");
    };
    // It fired while the signals went on (had each signal restarted the
    // wait, it would not have fired before the deadline above), and not
    // early. The upper bound is only a sanity check, far above the delay.
    let late = fired_at.duration_since(set);
    assert!(late >= delay, "a {delay:?} timer fired after {late:?}");
    assert!(
        late < delay + Duration::from_secs(5),
        "a {delay:?} timer fired after {late:?} under a signal every 30 ms"
    );
    wait_until("run to return", || thread.is_finished());
    let result = thread.join().expect("reactor thread");
    assert!(result.is_ok(), "run returned {result:?}");
}
