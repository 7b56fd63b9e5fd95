//! Limits the OS imposes that shape our defaults: the open-file limit and
//! the kernel's cap on listen backlogs.
//!
//! Both are read from `/proc` rather than through `getrlimit(2)` so the crate
//! needs no `unsafe` (libc's `getrlimit` takes a pointer); elsewhere than
//! Linux they are unknown and the callers fall back to conservative values.

use std::fs;

/// Descriptors kept back from `max_connections` for everything else the
/// process opens: stdio, the poller, the listener, log files, a few
/// outbound sockets.
pub(crate) const FD_RESERVE: u64 = 32;

/// The soft `RLIMIT_NOFILE` of this process, if it can be read.
pub(crate) fn open_file_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    parse_open_file_limit(&limits)
}

fn parse_open_file_limit(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line["Max open files".len()..].split_whitespace().next()?;
    match soft {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    }
}

/// `net.core.somaxconn`: the kernel silently caps every listen backlog to it.
pub(crate) fn somaxconn() -> Option<u32> {
    fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_soft_limit_column() {
        let text = "Limit                     Soft Limit           Hard Limit           Units\n\
                    Max processes             95528                95528                processes\n\
                    Max open files            1024                 524288               files\n";
        assert_eq!(parse_open_file_limit(text), Some(1024));
        let unlimited =
            "Max open files            unlimited            unlimited            files\n";
        assert_eq!(parse_open_file_limit(unlimited), Some(u64::MAX));
        assert_eq!(parse_open_file_limit("nothing here"), None);
    }
}
