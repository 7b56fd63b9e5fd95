//! Refuses to build where mio's selector would leave this reactor's
//! connections hanging.
//!
//! Each connection is registered once, as a `SourceFd`, and the reactor
//! makes its own `recv` and `send` calls on it (`reactor/accept`). That
//! needs registrations that persist and report every new edge: epoll
//! (`EPOLLET`) and kqueue (`EV_CLEAR`). mio 1.2.5 (`src/sys/unix/mod.rs`)
//! uses epoll on Linux, Android, illumos, Redox and Emscripten, and kqueue
//! on macOS, iOS, tvOS, watchOS, visionOS, FreeBSD, NetBSD, OpenBSD and
//! DragonFly BSD. Its other back-ends do not fit:
//!
//! - poll(2) (`selector/poll.rs`; the targets below, or any Unix built with
//!   `--cfg mio_unsupported_force_poll_poll`) clears an interest once it
//!   fires, and drops the descriptor on `POLLHUP` or `POLLERR`; only mio's
//!   own I/O calls re-arm it (`reregister` when they see `WouldBlock`).
//!   Nothing re-arms a `SourceFd`: a connection would hang after its first
//!   event.
//! - Event ports (`selector/event_ports.rs`, Solaris) end an association
//!   when it fires; mio re-associates only the interests not delivered and
//!   watches the delivered ones with a zero-timeout poll(2) when a wait
//!   finds nothing. Meanwhile a wait without a timeout (an idle reactor's)
//!   becomes one of zero, so the loop spins; with a timeout, new input is
//!   seen only once it has run out.
//! - Windows (IOCP), WASI preview 1 (`poll_oneoff`) and the rest have no
//!   `SourceFd` at all.

#[cfg(mio_unsupported_force_poll_poll)]
compile_error!(
    "tcp-reactor cannot run on mio's poll(2) back-end (--cfg mio_unsupported_force_poll_poll): \
     it clears an interest once it fires and only mio's own I/O calls re-arm it, but the \
     reactor does its own I/O on SourceFd registrations, so a connection would hang after \
     its first event; it needs epoll or kqueue"
);

#[cfg(all(
    not(mio_unsupported_force_poll_poll),
    any(
        target_os = "aix",
        target_os = "espidf",
        target_os = "nuttx",
        target_os = "fuchsia",
        target_os = "haiku",
        target_os = "hermit",
        target_os = "hurd",
        target_os = "nto",
        target_os = "vita",
        target_os = "cygwin",
        all(target_os = "wasi", not(target_env = "p1")),
        target_os = "horizon",
    )
))]
compile_error!(
    "tcp-reactor does not support this target: mio drives it with poll(2), which clears an \
     interest once it fires and only mio's own I/O calls re-arm it, but the reactor does its \
     own I/O on SourceFd registrations, so a connection would hang after its first event; \
     it needs epoll or kqueue"
);

#[cfg(all(not(mio_unsupported_force_poll_poll), target_os = "solaris"))]
compile_error!(
    "tcp-reactor does not support Solaris: mio drives it with event ports, which drop an \
     interest once it fires; mio re-arms it through its own I/O calls or watches it with a \
     zero-timeout poll(2) when a wait finds nothing, so this reactor, doing its own I/O on \
     SourceFd registrations, would spin while idle and see input late; it needs epoll or \
     kqueue (illumos has epoll)"
);

#[cfg(all(
    not(mio_unsupported_force_poll_poll),
    not(any(
        // epoll
        target_os = "android",
        target_os = "emscripten",
        target_os = "illumos",
        target_os = "linux",
        target_os = "redox",
        // kqueue
        target_os = "dragonfly",
        target_os = "freebsd",
        target_os = "ios",
        target_os = "macos",
        target_os = "netbsd",
        target_os = "openbsd",
        target_os = "tvos",
        target_os = "visionos",
        target_os = "watchos",
        // refused above
        target_os = "aix",
        target_os = "espidf",
        target_os = "nuttx",
        target_os = "fuchsia",
        target_os = "haiku",
        target_os = "hermit",
        target_os = "hurd",
        target_os = "nto",
        target_os = "vita",
        target_os = "cygwin",
        all(target_os = "wasi", not(target_env = "p1")),
        target_os = "horizon",
        target_os = "solaris",
    ))
))]
compile_error!(
    "tcp-reactor does not support this target: it needs mio's epoll or kqueue back-end \
     (Linux, Android, illumos, the BSDs, Apple's systems), with persistent edge-triggered \
     registrations of raw descriptors (SourceFd); mio has neither here"
);
