//! The commands: each reads its arguments, acts on the store and appends
//! its reply, worded as Redis 7 words it (`t_string.c`, `expire.c`,
//! `server.c`).

use crate::reply;
use crate::resp::{Args, parse_i64};
use crate::store::{Condition, ExpireIf, Expiry, Store, Ttl};
use tcp_reactor::Stats;

/// What the connection does after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Go on with the next request.
    Continue,
    /// Close once the replies are flushed (`QUIT`).
    Close,
    /// Cut the connection: its reply grew past [`MAX_REPLY`].
    Abort,
}

/// The largest reply one request may build (an MGET of a large value
/// many times over); past it the connection is cut, as the reactor cuts
/// one whose queued output passes `Config::max_output` (also 16 MiB).
pub const MAX_REPLY: usize = 16 * 1024 * 1024;

/// The commands there are, with Redis's names and arities (a positive
/// arity is exact, a negative one a minimum; the name counts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cmd {
    Ping,
    Echo,
    Set,
    Get,
    Del,
    Exists,
    Incr,
    Decr,
    IncrBy,
    DecrBy,
    MGet,
    MSet,
    Expire,
    PExpire,
    Ttl,
    PTtl,
    Config,
    Command,
    Select,
    DbSize,
    Info,
    Quit,
}

/// Every command, for `COMMAND COUNT`.
const COMMANDS: usize = 22;

impl Cmd {
    /// The command named `name`, in any case. Matched on the length first,
    /// then compared: no allocation, no hashing.
    fn lookup(name: &[u8]) -> Option<Cmd> {
        let is = |word: &[u8]| name.eq_ignore_ascii_case(word);
        let command = match name.len() {
            3 if is(b"GET") => Cmd::Get,
            3 if is(b"SET") => Cmd::Set,
            3 if is(b"DEL") => Cmd::Del,
            3 if is(b"TTL") => Cmd::Ttl,
            4 if is(b"PING") => Cmd::Ping,
            4 if is(b"ECHO") => Cmd::Echo,
            4 if is(b"INCR") => Cmd::Incr,
            4 if is(b"DECR") => Cmd::Decr,
            4 if is(b"MGET") => Cmd::MGet,
            4 if is(b"MSET") => Cmd::MSet,
            4 if is(b"PTTL") => Cmd::PTtl,
            4 if is(b"QUIT") => Cmd::Quit,
            4 if is(b"INFO") => Cmd::Info,
            6 if is(b"EXISTS") => Cmd::Exists,
            6 if is(b"INCRBY") => Cmd::IncrBy,
            6 if is(b"DECRBY") => Cmd::DecrBy,
            6 if is(b"EXPIRE") => Cmd::Expire,
            6 if is(b"CONFIG") => Cmd::Config,
            6 if is(b"SELECT") => Cmd::Select,
            6 if is(b"DBSIZE") => Cmd::DbSize,
            7 if is(b"PEXPIRE") => Cmd::PExpire,
            7 if is(b"COMMAND") => Cmd::Command,
            _ => return None,
        };
        Some(command)
    }

    /// Redis's name (lower case, as its errors quote it) and arity.
    fn spec(self) -> (&'static str, isize) {
        match self {
            Cmd::Ping => ("ping", -1),
            Cmd::Echo => ("echo", 2),
            Cmd::Set => ("set", -3),
            Cmd::Get => ("get", 2),
            Cmd::Del => ("del", -2),
            Cmd::Exists => ("exists", -2),
            Cmd::Incr => ("incr", 2),
            Cmd::Decr => ("decr", 2),
            Cmd::IncrBy => ("incrby", 3),
            Cmd::DecrBy => ("decrby", 3),
            Cmd::MGet => ("mget", -2),
            Cmd::MSet => ("mset", -3),
            Cmd::Expire => ("expire", -3),
            Cmd::PExpire => ("pexpire", -3),
            Cmd::Ttl => ("ttl", 2),
            Cmd::PTtl => ("pttl", 2),
            Cmd::Config => ("config", -2),
            Cmd::Command => ("command", -1),
            Cmd::Select => ("select", 2),
            Cmd::DbSize => ("dbsize", 1),
            Cmd::Info => ("info", -1),
            Cmd::Quit => ("quit", -1),
        }
    }
}

/// Runs the request `args` (`args.get(0)` is the command name), appending
/// its reply to `out`. `stats` gives the reactor's counters, for `INFO`.
pub fn execute(
    store: &mut Store,
    args: Args<'_>,
    out: &mut Vec<u8>,
    stats: impl FnOnce() -> Stats,
) -> After {
    let Some(command) = Cmd::lookup(args.get(0)) else {
        unknown_command(args, out);
        return After::Continue;
    };
    let (name, arity) = command.spec();
    let argc = isize::try_from(args.len()).unwrap_or(isize::MAX);
    if (arity > 0 && argc != arity) || argc < -arity {
        return wrong_arity(name, out);
    }
    match command {
        Cmd::Ping => ping(args, out),
        Cmd::Echo => reply::bulk(out, args.get(1)),
        Cmd::Set => set(store, args, out),
        Cmd::Get => match store.get(args.get(1)) {
            Some(entry) => reply::bulk(out, &entry.value),
            None => reply::nil(out),
        },
        Cmd::Del => {
            let removed = args.from(1).filter(|key| store.remove(key)).count();
            reply::integer(out, count(removed));
        }
        Cmd::Exists => {
            let found = args.from(1).filter(|key| store.get(key).is_some()).count();
            reply::integer(out, count(found));
        }
        Cmd::Incr => incr_by(store, args.get(1), 1, out),
        Cmd::Decr => incr_by(store, args.get(1), -1, out),
        Cmd::IncrBy | Cmd::DecrBy => match parse_i64(args.get(2)) {
            None => reply::error(out, NOT_AN_INTEGER),
            Some(by) if command == Cmd::IncrBy => incr_by(store, args.get(1), by, out),
            Some(by) => match by.checked_neg() {
                Some(by) => incr_by(store, args.get(1), by, out),
                None => reply::error(out, b"ERR decrement would overflow"),
            },
        },
        Cmd::MGet => {
            reply::array(out, args.len() - 1);
            for key in args.from(1) {
                match store.get(key) {
                    Some(entry) => reply::bulk(out, &entry.value),
                    None => reply::nil(out),
                }
                if out.len() > MAX_REPLY {
                    return After::Abort;
                }
            }
        }
        Cmd::MSet => {
            if args.len() % 2 == 0 {
                return wrong_arity(name, out);
            }
            for i in (1..args.len()).step_by(2) {
                store.set(
                    args.get(i),
                    args.get(i + 1),
                    Condition::Always,
                    Expiry::Clear,
                );
            }
            reply::ok(out);
        }
        Cmd::Expire => expire(store, args, 1000, name, out),
        Cmd::PExpire => expire(store, args, 1, name, out),
        Cmd::Ttl | Cmd::PTtl => match store.ttl(args.get(1)) {
            Ttl::Missing => reply::integer(out, -2),
            Ttl::Persistent => reply::integer(out, -1),
            // TTL rounds to the nearest second, as Redis does.
            Ttl::Ms(ms) if command == Cmd::Ttl => reply::integer(out, clamp((ms + 500) / 1000)),
            Ttl::Ms(ms) => reply::integer(out, clamp(ms)),
        },
        Cmd::Config => config(args, out),
        Cmd::Command => command_info(args, out),
        Cmd::Select => match parse_i64(args.get(1)) {
            Some(0) => reply::ok(out),
            Some(_) => reply::error(out, b"ERR DB index is out of range"),
            None => reply::error(out, NOT_AN_INTEGER),
        },
        // As Redis, keys that expired but were not removed yet count.
        Cmd::DbSize => reply::integer(out, count(store.len())),
        Cmd::Info => info(store, &stats(), out),
        Cmd::Quit => {
            reply::ok(out);
            return After::Close;
        }
    }
    After::Continue
}

/// Redis's reply to an argument that should be an integer.
const NOT_AN_INTEGER: &[u8] = b"ERR value is not an integer or out of range";

/// Redis's reply to a bad option or option combination.
const SYNTAX_ERROR: &[u8] = b"ERR syntax error";

/// A count as an integer reply.
fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Milliseconds or seconds as an integer reply.
fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `-ERR unknown command 'NAME', with args beginning with: 'A' 'B' `,
/// cut where Redis cuts it (128 bytes of name, about 128 of arguments).
fn unknown_command(args: Args<'_>, out: &mut Vec<u8>) {
    let mut message = Vec::with_capacity(200);
    message.extend_from_slice(b"ERR unknown command '");
    let name = args.get(0);
    message.extend_from_slice(&name[..name.len().min(128)]);
    message.extend_from_slice(b"', with args beginning with: ");
    let quoted_from = message.len();
    for arg in args.from(1) {
        let written = message.len() - quoted_from;
        if written >= 128 {
            break;
        }
        message.push(b'\'');
        message.extend_from_slice(&arg[..arg.len().min(128 - written)]);
        message.extend_from_slice(b"' ");
    }
    reply::error(out, &message);
}

/// `-ERR wrong number of arguments for 'NAME' command`.
fn wrong_arity(name: &str, out: &mut Vec<u8>) -> After {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(b"ERR wrong number of arguments for '");
    message.extend_from_slice(name.as_bytes());
    message.extend_from_slice(b"' command");
    reply::error(out, &message);
    After::Continue
}

/// `-ERR invalid expire time in 'NAME' command`.
fn invalid_expire_time(name: &str, out: &mut Vec<u8>) {
    let mut message = Vec::with_capacity(64);
    message.extend_from_slice(b"ERR invalid expire time in '");
    message.extend_from_slice(name.as_bytes());
    message.extend_from_slice(b"' command");
    reply::error(out, &message);
}

/// `PING [message]`.
fn ping(args: Args<'_>, out: &mut Vec<u8>) {
    match args.len() {
        1 => reply::simple(out, b"PONG"),
        2 => reply::bulk(out, args.get(1)),
        _ => {
            wrong_arity("ping", out);
        }
    }
}

/// `SET key value [NX | XX] [GET] [EX seconds | PX milliseconds | KEEPTTL]`.
fn set(store: &mut Store, args: Args<'_>, out: &mut Vec<u8>) {
    let mut condition = Condition::Always;
    let mut expiry = Expiry::Clear;
    let mut expiry_given = false;
    let mut get = false;
    let mut i = 3;
    while i < args.len() {
        let option = args.get(i);
        let has_value = i + 1 < args.len();
        if option.eq_ignore_ascii_case(b"NX") && condition != Condition::Present {
            condition = Condition::Absent;
        } else if option.eq_ignore_ascii_case(b"XX") && condition != Condition::Absent {
            condition = Condition::Present;
        } else if option.eq_ignore_ascii_case(b"GET") {
            get = true;
        } else if option.eq_ignore_ascii_case(b"KEEPTTL") && !expiry_given {
            expiry = Expiry::Keep;
            expiry_given = true;
        } else if (option.eq_ignore_ascii_case(b"EX") || option.eq_ignore_ascii_case(b"PX"))
            && !expiry_given
            && has_value
        {
            let unit = if option.eq_ignore_ascii_case(b"EX") {
                1000
            } else {
                1
            };
            let Some(amount) = parse_i64(args.get(i + 1)) else {
                return reply::error(out, NOT_AN_INTEGER);
            };
            let Some(ms) = to_ms(amount, unit).and_then(|ms| u64::try_from(ms).ok()) else {
                return invalid_expire_time("set", out);
            };
            if ms == 0 {
                return invalid_expire_time("set", out);
            }
            expiry = Expiry::In(ms);
            expiry_given = true;
            i += 1;
        } else {
            return reply::error(out, SYNTAX_ERROR);
        }
        i += 1;
    }
    let key = args.get(1);
    if get {
        // The old value is the reply, whether or not the write happens.
        match store.get(key) {
            Some(entry) => reply::bulk(out, &entry.value),
            None => reply::nil(out),
        }
        store.set(key, args.get(2), condition, expiry);
    } else if store.set(key, args.get(2), condition, expiry) {
        reply::ok(out);
    } else {
        reply::nil(out);
    }
}

/// `amount` seconds (`unit` 1000) or milliseconds (`unit` 1) in
/// milliseconds; `None` on overflow.
fn to_ms(amount: i64, unit: i64) -> Option<i64> {
    amount.checked_mul(unit)
}

/// `INCR`, `DECR`, `INCRBY`, `DECRBY`: adds `by` to the integer at `key`
/// (0 if missing), keeping its expiry.
fn incr_by(store: &mut Store, key: &[u8], by: i64, out: &mut Vec<u8>) {
    let (entry, is_new) = store.get_or_insert(key);
    let current = if is_new {
        0
    } else {
        match parse_i64(&entry.value) {
            Some(n) => n,
            None => return reply::error(out, NOT_AN_INTEGER),
        }
    };
    let Some(next) = current.checked_add(by) else {
        return reply::error(out, b"ERR increment or decrement would overflow");
    };
    entry.value.clear();
    reply::push_decimal(&mut entry.value, next);
    reply::integer(out, next);
}

/// `EXPIRE key seconds [NX | XX | GT | LT]` (`unit` 1000) and `PEXPIRE`
/// (`unit` 1).
fn expire(store: &mut Store, args: Args<'_>, unit: i64, name: &str, out: &mut Vec<u8>) {
    let mut when = ExpireIf::default();
    for option in args.from(3) {
        let flag = if option.eq_ignore_ascii_case(b"NX") {
            &mut when.nx
        } else if option.eq_ignore_ascii_case(b"XX") {
            &mut when.xx
        } else if option.eq_ignore_ascii_case(b"GT") {
            &mut when.gt
        } else if option.eq_ignore_ascii_case(b"LT") {
            &mut when.lt
        } else {
            let mut message = b"ERR Unsupported option ".to_vec();
            message.extend_from_slice(option);
            return reply::error(out, &message);
        };
        *flag = true;
    }
    if when.nx && (when.xx || when.gt || when.lt) {
        return reply::error(
            out,
            b"ERR NX and XX, GT or LT options at the same time are not compatible",
        );
    }
    if when.gt && when.lt {
        return reply::error(
            out,
            b"ERR GT and LT options at the same time are not compatible",
        );
    }
    let Some(amount) = parse_i64(args.get(2)) else {
        return reply::error(out, NOT_AN_INTEGER);
    };
    let Some(ms) = to_ms(amount, unit) else {
        return invalid_expire_time(name, out);
    };
    // A deadline already past deletes the key (still `1`).
    let ms = u64::try_from(ms).ok().filter(|&ms| ms > 0);
    let done = store.expire(args.get(1), ms, when);
    reply::integer(out, i64::from(done));
}

/// `CONFIG GET parameter...`: what `redis-benchmark` asks at start
/// (`save` and `appendonly`), answered as a Redis that does neither
/// answers; other parameters are unknown (no pair, as Redis does for a
/// name it does not have). `*` lists both.
fn config(args: Args<'_>, out: &mut Vec<u8>) {
    const PARAMETERS: [(&[u8], &[u8]); 2] = [(b"save", b""), (b"appendonly", b"no")];
    let sub = args.get(1);
    if !sub.eq_ignore_ascii_case(b"GET") {
        let mut message = b"ERR unknown subcommand '".to_vec();
        message.extend_from_slice(&sub[..sub.len().min(128)]);
        message.extend_from_slice(b"'. Try CONFIG HELP.");
        return reply::error(out, &message);
    }
    if args.len() < 3 {
        wrong_arity("config|get", out);
        return;
    }
    let wanted = |name: &[u8]| {
        args.from(2)
            .any(|pattern| pattern == b"*" || pattern.eq_ignore_ascii_case(name))
    };
    let found = PARAMETERS.iter().filter(|(name, _)| wanted(name)).count();
    reply::array(out, 2 * found);
    for (name, value) in PARAMETERS.iter().filter(|(name, _)| wanted(name)) {
        reply::bulk(out, name);
        reply::bulk(out, value);
    }
}

/// `COMMAND`, `COMMAND DOCS`, `COMMAND COUNT`: what `redis-cli` asks on
/// start, for its help and hints. Answered with no documentation (an
/// empty array), which `redis-cli` takes as "no hints".
fn command_info(args: Args<'_>, out: &mut Vec<u8>) {
    if args.len() == 1 {
        return reply::array(out, 0);
    }
    let sub = args.get(1);
    if sub.eq_ignore_ascii_case(b"DOCS") || sub.eq_ignore_ascii_case(b"INFO") {
        reply::array(out, 0);
    } else if sub.eq_ignore_ascii_case(b"COUNT") {
        reply::integer(out, count(COMMANDS));
    } else {
        let mut message = b"ERR unknown subcommand '".to_vec();
        message.extend_from_slice(&sub[..sub.len().min(128)]);
        message.extend_from_slice(b"'. Try COMMAND HELP.");
        reply::error(out, &message);
    }
}

/// `INFO [section]`: a few of Redis's fields (`connected_clients`,
/// `total_connections_received`, the byte counts, `db0`), and the
/// reactor's own output figures (`kv_peak_queued_output`,
/// `kv_backpressure_pauses`): what a test or a person needs to see that
/// a client that does not read is held within bounds. The section is
/// ignored: all of it is returned.
fn info(store: &Store, stats: &Stats, out: &mut Vec<u8>) {
    let text = format!(
        "# Server\r\nkv_version:{version}\r\n\
         # Clients\r\nconnected_clients:{clients}\r\n\
         # Stats\r\ntotal_connections_received:{accepted}\r\n\
         total_net_input_bytes:{bytes_in}\r\ntotal_net_output_bytes:{bytes_out}\r\n\
         kv_peak_queued_output:{peak}\r\nkv_backpressure_pauses:{pauses}\r\n\
         kv_limit_closes:{limits}\r\n\
         # Keyspace\r\ndb0:keys={keys},expires={expires}\r\n",
        version = env!("CARGO_PKG_VERSION"),
        clients = stats.active,
        accepted = stats.accepted,
        bytes_in = stats.bytes_in,
        bytes_out = stats.bytes_out,
        peak = stats.peak_queued_output,
        pauses = stats.backpressure_pauses,
        limits = stats.limit_closes,
        keys = store.len(),
        expires = store.volatile_keys(),
    );
    reply::bulk(out, text.as_bytes());
}
