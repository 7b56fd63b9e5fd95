//! Outbound connections: starting a non-blocking `connect`, and telling
//! how one failed.

use std::io;

use socket2::{Domain, SockAddr, Socket, Type};

use crate::Addr;

/// Why an outbound connection ([`Context::connect`](crate::Context::connect))
/// was never established. It reaches the handler as
/// [`CloseReason::ConnectFailed`](crate::CloseReason::ConnectFailed).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Nothing listens there (`ECONNREFUSED`): the peer answered with a reset.
    #[error("connection refused")]
    Refused,
    /// No route to the network or host (`ENETUNREACH`, `EHOSTUNREACH`).
    #[error("network or host unreachable")]
    Unreachable,
    /// Not established within the connect timeout
    /// ([`Config::connect_timeout`](crate::Config::connect_timeout), or the
    /// one given to [`Context::connect_within`](crate::Context::connect_within)),
    /// or the kernel gave up (`ETIMEDOUT`).
    #[error("connect timed out")]
    TimedOut,
    /// Another failure, for example no socket file at a Unix path, or a
    /// Unix listener whose backlog is full (`EAGAIN`).
    #[error("{0}")]
    Io(io::Error),
}

impl ConnectError {
    /// Sorts a connect's `io::Error` into the reasons a handler acts on.
    pub(crate) fn from_io(error: io::Error) -> ConnectError {
        match error.kind() {
            io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            io::ErrorKind::TimedOut => ConnectError::TimedOut,
            io::ErrorKind::HostUnreachable | io::ErrorKind::NetworkUnreachable => {
                ConnectError::Unreachable
            }
            _ => ConnectError::Io(error),
        }
    }
}

/// How far a started `connect` got.
#[derive(Debug)]
pub(crate) enum Started {
    /// Established at once (usual for a Unix socket).
    Connected,
    /// Under way: the socket turns writable when it is established or has
    /// failed (`SO_ERROR` says which).
    InProgress,
    /// Failed at once; reported to the handler like a later failure.
    Failed(io::Error),
}

/// A new non-blocking stream socket for `addr`, with its `connect` begun.
///
/// # Errors
///
/// Only the failures of making the socket (`EMFILE` and the like): those
/// are the program's, returned from `connect` at once. How the connect
/// itself went is in [`Started`].
pub(crate) fn start(addr: &Addr) -> io::Result<(Socket, Started)> {
    let (domain, target) = match addr {
        Addr::Tcp(addr) => (Domain::for_address(*addr), SockAddr::from(*addr)),
        Addr::Unix(addr) => {
            let path = addr.as_pathname().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "connect needs a Unix socket path",
                )
            })?;
            (Domain::UNIX, SockAddr::unix(path)?)
        }
    };
    let socket = Socket::new(domain, Type::STREAM, None)?;
    socket.set_nonblocking(true)?;
    let started = match socket.connect(&target) {
        Ok(()) => Started::Connected,
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Started::InProgress,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Started::InProgress,
        Err(e) => Started::Failed(e),
    };
    Ok((socket, started))
}

/// A writable (or error) event came for a connect under way: whether it
/// is established (`Ok(true)`), still under way (`Ok(false)`), or failed.
pub(crate) fn result(socket: &Socket) -> io::Result<bool> {
    if let Some(error) = socket.take_error()? {
        return Err(error);
    }
    match socket.peer_addr() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(false),
        Err(e) => Err(e),
    }
}
