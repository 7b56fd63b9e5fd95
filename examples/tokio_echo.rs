//! The comparison peer of `echo_reactor`: an echo server written the way a
//! competent tokio user writes one, and nothing cleverer. A current-thread
//! runtime (one thread, like the reactor), a task per connection, a 16 KiB
//! buffer per task, `read` then `write_all` until EOF or an error.
//!
//! ```text
//! cargo run --release --example tokio_echo -- [--addr HOST:PORT]
//! ```
//!
//! The first line on stdout is `listening on HOST:PORT`, the bound address
//! (also for port 0), flushed. Accepted sockets get `TCP_NODELAY`, as in
//! `echo_reactor`, so neither server waits on Nagle's algorithm.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const USAGE: &str = "\
usage: tokio_echo [--addr HOST:PORT]

Echoes every byte back on the connection it came from (tokio, one thread).

  --addr HOST:PORT   address to listen on (default 127.0.0.1:7891; port 0 picks a free port)
  -h, --help         print this help";

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Option<SocketAddr>, String> {
    let mut addr = SocketAddr::from(([127, 0, 0, 1], 7891));
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                let text = args.next().ok_or("--addr needs a value")?;
                addr = text
                    .parse()
                    .map_err(|_| format!("--addr: '{text}' is not HOST:PORT"))?;
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(Some(addr))
}

fn main() -> ExitCode {
    let addr = match parse_args(std::env::args().skip(1)) {
        Ok(Some(addr)) => addr,
        Ok(None) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("tokio_echo: {message}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("tokio_echo: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(addr)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tokio_echo: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(addr: SocketAddr) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    let mut stdout = std::io::stdout().lock();
    // Scripts wait for this exact line; flush it at once.
    writeln!(stdout, "listening on {}", listener.local_addr()?)?;
    stdout.flush()?;
    drop(stdout);
    loop {
        match listener.accept().await {
            Ok((socket, _peer)) => {
                tokio::spawn(echo(socket));
            }
            Err(e) => {
                // EMFILE and the like: retrying at once would spin, so
                // wait a little, as hyper and friends do.
                eprintln!("tokio_echo: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn echo(mut socket: TcpStream) {
    if let Err(e) = socket.set_nodelay(true) {
        eprintln!("tokio_echo: set_nodelay: {e}");
    }
    let mut buf = [0; 16 * 1024];
    loop {
        let n = match socket.read(&mut buf).await {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) => {
                eprintln!("tokio_echo: read: {e}");
                return;
            }
        };
        if let Err(e) = socket.write_all(&buf[..n]).await {
            eprintln!("tokio_echo: write: {e}");
            return;
        }
    }
}
