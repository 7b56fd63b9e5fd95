//! The echo server with many timers armed: shows (and lets a benchmark
//! measure) that armed timers cost the loop nothing per message.
//!
//! ```text
//! cargo run --release --example timer_echo -- [--addr HOST:PORT] [--timers N]
//! ```
//!
//! Before serving, it arms N one-shot timers due hours from now (default
//! 100,000), spread over an hour so the heap is a real one. Then it echoes
//! like `echo_reactor`. The first stdout line is `listening on HOST:PORT`;
//! SIGINT or SIGTERM stops it and it prints how many timers fired (0) and
//! were still armed.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use signal_hook::consts::{SIGINT, SIGTERM};
use tcp_reactor::{Addr, Config, ConnId, Context, Echo, Handler, ListenerId, Reactor, TimerId};

/// Echo, plus timers armed on request.
struct TimerEcho {
    armed: Vec<TimerId>,
    fired: u64,
}

/// Arm this many timers.
struct Arm(usize);

impl Handler for TimerEcho {
    type Conn = ();
    type Message = Arm;

    fn on_open(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        peer: &Addr,
        _listener: ListenerId,
    ) {
        Echo.on_open(cx, id, peer, _listener);
    }

    fn on_data(
        &mut self,
        cx: &mut Context<'_, Self::Conn>,
        id: ConnId,
        conn: &mut (),
        data: &[u8],
    ) -> usize {
        Echo.on_data(cx, id, conn, data)
    }

    fn on_timer(&mut self, _cx: &mut Context<'_, Self::Conn>, _timer: TimerId, _key: u64) {
        self.fired += 1;
    }

    fn on_message(&mut self, cx: &mut Context<'_, Self::Conn>, Arm(count): Arm) {
        const HOURS: u64 = 2 * 3600;
        for i in 0..count as u64 {
            // Distinct deadlines two hours out and beyond: none fires while
            // the benchmark runs, and they are not all equal (a heap of
            // equal keys would flatter it).
            let after = Duration::from_secs(HOURS) + Duration::from_millis(i * 37 % 3_600_000);
            self.armed.push(cx.set_timer(after, i));
        }
    }
}

fn main() -> ExitCode {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 7892));
    let mut timers = 100_000;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next();
        let parsed = match (flag.as_str(), &value) {
            ("--addr", Some(v)) => v.parse().map(|a| addr = a).is_ok(),
            ("--timers", Some(v)) => v.parse().map(|n| timers = n).is_ok(),
            _ => false,
        };
        if !parsed {
            eprintln!("usage: timer_echo [--addr HOST:PORT] [--timers N]");
            return ExitCode::from(2);
        }
    }
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let handler = TimerEcho {
        armed: Vec::new(),
        fired: 0,
    };
    let mut reactor = match Reactor::bind(addr, Config::default(), handler) {
        Ok(reactor) => reactor,
        Err(e) => {
            eprintln!("timer_echo: {e}");
            return ExitCode::FAILURE;
        }
    };
    let handle = reactor.handle();
    if handle.send_message(Arm(timers)).is_err() {
        return ExitCode::FAILURE;
    }
    for signal in [SIGINT, SIGTERM] {
        let handle = handle.clone();
        // SAFETY: `Handle::stop` is async-signal-safe (an atomic and an
        // eventfd write; no lock, no allocation).
        if let Err(e) = unsafe { signal_hook::low_level::register(signal, move || handle.stop()) } {
            eprintln!("timer_echo: signals: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut stdout = std::io::stdout().lock();
    if writeln!(
        stdout,
        "listening on {}",
        reactor.local_addr().expect("a TCP listener")
    )
    .and_then(|()| stdout.flush())
    .is_err()
    {
        return ExitCode::FAILURE;
    }
    match reactor.run() {
        Ok(report) => {
            let handler = reactor.handler();
            eprintln!(
                "timer_echo: {} timers armed, {} fired; stop: {report}",
                handler.armed.len(),
                handler.fired
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("timer_echo: {e}");
            ExitCode::FAILURE
        }
    }
}
