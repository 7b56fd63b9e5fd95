//! Regression (found in review): `accept_backoff` was only checked to be
//! non-zero, and the pause after an accept error computed
//! `Instant::now() + backoff`, which panics on overflow. `Duration::MAX`
//! reads naturally as "retry only when a connection closes", and the first
//! `EMFILE` killed the reactor thread.
//!
//! One test only: it lowers the process-wide open-file limit.

mod common;

use std::fs::File;
use std::net::TcpStream;
use std::time::Duration;

use common::{start, wait_until};
use rlimit::Resource;
use tcp_reactor::{Config, Echo};

#[test]
fn a_huge_accept_backoff_does_not_panic_on_emfile() {
    let config = Config::default().accept_backoff(Duration::MAX);
    config.validate().expect("Duration::MAX passes validate");
    let server = start(config, Echo);

    let (soft, hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit");
    let in_use = std::fs::read_dir("/proc/self/fd").expect("fds").count() as u64;
    rlimit::setrlimit(Resource::NOFILE, in_use + 16, hard).expect("lower the limit");
    // Take every descriptor, then give exactly one back for the client's
    // socket: the reactor's accept has none left.
    let mut spares = Vec::new();
    while let Ok(file) = File::open("/dev/null") {
        spares.push(file);
    }
    spares.pop();
    let client = TcpStream::connect(server.addr);
    wait_until("the accept to fail or the reactor to die", || {
        !server.is_running() || server.stats().accept_errors > 0
    });
    drop(spares);
    rlimit::setrlimit(Resource::NOFILE, soft, hard).expect("restore the limit");
    assert!(
        server.is_running(),
        "EMFILE with accept_backoff = Duration::MAX panicked the reactor thread"
    );
    drop(client);
}
