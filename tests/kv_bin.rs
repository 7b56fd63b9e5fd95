//! The `kv` example as a program, through a small RESP client written
//! here (no Redis tool is needed): every command with its errors, expiry,
//! a pipeline of 10,000 requests, requests split at every byte, protocol
//! errors (answered, then closed, the other clients unaffected), inline
//! commands, and a client that pipelines large replies without reading
//! (held within bounds, then served in full).
//!
//! Each test starts its own server on port 0. Expiry is waited for by
//! polling under a deadline, never by sleeping a fixed time; TTL bounds
//! are asserted loosely.

mod common;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::DEADLINE;

/// The example's path, built once per test binary.
fn kv_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| common::example::build("kv"))
}

/// A running `kv`, killed and reaped when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts `kv --addr 127.0.0.1:0` and reads its address from the first
    /// line, which must be `listening on HOST:PORT`.
    fn start() -> Server {
        let mut child = Command::new(kv_binary())
            .args(["--addr", "127.0.0.1:0"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kv");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = send.send(line);
        });
        let line = lines
            .recv_timeout(DEADLINE)
            .expect("a first line within the deadline");
        let line = line.trim_end();
        let addr = line
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("first line {line:?} is not 'listening on HOST:PORT'"));
        assert_ne!(addr.port(), 0);
        Server { child, addr }
    }

    fn client(&self) -> Client {
        Client::connect(self.addr)
    }

    /// The server's resident memory, from `/proc`.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("/proc/PID/status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("a VmRSS line")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A reply, as RESP2 says it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
}

use Reply::{Array, Bulk, Error, Int, Nil, Simple};

fn bulk(text: &str) -> Reply {
    Bulk(text.as_bytes().to_vec())
}

fn ok() -> Reply {
    Simple("OK".into())
}

fn error(text: &str) -> Reply {
    Error(text.into())
}

/// A multibulk request.
fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `encode` of words.
fn request(words: &[&str]) -> Vec<u8> {
    let args: Vec<&[u8]> = words.iter().map(|w| w.as_bytes()).collect();
    encode(&args)
}

/// A RESP client with a read and write timeout of [`DEADLINE`].
struct Client {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        let stream = common::connect(addr);
        stream.set_nodelay(true).expect("nodelay");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client {
            writer: stream,
            reader,
        }
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).expect("write a request");
    }

    /// Sends `words` as a multibulk and reads the reply.
    fn call(&mut self, words: &[&str]) -> Reply {
        self.send_raw(&request(words));
        self.reply()
    }

    /// Sends raw `args` as a multibulk and reads the reply.
    fn call_bytes(&mut self, args: &[&[u8]]) -> Reply {
        self.send_raw(&encode(args));
        self.reply()
    }

    fn line(&mut self) -> Vec<u8> {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .expect("read a reply line");
        assert!(
            line.ends_with(b"\r\n"),
            "a reply line ends with CRLF: {:?}",
            String::from_utf8_lossy(&line)
        );
        line.truncate(line.len() - 2);
        line
    }

    fn reply(&mut self) -> Reply {
        let line = self.line();
        let text = String::from_utf8_lossy(&line[1..]).into_owned();
        match line[0] {
            b'+' => Simple(text),
            b'-' => Error(text),
            b':' => Int(text.parse().expect("an integer reply")),
            b'$' if text == "-1" => Nil,
            b'$' => {
                let len: usize = text.parse().expect("a bulk length");
                let mut bytes = vec![0; len + 2];
                self.reader.read_exact(&mut bytes).expect("a bulk");
                assert_eq!(&bytes[len..], b"\r\n");
                bytes.truncate(len);
                Bulk(bytes)
            }
            b'*' => {
                let n: usize = text.parse().expect("an array length");
                Array((0..n).map(|_| self.reply()).collect())
            }
            other => panic!("not a RESP reply: {other:?} {text:?}"),
        }
    }

    /// Reads until the server closes; returns what came before.
    fn rest_until_closed(&mut self) -> Vec<u8> {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => rest,
            Err(e) => panic!("expected a clean close, got {e}"),
        }
    }

    /// What `INFO` says.
    fn info_text(&mut self) -> String {
        let Bulk(text) = self.call(&["INFO"]) else {
            panic!("INFO is a bulk string")
        };
        String::from_utf8(text).expect("INFO is text")
    }

    /// A numeric field of `INFO`.
    fn info_field(&mut self, name: &str) -> u64 {
        let text = self.info_text();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no field {name} in INFO:\n{text}"))
    }
}

/// Polls `condition` every millisecond until it holds, failing after
/// [`DEADLINE`].
#[track_caller]
fn poll_until(what: &str, mut condition: impl FnMut() -> bool) {
    common::wait_until(what, &mut condition);
}

#[test]
fn ping_echo_and_errors_worded_as_redis() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(c.call(&["PING"]), Simple("PONG".into()));
    assert_eq!(c.call(&["ping", "hi"]), bulk("hi"));
    assert_eq!(
        c.call(&["PING", "a", "b"]),
        error("ERR wrong number of arguments for 'ping' command")
    );
    assert_eq!(c.call(&["ECHO", "hello world"]), bulk("hello world"));
    assert_eq!(
        c.call(&["echo"]),
        error("ERR wrong number of arguments for 'echo' command")
    );
    assert_eq!(
        c.call(&["foo", "a", "b"]),
        error("ERR unknown command 'foo', with args beginning with: 'a' 'b' ")
    );
    assert_eq!(
        c.call(&["FOO"]),
        error("ERR unknown command 'FOO', with args beginning with: ")
    );
    // Newlines in what is quoted back become spaces: one line per reply.
    assert_eq!(
        c.call(&["x\r\ny", "a\nb"]),
        error("ERR unknown command 'x  y', with args beginning with: 'a b' ")
    );
    assert_eq!(
        c.call(&["GET"]),
        error("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(
        c.call(&["get", "a", "b"]),
        error("ERR wrong number of arguments for 'get' command")
    );
    assert_eq!(c.call(&["SELECT", "0"]), ok());
    assert_eq!(
        c.call(&["SELECT", "1"]),
        error("ERR DB index is out of range")
    );
    // Still serving after all those errors.
    assert_eq!(c.call(&["PING"]), Simple("PONG".into()));
}

#[test]
fn set_get_del_exists_mset_mget() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(c.call(&["GET", "k"]), Nil);
    assert_eq!(c.call(&["SET", "k", "v1"]), ok());
    assert_eq!(c.call(&["GET", "k"]), bulk("v1"));
    let binary: &[u8] = b"\x00\xff\r\n$-1\r\n";
    assert_eq!(c.call_bytes(&[b"SET", b"bin", binary]), ok());
    assert_eq!(c.call(&["GET", "bin"]), Bulk(binary.to_vec()));
    assert_eq!(c.call(&["SET", "empty", ""]), ok());
    assert_eq!(c.call(&["GET", "empty"]), bulk(""));

    assert_eq!(c.call(&["SET", "k", "v2", "NX"]), Nil);
    assert_eq!(c.call(&["SET", "new", "n", "nx"]), ok());
    assert_eq!(c.call(&["SET", "k", "v3", "XX"]), ok());
    assert_eq!(c.call(&["SET", "missing", "m", "XX"]), Nil);
    assert_eq!(c.call(&["GET", "missing"]), Nil);
    assert_eq!(c.call(&["SET", "k", "v4", "GET"]), bulk("v3"));
    assert_eq!(c.call(&["SET", "fresh", "f", "GET"]), Nil);
    assert_eq!(
        c.call(&["SET", "k", "v", "NX", "XX"]),
        error("ERR syntax error")
    );
    assert_eq!(
        c.call(&["SET", "k", "v", "BOGUS"]),
        error("ERR syntax error")
    );
    assert_eq!(c.call(&["SET", "k", "v", "EX"]), error("ERR syntax error"));
    assert_eq!(
        c.call(&["SET", "k", "v", "EX", "1", "PX", "1"]),
        error("ERR syntax error")
    );
    assert_eq!(
        c.call(&["SET", "k", "v", "EX", "ten"]),
        error("ERR value is not an integer or out of range")
    );
    assert_eq!(
        c.call(&["SET", "k", "v", "EX", "0"]),
        error("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        c.call(&["SET", "k", "v", "PX", "-5"]),
        error("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        c.call(&["SET", "k", "v", "EX", "9223372036854775807"]),
        error("ERR invalid expire time in 'set' command")
    );
    assert_eq!(
        c.call(&["SET", "k"]),
        error("ERR wrong number of arguments for 'set' command")
    );
    assert_eq!(
        c.call(&["GET", "k"]),
        bulk("v4"),
        "failed SETs change nothing"
    );

    assert_eq!(c.call(&["EXISTS", "k", "k", "nope", "new"]), Int(3));
    assert_eq!(c.call(&["DEL", "k", "new", "nope", "k"]), Int(2));
    assert_eq!(c.call(&["EXISTS", "k"]), Int(0));
    assert_eq!(
        c.call(&["DEL"]),
        error("ERR wrong number of arguments for 'del' command")
    );

    assert_eq!(c.call(&["MSET", "a", "1", "b", "2", "a", "3"]), ok());
    assert_eq!(
        c.call(&["MGET", "a", "b", "c", "empty"]),
        Array(vec![bulk("3"), bulk("2"), Nil, bulk("")])
    );
    assert_eq!(
        c.call(&["MSET", "a", "1", "b"]),
        error("ERR wrong number of arguments for 'mset' command")
    );
    assert_eq!(
        c.call(&["MGET"]),
        error("ERR wrong number of arguments for 'mget' command")
    );
    assert_eq!(c.call(&["DBSIZE"]), Int(5)); // bin, empty, fresh, a, b
}

#[test]
fn incr_and_its_errors() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(c.call(&["INCR", "n"]), Int(1));
    assert_eq!(c.call(&["INCR", "n"]), Int(2));
    assert_eq!(c.call(&["GET", "n"]), bulk("2"));
    assert_eq!(c.call(&["DECR", "n"]), Int(1));
    assert_eq!(c.call(&["INCRBY", "n", "-11"]), Int(-10));
    assert_eq!(c.call(&["DECRBY", "n", "5"]), Int(-15));
    assert_eq!(c.call(&["GET", "n"]), bulk("-15"));
    for text in ["abc", "1.5", " 1", "01", ""] {
        assert_eq!(c.call(&["SET", "s", text]), ok());
        assert_eq!(
            c.call(&["INCR", "s"]),
            error("ERR value is not an integer or out of range"),
            "INCR of {text:?}"
        );
    }
    assert_eq!(
        c.call(&["INCRBY", "n", "x"]),
        error("ERR value is not an integer or out of range")
    );
    assert_eq!(c.call(&["SET", "max", "9223372036854775807"]), ok());
    assert_eq!(
        c.call(&["INCR", "max"]),
        error("ERR increment or decrement would overflow")
    );
    assert_eq!(
        c.call(&["DECRBY", "n", "-9223372036854775808"]),
        error("ERR decrement would overflow")
    );
    assert_eq!(c.call(&["GET", "max"]), bulk("9223372036854775807"));
    assert_eq!(
        c.call(&["INCR"]),
        error("ERR wrong number of arguments for 'incr' command")
    );
    // INCR keeps the key's expiry.
    assert_eq!(c.call(&["SET", "t", "1", "EX", "100"]), ok());
    assert_eq!(c.call(&["INCR", "t"]), Int(2));
    let Int(ttl) = c.call(&["TTL", "t"]) else {
        panic!("TTL is an integer")
    };
    assert!((1..=100).contains(&ttl), "TTL {ttl}");
}

/// Polls `GET key` until it is gone, failing after the deadline.
fn wait_expired(c: &mut Client, key: &str) {
    poll_until(&format!("{key} to expire"), || c.call(&["GET", key]) == Nil);
}

#[test]
fn keys_expire_and_ttl_says_how_long() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(c.call(&["TTL", "none"]), Int(-2));
    assert_eq!(c.call(&["PTTL", "none"]), Int(-2));
    assert_eq!(c.call(&["SET", "forever", "x"]), ok());
    assert_eq!(c.call(&["TTL", "forever"]), Int(-1));

    // PX with a small value: gone once due, for every command.
    assert_eq!(c.call(&["SET", "short", "x", "PX", "30"]), ok());
    let Int(pttl) = c.call(&["PTTL", "short"]) else {
        panic!("PTTL is an integer")
    };
    assert!(pttl <= 30, "PTTL {pttl}");
    wait_expired(&mut c, "short");
    assert_eq!(c.call(&["EXISTS", "short"]), Int(0));
    assert_eq!(c.call(&["TTL", "short"]), Int(-2));

    // EX, and TTL rounded to seconds.
    assert_eq!(c.call(&["SET", "long", "x", "EX", "100"]), ok());
    let Int(ttl) = c.call(&["TTL", "long"]) else {
        panic!("TTL is an integer")
    };
    assert!((1..=100).contains(&ttl), "TTL {ttl}");
    // A plain SET clears it, KEEPTTL keeps it.
    assert_eq!(c.call(&["SET", "long", "y", "KEEPTTL"]), ok());
    assert!(matches!(c.call(&["TTL", "long"]), Int(1..=100)));
    assert_eq!(c.call(&["SET", "long", "z"]), ok());
    assert_eq!(c.call(&["TTL", "long"]), Int(-1));

    // EXPIRE and PEXPIRE.
    assert_eq!(c.call(&["EXPIRE", "nope", "10"]), Int(0));
    assert_eq!(c.call(&["EXPIRE", "long", "50"]), Int(1));
    assert!(matches!(c.call(&["TTL", "long"]), Int(1..=50)));
    assert_eq!(c.call(&["EXPIRE", "long", "100", "NX"]), Int(0));
    assert_eq!(c.call(&["EXPIRE", "long", "100", "XX"]), Int(1));
    assert_eq!(c.call(&["EXPIRE", "long", "10", "GT"]), Int(0));
    assert_eq!(c.call(&["EXPIRE", "long", "10", "LT"]), Int(1));
    assert!(matches!(c.call(&["TTL", "long"]), Int(1..=10)));
    assert_eq!(c.call(&["EXPIRE", "forever", "10", "GT"]), Int(0));
    assert_eq!(c.call(&["EXPIRE", "forever", "10", "XX"]), Int(0));
    assert_eq!(c.call(&["TTL", "forever"]), Int(-1));
    assert_eq!(
        c.call(&["EXPIRE", "long", "10", "NX", "XX"]),
        error("ERR NX and XX, GT or LT options at the same time are not compatible")
    );
    assert_eq!(
        c.call(&["EXPIRE", "long", "10", "GT", "LT"]),
        error("ERR GT and LT options at the same time are not compatible")
    );
    assert_eq!(
        c.call(&["EXPIRE", "long", "10", "SOON"]),
        error("ERR Unsupported option SOON")
    );
    assert_eq!(
        c.call(&["EXPIRE", "long", "ten"]),
        error("ERR value is not an integer or out of range")
    );
    assert_eq!(
        c.call(&["EXPIRE", "long", "9223372036854775807"]),
        error("ERR invalid expire time in 'expire' command")
    );
    assert_eq!(
        c.call(&["EXPIRE", "long"]),
        error("ERR wrong number of arguments for 'expire' command")
    );
    assert_eq!(c.call(&["PEXPIRE", "long", "20"]), Int(1));
    wait_expired(&mut c, "long");
    // A deadline in the past deletes the key at once.
    assert_eq!(c.call(&["SET", "gone", "x"]), ok());
    assert_eq!(c.call(&["EXPIRE", "gone", "-1"]), Int(1));
    assert_eq!(c.call(&["EXISTS", "gone"]), Int(0));
    // An expired key is a new key for SET NX and INCR.
    assert_eq!(c.call(&["SET", "again", "5", "PX", "10"]), ok());
    wait_expired(&mut c, "again");
    assert_eq!(c.call(&["SET", "again", "6", "PX", "10"]), ok());
    poll_until("again to expire", || c.call(&["EXISTS", "again"]) == Int(0));
    assert_eq!(c.call(&["INCR", "again"]), Int(1));
    assert_eq!(c.call(&["TTL", "again"]), Int(-1));
}

#[test]
fn the_sweep_removes_expired_keys_nobody_reads() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(c.call(&["SET", "stays", "x"]), ok());
    for i in 0..500 {
        assert_eq!(c.call(&["SET", &format!("k{i}"), "v", "PX", "20"]), ok());
    }
    assert!(matches!(c.call(&["DBSIZE"]), Int(1..=501)));
    // DBSIZE counts keys not removed yet, as Redis's does; none of these
    // is read again, so only the sweep can bring it to 1.
    poll_until("the sweep to remove 500 expired keys", || {
        c.call(&["DBSIZE"]) == Int(1)
    });
    assert!(
        c.info_text().contains("\r\ndb0:keys=1,expires=0\r\n"),
        "INFO's keyspace line"
    );
}

#[test]
fn config_get_command_info_and_quit() {
    let server = Server::start();
    let mut c = server.client();
    assert_eq!(
        c.call(&["CONFIG", "GET", "save"]),
        Array(vec![bulk("save"), bulk("")])
    );
    assert_eq!(
        c.call(&["config", "get", "appendonly"]),
        Array(vec![bulk("appendonly"), bulk("no")])
    );
    assert_eq!(c.call(&["CONFIG", "GET", "maxmemory"]), Array(vec![]));
    assert_eq!(
        c.call(&["CONFIG", "SET", "save", ""]),
        error("ERR unknown subcommand 'SET'. Try CONFIG HELP.")
    );
    assert_eq!(
        c.call(&["CONFIG", "GET"]),
        error("ERR wrong number of arguments for 'config|get' command")
    );
    assert_eq!(c.call(&["COMMAND", "DOCS"]), Array(vec![]));
    assert_eq!(c.call(&["COMMAND"]), Array(vec![]));
    assert!(matches!(c.call(&["COMMAND", "COUNT"]), Int(1..)));
    assert_eq!(c.info_field("connected_clients"), 1);
    // QUIT: OK, then the server closes; what was pipelined after it is
    // not answered.
    let mut pipeline = request(&["QUIT"]);
    pipeline.extend_from_slice(&request(&["PING"]));
    c.send_raw(&pipeline);
    assert_eq!(c.reply(), ok());
    assert_eq!(c.rest_until_closed(), b"");
}

#[test]
fn inline_commands_as_typed_into_nc() {
    let server = Server::start();
    let mut c = server.client();
    c.send_raw(b"PING\r\nSET greeting \"hello world\"\r\nGET greeting\n\r\n\n   \r\n");
    assert_eq!(c.reply(), Simple("PONG".into()));
    assert_eq!(c.reply(), ok());
    assert_eq!(c.reply(), bulk("hello world"));
    c.send_raw(b"ECHO 'it\\'s'  \r\n  ECHO \"tab\\there\\x21\"\r\nincr  n\r\n");
    assert_eq!(c.reply(), bulk("it's"));
    assert_eq!(c.reply(), bulk("tab\there!"));
    assert_eq!(c.reply(), Int(1));
    // Inline and multibulk mix on one connection.
    let mut mixed = request(&["GET", "n"]);
    mixed.extend_from_slice(b"EXISTS greeting n\r\n");
    c.send_raw(&mixed);
    assert_eq!(c.reply(), bulk("1"));
    assert_eq!(c.reply(), Int(2));
}

#[test]
fn a_pipeline_of_10000_requests_is_answered_in_order() {
    const N: usize = 10_000;
    let server = Server::start();
    let mut c = server.client();
    let mut pipeline = Vec::new();
    for i in 0..N {
        let words = match i % 3 {
            0 => vec!["SET".to_string(), format!("key:{i}"), format!("value:{i}")],
            1 => vec!["GET".to_string(), format!("key:{}", i - 1)],
            _ => vec!["INCR".to_string(), "counter".to_string()],
        };
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        pipeline.extend_from_slice(&request(&words));
    }
    // Written from another thread: the replies must be read meanwhile.
    let mut writer = c.writer.try_clone().expect("clone");
    let sender = std::thread::spawn(move || writer.write_all(&pipeline));
    for i in 0..N {
        let expected = match i % 3 {
            0 => ok(),
            1 => bulk(&format!("value:{}", i - 1)),
            _ => Int(i64::try_from(i / 3 + 1).expect("small")),
        };
        assert_eq!(c.reply(), expected, "reply {i}");
    }
    sender
        .join()
        .expect("writer")
        .expect("the pipeline written");
    assert_eq!(c.call(&["DBSIZE"]), Int(3334 + 1));
}

/// Requests of every kind, as one stream: the stream, where each answered
/// request ends in it, and the replies.
fn split_stream() -> (Vec<u8>, Vec<usize>, Vec<Reply>) {
    let pieces: Vec<(Vec<u8>, Reply)> = vec![
        (encode(&[b"SET", b"k", b"v\r\n\x00x"]), ok()),
        (b"GET k\r\n".to_vec(), Bulk(b"v\r\n\x00x".to_vec())),
        (request(&["MSET", "a", "1", "bb", "22"]), ok()),
        // An empty line and `*0` are skipped, as Redis skips them.
        (
            b"\r\n*0\r\nMGET a bb\n".to_vec(),
            Array(vec![bulk("1"), bulk("22")]),
        ),
        (request(&["INCR", "a"]), Int(2)),
        (b"ECHO \"q q\"\r\n".to_vec(), bulk("q q")),
    ];
    let mut stream = Vec::new();
    let mut ends = Vec::new();
    let mut replies = Vec::new();
    for (bytes, reply) in pieces {
        stream.extend_from_slice(&bytes);
        ends.push(stream.len());
        replies.push(reply);
    }
    (stream, ends, replies)
}

#[test]
fn requests_written_one_byte_at_a_time_are_answered() {
    let server = Server::start();
    let (stream, _, replies) = split_stream();
    let mut c = server.client();
    // TCP_NODELAY is on: each byte goes out on its own, and the server
    // sees the requests in pieces, split at (nearly) every byte.
    for byte in &stream {
        c.send_raw(std::slice::from_ref(byte));
    }
    for expected in &replies {
        assert_eq!(&c.reply(), expected);
    }
}

#[test]
fn requests_split_in_two_at_every_byte_are_answered() {
    let server = Server::start();
    let (stream, ends, replies) = split_stream();
    for split in 1..stream.len() {
        let mut c = server.client();
        c.send_raw(&stream[..split]);
        // The whole requests of the first part are answered before the
        // rest is sent: the server has read up to the split, and holds
        // the request cut there.
        let answered = ends.iter().filter(|&&end| end <= split).count();
        for expected in &replies[..answered] {
            assert_eq!(&c.reply(), expected, "split at {split}");
        }
        c.send_raw(&stream[split..]);
        for expected in &replies[answered..] {
            assert_eq!(&c.reply(), expected, "split at {split}");
        }
    }
}

#[test]
fn protocol_errors_are_answered_then_the_connection_closes_and_others_carry_on() {
    let server = Server::start();
    let mut other = server.client();
    assert_eq!(other.call(&["SET", "kept", "yes"]), ok());
    let cases: &[(&[u8], &str)] = &[
        (b"*x\r\n", "invalid multibulk length"),
        (b"*1\r\n:4\r\n", "expected '$', got ':'"),
        (b"*1\r\n$-5\r\n", "invalid bulk length"),
        (b"*2\r\n$3\r\nGET\r\n$2000000\r\n", "invalid bulk length"),
        (b"*99999999\r\n", "invalid multibulk length"),
        (b"SET k \"unclosed\r\n", "unbalanced quotes in request"),
    ];
    for (bytes, message) in cases {
        let mut c = server.client();
        // A request before the bad one is answered first.
        let mut sent = request(&["PING"]);
        sent.extend_from_slice(bytes);
        sent.extend_from_slice(&request(&["PING"])); // never answered
        c.send_raw(&sent);
        assert_eq!(c.reply(), Simple("PONG".into()));
        assert_eq!(c.reply(), Error(format!("ERR Protocol error: {message}")));
        assert_eq!(c.rest_until_closed(), b"", "closed after {message}");
        assert_eq!(other.call(&["GET", "kept"]), bulk("yes"));
    }
    // An inline line past 64 KiB without its newline.
    let mut c = server.client();
    c.send_raw(&vec![b'a'; 70 * 1024]);
    assert_eq!(
        c.reply(),
        error("ERR Protocol error: too big inline request")
    );
    assert_eq!(c.rest_until_closed(), b"");
    assert_eq!(other.call(&["PING"]), Simple("PONG".into()));
}

#[test]
fn a_request_past_the_input_limit_closes_without_a_reply() {
    let server = Server::start();
    let mut other = server.client();
    let mut c = server.client();
    // Five arguments of 1 MiB: each within the bulk limit, the request
    // past the 4 MiB a connection may hold.
    let value = vec![b'v'; 1024 * 1024];
    let mut big = Vec::new();
    big.extend_from_slice(b"*11\r\n$4\r\nMSET\r\n");
    for i in 0..5 {
        let key = format!("k{i}");
        big.extend_from_slice(&encode(&[key.as_bytes(), &value])[4..]);
    }
    let mut writer = c.writer.try_clone().expect("clone");
    // The server cuts the connection: the write may fail part-way.
    let sender = std::thread::spawn(move || {
        let _ = writer.write_all(&big);
    });
    let mut rest = Vec::new();
    match c.reader.read_to_end(&mut rest) {
        Ok(_) => assert_eq!(rest, b"", "no reply"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}"),
    }
    sender.join().expect("writer");
    assert_eq!(other.call(&["PING"]), Simple("PONG".into()));
    assert_eq!(other.call(&["EXISTS", "k0"]), Int(0));
}

#[test]
fn a_client_that_pipelines_large_replies_without_reading_is_held_and_then_served() {
    const GETS: usize = 2_000;
    const VALUE_LEN: usize = 64 * 1024;
    let server = Server::start();
    let mut watcher = server.client();
    let mut c = server.client();
    let value: Vec<u8> = (0..VALUE_LEN).map(|i| (i % 251) as u8).collect();
    assert_eq!(c.call_bytes(&[b"SET", b"big", &value]), ok());
    let before_kib = server.rss_kib();

    // 2,000 GETs at once (125 MiB of replies), none read for now.
    let pipeline = request(&["GET", "big"]).repeat(GETS);
    let mut writer = c.writer.try_clone().expect("clone");
    let sender = std::thread::spawn(move || writer.write_all(&pipeline));
    // Held: the kernel's buffers are full and replies are queued.
    poll_until("replies to back up", || {
        watcher.info_field("kv_peak_queued_output") > 16 * 1024
    });
    let held_kib = server.rss_kib();
    let out_while_held = watcher.info_field("total_net_output_bytes");
    assert!(
        out_while_held < (GETS * VALUE_LEN / 2) as u64,
        "not reading: the server cannot have sent most replies ({out_while_held} bytes out)"
    );

    // Now read: every reply arrives, whole, in order, no reset.
    for i in 0..GETS {
        match c.reply() {
            Bulk(bytes) if bytes == value => {}
            other => panic!("reply {i} is not the value: {:?}", short(&other)),
        }
    }
    sender
        .join()
        .expect("writer")
        .expect("the pipeline written");
    assert_eq!(c.call(&["PING"]), Simple("PONG".into()));

    let peak = watcher.info_field("kv_peak_queued_output");
    assert!(
        peak <= 256 * 1024,
        "queued output peaked at {peak} bytes: backpressure keeps it near the high water mark"
    );
    assert_eq!(watcher.info_field("kv_limit_closes"), 0);
    assert!(
        held_kib < before_kib + 8 * 1024,
        "memory while held: {before_kib} KiB before, {held_kib} KiB held"
    );
    let after_kib = server.rss_kib();
    assert!(
        after_kib < before_kib + 8 * 1024,
        "memory after: {before_kib} KiB before, {after_kib} KiB after"
    );
}

/// A reply, shortened for a failure message.
fn short(reply: &Reply) -> String {
    let text = format!("{reply:?}");
    text.chars().take(200).collect()
}

#[test]
fn bad_flags_exit_2_and_help_exits_0() {
    let status = |args: &[&str]| {
        let mut child = Command::new(kv_binary())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn kv");
        let until = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                return status.code();
            }
            if Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                panic!("kv {args:?} did not exit");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    assert_eq!(status(&["--bogus"]), Some(2));
    assert_eq!(status(&["--addr", "nowhere"]), Some(2));
    assert_eq!(status(&["--addr"]), Some(2));
    assert_eq!(status(&["--help"]), Some(0));
    // An address that cannot be bound: exit 1.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    assert_eq!(status(&["--addr", &addr]), Some(1));
}
