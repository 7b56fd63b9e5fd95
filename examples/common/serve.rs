//! What the one-listener examples (`proxy`, `chat`, `kv`, `hello_server`) share around their
//! handler, included with `#[path = "common/serve.rs"] mod serve;`: the
//! command line's three outcomes, and listening, announcing and running.
#![allow(dead_code)] // each example uses a part

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use tcp_reactor::{Handler, Reactor, StopReport};

/// The parsed arguments; or, as the exit code to return: `--help` (the
/// usage on stdout, 0) or a bad command line (one line on stderr, 2).
pub fn args_or_exit<T>(
    program: &str,
    usage: &str,
    parsed: Result<Option<T>, String>,
) -> Result<T, ExitCode> {
    match parsed {
        Ok(Some(args)) => Ok(args),
        Ok(None) => {
            println!("{usage}");
            Err(ExitCode::SUCCESS)
        }
        Err(message) => {
            eprintln!("{program}: {message}");
            Err(ExitCode::from(2))
        }
    }
}

/// Listens on `addr`, makes SIGINT and SIGTERM stop the reactor, prints
/// `listening on HOST:PORT` (the real port), and runs until stopped.
/// `Err` is the message for stderr.
pub fn listen_and_run<H: Handler>(
    reactor: &mut Reactor<H>,
    addr: SocketAddr,
) -> Result<StopReport, String> {
    let mut cx = reactor.context();
    let listener = cx.listen(addr).map_err(|e| e.to_string())?;
    let bound = cx
        .listener_addr(listener)
        .ok_or("the listener's address is unknown")?;
    reactor.stop_on_signals().map_err(|e| e.to_string())?;
    // Scripts and tests wait for this line: only once signals are set up.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "listening on {bound}")
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing to stdout: {e}"))?;
    drop(stdout);
    log::info!("listening on {bound}");
    reactor.run().map_err(|e| e.to_string())
}
