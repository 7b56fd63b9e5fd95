//! The command line of the examples that take only `[--addr HOST:PORT]`
//! (and `-h`/`--help`), parsed the way `echo_reactor` parses its flags.
//!
//! An example includes it with `#[path = "common/addr_flag.rs"] mod addr_flag;`.
#![allow(dead_code)] // each example uses a part

use std::net::SocketAddr;

/// `HOST:PORT` as a socket address, or the message for a bad `--addr`.
pub fn parse_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("--addr: '{text}' is not HOST:PORT (e.g. 127.0.0.1:7890 or [::1]:0)"))
}

/// The address given with `--addr` (the last one, if repeated), or
/// `default`; `Ok(None)` for `-h`/`--help`; `Err` with the message for a
/// bad command line (the program exits 2).
pub fn addr_only(
    mut args: impl Iterator<Item = String>,
    default: SocketAddr,
) -> Result<Option<SocketAddr>, String> {
    let mut addr = default;
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "-h" | "--help" => return Ok(None),
            "--addr" => {
                let text = args.next().ok_or("--addr needs a value")?;
                addr = parse_addr(&text)?;
            }
            other => return Err(format!("unknown argument '{other}' (try --help)")),
        }
    }
    Ok(Some(addr))
}
