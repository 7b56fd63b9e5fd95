//! Writes never raise `SIGPIPE`: a reactor that sends to a peer that has
//! gone gets `EPIPE` on that connection and the process lives on.
//!
//! A Rust test binary ignores `SIGPIPE` (the runtime sets `SIG_IGN` before
//! `main`), so a send without `MSG_NOSIGNAL` would pass unnoticed here. The
//! scenario therefore runs in a child process, this binary run again for the
//! one ignored test, which first restores the default action (death).
//!
//! Why the scenario gets `EPIPE` rather than `ECONNRESET` (Linux,
//! `tcp_reset` and `sk_stream_error`): the client connects and closes, so
//! the server's socket has the peer's FIN and is in `CLOSE_WAIT`. The
//! handler then sends; the client's socket is closed, so data makes its
//! kernel answer with a reset. A reset that finds a socket in `CLOSE_WAIT`
//! records `EPIPE` as the socket's error (in any other state it records
//! `ECONNRESET`, which raises no signal), and the next send fails with that
//! `EPIPE`, raising `SIGPIPE` unless it was made with `MSG_NOSIGNAL`.
//! `the_scenario_gets_epipe` checks that premise on plain sockets, so this
//! file cannot pass for want of an `EPIPE`.

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{DEADLINE, any_local_address, connect};
use socket2::SockRef;
use tcp_reactor::{
    Addr, CloseReason, Config, ConnId, Context, Error, Handler, ListenerId, Reactor,
};

/// The test the child process runs.
const CHILD: &str = "child_sends_to_a_peer_that_has_gone";
/// Set for the child: restore the default `SIGPIPE` action.
const CHILD_ENV: &str = "TCP_REACTOR_SIGPIPE_CHILD";
/// What the child prints once its scenario has run to the end, so that a
/// child that ran no test (a renamed test, a filter that matched nothing)
/// cannot pass for one that survived.
const CHILD_DONE: &str = "sigpipe child: survived";
/// The child's own waits: shorter than the parent's deadline on the child,
/// so that a child stuck in a wait says where before it is killed.
const CHILD_DEADLINE: Duration = Duration::from_secs(20);

/// Keeps a connection half-open after the peer's FIN and sends to it until
/// the send is refused, the connection having closed on a socket error.
#[derive(Debug, Default)]
struct SendUntilGone {
    /// `send` calls that returned `Ok`: the first reaches the closed peer;
    /// the one that met the reset's error is among them (it closed the
    /// connection, which is not an error of the send).
    sends: usize,
    /// The send that ended the loop was refused with this.
    refused: Option<Error>,
    /// The loop stopped because output was queued: the kernel would not
    /// take more before the reset came, so the reactor's flush meets it.
    queued: bool,
    closed: Option<CloseReason>,
}

impl Handler for SendUntilGone {
    type Conn = ();
    type Message = ();

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
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _: &mut (),
        data: &[u8],
    ) -> usize {
        data.len()
    }

    /// Does not close: sends, one byte at a time, until the reactor has
    /// met the reset. Usually the reset is in before the first send
    /// returns (loopback delivers it at once) and the second send fails.
    fn on_eof(&mut self, cx: &mut Context<'_, Self::Conn>, id: ConnId, _: &mut ()) {
        let deadline = Instant::now() + CHILD_DEADLINE;
        loop {
            assert!(
                Instant::now() < deadline,
                "no reset after {} sends",
                self.sends
            );
            match cx.send(id, b"x") {
                // The send that met the error closed the connection and
                // returned Ok; this one is refused.
                Err(e) => {
                    self.refused = Some(e);
                    return;
                }
                Ok(()) => self.sends += 1,
            }
            if cx.pending_output(id) > 0 {
                // Queued sends make no system call; the flush on the
                // reset's edge will.
                self.queued = true;
                return;
            }
        }
    }

    fn on_close(
        &mut self,
        _cx: &mut Context<'_, Self::Conn>,
        _id: ConnId,
        _: (),
        reason: CloseReason,
    ) {
        self.closed = Some(reason);
    }
}

/// Run by [`writes_to_a_peer_that_has_gone_never_raise_sigpipe`] in a
/// process of its own. Run directly (`--include-ignored`), without
/// [`CHILD_ENV`], it leaves `SIGPIPE` ignored, since other tests share the
/// process: it still checks the reset, but cannot catch a signal.
#[test]
#[ignore = "the child of writes_to_a_peer_that_has_gone_never_raise_sigpipe"]
fn child_sends_to_a_peer_that_has_gone() {
    if std::env::var_os(CHILD_ENV).is_some() {
        // SAFETY: signal(2) with SIG_DFL installs no handler; this process
        // runs this one test (`--exact`, one thread) and nothing else.
        let previous = unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
        assert_ne!(previous, libc::SIG_ERR, "signal(SIGPIPE, SIG_DFL)");
    }
    let mut reactor = Reactor::bind(
        any_local_address(),
        Config::default(),
        SendUntilGone::default(),
    )
    .expect("bind");
    // Nothing unread at the client, so closing sends FIN, not a reset.
    drop(connect(reactor.local_addr().expect("a TCP listener")));
    let deadline = Instant::now() + CHILD_DEADLINE;
    while reactor.handler().closed.is_none() {
        assert!(
            Instant::now() < deadline,
            "the connection did not close: {:?}",
            reactor.handler()
        );
        reactor
            .run_once(Some(Duration::from_millis(10)))
            .expect("run_once");
    }
    let seen = reactor.handler();
    assert!(seen.sends >= 1, "no send reached the peer: {seen:?}");
    assert!(
        matches!(seen.closed, Some(CloseReason::Reset)),
        "closed otherwise than by the peer's reset: {seen:?}"
    );
    // Ended by a refusal, the loop made one send to draw the reset and one
    // that met it.
    assert!(
        seen.queued
            || (matches!(seen.refused, Some(Error::UnknownConnection(_))) && seen.sends >= 2),
        "the send loop ended otherwise: {seen:?}"
    );
    assert_eq!(reactor.stats().resets, 1);
    println!(
        "{CHILD_DONE}: {} sends, the reset met by {}",
        seen.sends,
        if seen.queued {
            "the flush"
        } else {
            "the last send"
        }
    );
}

#[test]
fn writes_to_a_peer_that_has_gone_never_raise_sigpipe() {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut child = Command::new(exe)
        .args(["--ignored", "--exact", CHILD, "--nocapture"])
        .arg("--test-threads=1")
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the test binary again");
    // A thread per pipe reads it to its end, which comes when the child
    // exits (or is killed): a full pipe cannot stall the child, and the
    // wait for both ends has a deadline.
    let (done, ends) = mpsc::channel();
    let pipes: [(&str, Box<dyn Read + Send>); 2] = [
        (
            "stdout",
            Box::new(child.stdout.take().expect("piped stdout")),
        ),
        (
            "stderr",
            Box::new(child.stderr.take().expect("piped stderr")),
        ),
    ];
    for (name, mut pipe) in pipes {
        let done = done.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = done.send((name, text));
        });
    }
    let deadline = Instant::now() + DEADLINE;
    let (mut stdout, mut stderr) = (String::new(), String::new());
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now());
        match ends.recv_timeout(left) {
            Ok(("stdout", text)) => stdout = text,
            Ok((_, text)) => stderr = text,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the child ran past {DEADLINE:?}; so far:\n{stdout}{stderr}");
            }
        }
    }
    let status = child.wait().expect("wait for the child");
    assert_ne!(
        status.signal(),
        Some(libc::SIGPIPE),
        "a write raised SIGPIPE and killed the child:\n{stdout}{stderr}"
    );
    assert!(
        status.success(),
        "the child failed: {status}\n{stdout}{stderr}"
    );
    assert!(
        stdout.contains(CHILD_DONE),
        "the child did not run its scenario:\n{stdout}{stderr}"
    );
}

/// The premise, on plain sockets: once the peer's FIN is in, a send to the
/// closed peer draws a reset, and a send after that fails with `EPIPE`.
/// Were it `ECONNRESET`, the child above would pass with or without
/// `MSG_NOSIGNAL`.
#[test]
fn the_scenario_gets_epipe() {
    let listener = TcpListener::bind(any_local_address()).expect("bind");
    let client = connect(listener.local_addr().expect("listener address"));
    let (mut server, _) = listener.accept().expect("accept");
    server.set_read_timeout(Some(DEADLINE)).expect("timeout");
    server.set_write_timeout(Some(DEADLINE)).expect("timeout");
    drop(client);
    let n = server.read(&mut [0; 1]).expect("read the FIN");
    assert_eq!(n, 0, "EOF: the server's socket is in CLOSE_WAIT");
    let socket = SockRef::from(&server);
    let deadline = Instant::now() + DEADLINE;
    let mut sends = 0;
    let error = loop {
        assert!(Instant::now() < deadline, "no error after {sends} sends");
        match socket.send_with_flags(b"x", libc::MSG_NOSIGNAL) {
            Ok(_) => sends += 1,
            Err(e) => break e,
        }
    };
    assert!(sends >= 1, "the first send failed: {error}");
    assert_eq!(
        error.raw_os_error(),
        Some(libc::EPIPE),
        "after {sends} sends: {error}"
    );
}
