//! Listening sockets: the tutorial's `socket`, `bind`, `listen(128)`, done
//! with `socket2` so the options go on before `bind`; for TCP and for Unix
//! domain sockets, bound here or adopted from the program.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::SocketAddr as UnixAddr;
use std::path::PathBuf;

use mio::event::Source;
use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::os_limits::somaxconn;
use crate::{Addr, Config, Error};

/// How a listener is set up. The defaults are those of [`Config`]'s
/// listener fields (backlog 128, `SO_REUSEADDR`, `TCP_NODELAY`), with
/// `SO_REUSEPORT` off and `IPV6_V6ONLY` on.
///
/// ```
/// use tcp_reactor::ListenerOptions;
///
/// let options = ListenerOptions::default().backlog(1024).reuse_port(true);
/// assert_eq!(options.backlog, 1024);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenerOptions {
    /// The `listen(2)` backlog (capped by the kernel at
    /// `net.core.somaxconn`, which is logged). Default 128.
    pub backlog: u32,
    /// `SO_REUSEADDR`: rebind at once after a restart, while old
    /// connections sit in `TIME_WAIT`. TCP only. Default on.
    pub reuse_address: bool,
    /// `SO_REUSEPORT`: let several sockets (one per reactor, one per
    /// process) listen on the same port, the kernel spreading connections
    /// among them. TCP only. Default off.
    pub reuse_port: bool,
    /// `TCP_NODELAY` on each accepted connection. Default on.
    pub nodelay: bool,
    /// `IPV6_V6ONLY` for an IPv6 address, set explicitly so that what
    /// `[::]` accepts does not depend on the `net.ipv6.bindv6only` sysctl.
    /// On (the default): IPv6 only, so `0.0.0.0` and `[::]` can both be
    /// bound to one port, as nginx does. Off: `[::]` takes IPv4 too.
    pub only_v6: bool,
}

impl Default for ListenerOptions {
    fn default() -> ListenerOptions {
        ListenerOptions::from_config(&Config::default())
    }
}

impl ListenerOptions {
    /// The options `Config`'s listener fields describe.
    pub fn from_config(config: &Config) -> ListenerOptions {
        ListenerOptions {
            backlog: config.backlog,
            reuse_address: config.reuse_address,
            reuse_port: false,
            nodelay: config.nodelay,
            only_v6: true,
        }
    }

    /// Sets [`backlog`](#structfield.backlog).
    pub fn backlog(mut self, backlog: u32) -> ListenerOptions {
        self.backlog = backlog;
        self
    }

    /// Sets [`reuse_address`](#structfield.reuse_address).
    pub fn reuse_address(mut self, on: bool) -> ListenerOptions {
        self.reuse_address = on;
        self
    }

    /// Sets [`reuse_port`](#structfield.reuse_port).
    pub fn reuse_port(mut self, on: bool) -> ListenerOptions {
        self.reuse_port = on;
        self
    }

    /// Sets [`nodelay`](#structfield.nodelay).
    pub fn nodelay(mut self, on: bool) -> ListenerOptions {
        self.nodelay = on;
        self
    }

    /// Sets [`only_v6`](#structfield.only_v6).
    pub fn only_v6(mut self, on: bool) -> ListenerOptions {
        self.only_v6 = on;
        self
    }

    fn checked_backlog(&self, addr: &Addr) -> Result<i32, Error> {
        i32::try_from(self.backlog)
            .ok()
            .filter(|&b| b > 0)
            .ok_or_else(|| {
                Error::InvalidConfig(format!(
                    "listener {addr}: backlog {} is not between 1 and {}",
                    self.backlog,
                    i32::MAX
                ))
            })
    }
}

/// A listening socket the reactor accepts from.
#[derive(Debug)]
pub(crate) enum Listener {
    Tcp(mio::net::TcpListener),
    Unix {
        listener: mio::net::UnixListener,
        /// The socket file this reactor created, removed when the listener
        /// closes if it is still the same file (device and inode).
        owned_file: Option<(PathBuf, u64, u64)>,
    },
}

impl Listener {
    /// Binds a TCP listener to `addr` with `options`.
    pub(crate) fn bind_tcp(addr: SocketAddr, options: &ListenerOptions) -> Result<Listener, Error> {
        let at = Addr::Tcp(addr);
        let backlog = options.checked_backlog(&at)?;
        let fail = |op| {
            let at = at.clone();
            move |source| Error::Listener {
                op,
                addr: Box::new(at),
                source,
            }
        };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(fail("socket"))?;
        // SO_REUSEADDR must be set on the socket that binds, before bind
        // (rust-lang/socket2#489).
        if options.reuse_address {
            socket
                .set_reuse_address(true)
                .map_err(fail("setsockopt(SO_REUSEADDR)"))?;
        }
        if options.reuse_port {
            socket
                .set_reuse_port(true)
                .map_err(fail("setsockopt(SO_REUSEPORT)"))?;
        }
        if addr.is_ipv6() {
            socket
                .set_only_v6(options.only_v6)
                .map_err(fail("setsockopt(IPV6_V6ONLY)"))?;
        }
        socket
            .set_nonblocking(true)
            .map_err(fail("fcntl(O_NONBLOCK)"))?;
        socket.bind(&addr.into()).map_err(|source| Error::Bind {
            addr: Box::new(at.clone()),
            source,
        })?;
        socket.listen(backlog).map_err(fail("listen"))?;
        warn_if_backlog_capped(options.backlog);
        Ok(Listener::Tcp(mio::net::TcpListener::from_std(
            socket.into(),
        )))
    }

    /// Binds a Unix domain stream listener at `path`.
    ///
    /// A socket file left at the path by a process that is gone (nothing
    /// accepts on it: a connect is refused) is removed and the bind
    /// retried, as most servers do. A live one (a connect succeeds) is
    /// `AddrInUse`; a file that is not a socket is never removed. The file
    /// this listener creates is removed when it closes.
    pub(crate) fn bind_unix(addr: &UnixAddr, options: &ListenerOptions) -> Result<Listener, Error> {
        let at = Addr::Unix(addr.clone());
        let backlog = options.checked_backlog(&at)?;
        let fail = |op| {
            let at = at.clone();
            move |source| Error::Listener {
                op,
                addr: Box::new(at),
                source,
            }
        };
        let path = addr.as_pathname().ok_or_else(|| {
            fail("bind")(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a Unix listener needs a path",
            ))
        })?;
        let target = SockAddr::unix(path).map_err(fail("a Unix socket address"))?;
        let socket = Socket::new(Domain::UNIX, Type::STREAM, None).map_err(fail("socket"))?;
        socket
            .set_nonblocking(true)
            .map_err(fail("fcntl(O_NONBLOCK)"))?;
        if let Err(source) = socket.bind(&target) {
            let stale = source.kind() == io::ErrorKind::AddrInUse && remove_if_stale(path);
            if !stale {
                return Err(Error::Bind {
                    addr: Box::new(at),
                    source,
                });
            }
            socket.bind(&target).map_err(|source| Error::Bind {
                addr: Box::new(at.clone()),
                source,
            })?;
        }
        socket.listen(backlog).map_err(fail("listen"))?;
        warn_if_backlog_capped(options.backlog);
        let owned_file = fs::metadata(path)
            .ok()
            .map(|meta| (path.to_path_buf(), meta.dev(), meta.ino()));
        let listener = std::os::unix::net::UnixListener::from(OwnedFd::from(socket));
        Ok(Listener::Unix {
            listener: mio::net::UnixListener::from_std(listener),
            owned_file,
        })
    }

    /// A TCP listener the program bound itself; made non-blocking here.
    pub(crate) fn adopt_tcp(listener: std::net::TcpListener) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener::Tcp(mio::net::TcpListener::from_std(listener)))
    }

    /// A Unix listener the program bound itself; made non-blocking here.
    /// Its socket file is the program's: it is left in place.
    pub(crate) fn adopt_unix(listener: std::os::unix::net::UnixListener) -> io::Result<Listener> {
        listener.set_nonblocking(true)?;
        Ok(Listener::Unix {
            listener: mio::net::UnixListener::from_std(listener),
            owned_file: None,
        })
    }

    /// The address it listens on (with port 0, the port the kernel chose).
    pub(crate) fn local_addr(&self) -> io::Result<Addr> {
        match self {
            Listener::Tcp(listener) => listener.local_addr().map(Addr::Tcp),
            Listener::Unix { listener, .. } => listener.local_addr().map(Addr::Unix),
        }
    }

    /// One `accept4` (non-blocking, close-on-exec): the new connection's
    /// socket and its peer's address.
    #[inline]
    pub(crate) fn accept(&self) -> io::Result<(Socket, Addr)> {
        match self {
            Listener::Tcp(listener) => {
                let (stream, peer) = listener.accept()?;
                Ok((Socket::from(OwnedFd::from(stream)), Addr::Tcp(peer)))
            }
            Listener::Unix { listener, .. } => {
                let (stream, peer) = listener.accept()?;
                Ok((Socket::from(OwnedFd::from(stream)), Addr::Unix(peer)))
            }
        }
    }

    pub(crate) fn is_tcp(&self) -> bool {
        matches!(self, Listener::Tcp(_))
    }

    pub(crate) fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        match self {
            Listener::Tcp(listener) => listener.register(registry, token, Interest::READABLE),
            Listener::Unix { listener, .. } => {
                listener.register(registry, token, Interest::READABLE)
            }
        }
    }

    /// Takes it out of the poller and closes it; a socket file this
    /// listener created is removed if it is still the one it created.
    pub(crate) fn close(mut self, registry: &Registry) {
        let deregistered = match &mut self {
            Listener::Tcp(listener) => listener.deregister(registry),
            Listener::Unix { listener, .. } => listener.deregister(registry),
        };
        if let Err(e) = deregistered {
            log::debug!("epoll_ctl(DEL) for a listener: {e}");
        }
        if let Listener::Unix {
            owned_file: Some((path, dev, ino)),
            ..
        } = &self
        {
            let same = fs::metadata(path).is_ok_and(|m| m.dev() == *dev && m.ino() == *ino);
            if same {
                if let Err(e) = fs::remove_file(path) {
                    log::debug!("removing {}: {e}", path.display());
                }
            }
        }
    }
}

/// Whether the socket file at `path` was left by a server that is gone,
/// and has been removed: it is a socket, and connecting to it is refused.
fn remove_if_stale(path: &std::path::Path) -> bool {
    let is_socket = fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket());
    if !is_socket {
        return false;
    }
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None).and_then(|probe| {
        // Non-blocking, so a live server with a full backlog cannot make
        // this wait: that is `EAGAIN`, which counts as live.
        probe.set_nonblocking(true)?;
        probe.connect(&SockAddr::unix(path)?)
    });
    match probe {
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            log::info!("removing stale socket file {}", path.display());
            fs::remove_file(path).is_ok()
        }
        _ => false,
    }
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
