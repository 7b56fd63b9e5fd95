//! Socket addresses of both kinds the reactor serves: TCP and Unix.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::net::SocketAddr as UnixAddr;
use std::path::Path;

/// Where a listener listens, where a connection goes, or who is on the
/// other end: a TCP address or a Unix domain socket address.
///
/// ```
/// use tcp_reactor::Addr;
///
/// let tcp = Addr::from("127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap());
/// assert_eq!(tcp.to_string(), "127.0.0.1:7000");
/// let unix = Addr::unix("/tmp/echo.sock").unwrap();
/// assert_eq!(unix.to_string(), "/tmp/echo.sock");
/// ```
#[derive(Debug, Clone)]
pub enum Addr {
    /// An IPv4 or IPv6 address and port.
    Tcp(SocketAddr),
    /// A Unix domain socket address: a path, or unnamed (a client socket
    /// that was never bound), or on Linux an abstract name.
    Unix(UnixAddr),
}

impl Addr {
    /// The Unix domain socket address at `path`.
    ///
    /// # Errors
    ///
    /// `InvalidInput` when the path is too long for a socket address
    /// (about 107 bytes) or holds a NUL byte.
    pub fn unix(path: impl AsRef<Path>) -> io::Result<Addr> {
        UnixAddr::from_pathname(path).map(Addr::Unix)
    }

    /// The TCP address, if this is one.
    pub fn as_tcp(&self) -> Option<SocketAddr> {
        match self {
            Addr::Tcp(addr) => Some(*addr),
            Addr::Unix(_) => None,
        }
    }

    /// The path of a Unix address bound to one.
    pub fn as_path(&self) -> Option<&Path> {
        match self {
            Addr::Tcp(_) => None,
            Addr::Unix(addr) => addr.as_pathname(),
        }
    }
}

impl From<SocketAddr> for Addr {
    fn from(addr: SocketAddr) -> Addr {
        Addr::Tcp(addr)
    }
}

impl From<UnixAddr> for Addr {
    fn from(addr: UnixAddr) -> Addr {
        Addr::Unix(addr)
    }
}

/// TCP addresses compare as `SocketAddr`s; Unix ones by their path (two
/// unnamed addresses are equal).
impl PartialEq for Addr {
    fn eq(&self, other: &Addr) -> bool {
        match (self, other) {
            (Addr::Tcp(a), Addr::Tcp(b)) => a == b,
            (Addr::Unix(a), Addr::Unix(b)) => a.as_pathname() == b.as_pathname(),
            _ => false,
        }
    }
}

impl PartialEq<SocketAddr> for Addr {
    fn eq(&self, other: &SocketAddr) -> bool {
        self.as_tcp() == Some(*other)
    }
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Addr::Tcp(addr) => write!(f, "{addr}"),
            Addr::Unix(addr) => match addr.as_pathname() {
                Some(path) => write!(f, "{}", path.display()),
                None => write!(f, "(unnamed unix socket)"),
            },
        }
    }
}
