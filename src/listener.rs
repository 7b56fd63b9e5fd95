//! Builds the listening socket: the tutorial's `socket`, `bind`,
//! `listen(128)`, done with `socket2` so the options go on before `bind`.

use std::net::SocketAddr;

use socket2::{Domain, Protocol, Socket, Type};

use crate::os_limits::somaxconn;
use crate::{Config, Error};

/// Creates a non-blocking listener bound to `addr` and returns it with the
/// address it really got (port 0 becomes the port the kernel chose).
pub(crate) fn bind(
    addr: SocketAddr,
    config: &Config,
) -> Result<(mio::net::TcpListener, SocketAddr), Error> {
    let fail = |op| move |source| Error::Listener { op, addr, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(fail("socket"))?;
    // SO_REUSEADDR must be set on the socket that binds, before bind
    // (rust-lang/socket2#489). On Windows it would let another process
    // hijack the port, so it is Unix only.
    #[cfg(unix)]
    if config.reuse_address {
        socket
            .set_reuse_address(true)
            .map_err(fail("setsockopt(SO_REUSEADDR)"))?;
    }
    socket
        .set_nonblocking(true)
        .map_err(fail("fcntl(O_NONBLOCK)"))?;
    socket
        .bind(&addr.into())
        .map_err(|source| Error::Bind { addr, source })?;
    // `Config::validate` keeps the backlog within a C int.
    let backlog = i32::try_from(config.backlog).unwrap_or(i32::MAX);
    socket.listen(backlog).map_err(fail("listen"))?;
    warn_if_backlog_capped(config.backlog);

    let local_addr = socket
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .ok_or_else(|| Error::Listener {
            op: "getsockname",
            addr,
            source: std::io::Error::other("no socket address"),
        })?;
    let listener = mio::net::TcpListener::from_std(socket.into());
    Ok((listener, local_addr))
}

/// The kernel silently caps the backlog at `net.core.somaxconn`; say so
/// once, as Redis does, rather than let a configured value quietly not hold.
fn warn_if_backlog_capped(backlog: u32) {
    if let Some(cap) = somaxconn() {
        if cap < backlog {
            log::warn!("listen backlog {backlog} is capped to {cap} by net.core.somaxconn");
        }
    }
}
