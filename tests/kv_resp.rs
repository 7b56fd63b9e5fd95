//! The `kv` example's RESP parser (`examples/kv/resp.rs`, included here),
//! without a socket: a stream of requests split at every byte boundary
//! parses to the same requests, offsets kept across calls are right,
//! protocol errors are Redis's, and inline lines are split as Redis splits
//! them.

#[allow(dead_code)] // the example uses more of it than these tests
#[path = "../examples/kv/resp.rs"]
mod resp;

use resp::{MAX_ARGS, MAX_BULK_LEN, MAX_INLINE_LEN, Parsed, Parser, ProtocolError, Resume};

/// One connection's view: the bytes the reactor keeps (unconsumed input
/// and what arrives after it), the parser and the resume offsets, as the
/// handler holds them.
struct Connection {
    parser: Parser,
    resume: Resume,
    buffered: Vec<u8>,
    requests: Vec<Vec<Vec<u8>>>,
}

impl Connection {
    fn new() -> Connection {
        Connection {
            parser: Parser::new(),
            resume: Resume::default(),
            buffered: Vec::new(),
            requests: Vec::new(),
        }
    }

    /// Bytes arrive: parse every complete request, keep the rest, as
    /// `on_data` does.
    fn receive(&mut self, bytes: &[u8]) -> Result<(), ProtocolError> {
        self.buffered.extend_from_slice(bytes);
        let mut used = 0;
        loop {
            let input = &self.buffered[used..];
            match self.parser.parse(input, &mut self.resume)? {
                Parsed::Request { len } => {
                    let args = self.parser.args(input);
                    self.requests
                        .push((0..args.len()).map(|i| args.get(i).to_vec()).collect());
                    used += len;
                }
                Parsed::Nothing { len } => used += len,
                Parsed::Incomplete => break,
            }
        }
        self.buffered.drain(..used);
        Ok(())
    }
}

fn words(request: &[&str]) -> Vec<Vec<u8>> {
    request.iter().map(|w| w.as_bytes().to_vec()).collect()
}

fn parse_all(bytes: &[u8]) -> Result<Vec<Vec<Vec<u8>>>, ProtocolError> {
    let mut connection = Connection::new();
    connection.receive(bytes)?;
    assert!(connection.buffered.is_empty(), "a request left incomplete");
    Ok(connection.requests)
}

/// Multibulk and inline requests, empty lines and `*0`, a binary value
/// with `\r\n` inside, quotes and escapes.
const STREAM: &[u8] = b"*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nva\r\nl\r\n\
*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n\
PING\r\n\
\r\n\
*0\r\n\
set k \"a b\\x41\\n\"  'it\\'s'\n\
*1\r\n$0\r\n\r\n\
  ECHO   spaced  \r\n";

fn stream_requests() -> Vec<Vec<Vec<u8>>> {
    vec![
        words(&["SET", "key", "va\r\nl"]),
        words(&["GET", "key"]),
        words(&["PING"]),
        words(&["set", "k", "a bA\n", "it's"]),
        words(&[""]),
        words(&["ECHO", "spaced"]),
    ]
}

#[test]
fn a_stream_parses_to_its_requests() {
    assert_eq!(parse_all(STREAM).expect("valid"), stream_requests());
}

#[test]
fn any_split_into_two_reads_gives_the_same_requests() {
    for split in 0..=STREAM.len() {
        let mut connection = Connection::new();
        connection.receive(&STREAM[..split]).expect("valid");
        connection.receive(&STREAM[split..]).expect("valid");
        assert_eq!(connection.requests, stream_requests(), "split at {split}");
        assert!(connection.buffered.is_empty());
    }
}

#[test]
fn one_byte_per_read_gives_the_same_requests() {
    let mut connection = Connection::new();
    for byte in STREAM {
        connection
            .receive(std::slice::from_ref(byte))
            .expect("valid");
    }
    assert_eq!(connection.requests, stream_requests());
    assert!(connection.buffered.is_empty());
}

#[test]
fn every_pair_of_splits_gives_the_same_requests() {
    for a in 0..=STREAM.len() {
        for b in a..=STREAM.len() {
            let mut connection = Connection::new();
            for part in [&STREAM[..a], &STREAM[a..b], &STREAM[b..]] {
                connection.receive(part).expect("valid");
            }
            assert_eq!(connection.requests, stream_requests(), "splits at {a}, {b}");
        }
    }
}

#[test]
fn an_incomplete_multibulk_resumes_where_it_stopped() {
    let mut parser = Parser::new();
    let mut resume = Resume::default();
    let whole = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n";
    // Two arguments and part of the third: the first two are not scanned
    // again.
    let part = &whole[..whole.len() - 4];
    assert_eq!(parser.parse(part, &mut resume), Ok(Parsed::Incomplete));
    assert_eq!(resume, Resume::Multibulk { at: 20, left: 1 });
    assert_eq!(
        parser.parse(whole, &mut resume),
        Ok(Parsed::Request { len: whole.len() })
    );
    assert_eq!(resume, Resume::Fresh);
    let args = parser.args(whole);
    assert_eq!((args.len(), args.get(2)), (3, &b"hello"[..]));
}

#[test]
fn an_incomplete_inline_line_is_not_scanned_again() {
    let mut parser = Parser::new();
    let mut resume = Resume::default();
    assert_eq!(
        parser.parse(b"PING hel", &mut resume),
        Ok(Parsed::Incomplete)
    );
    assert_eq!(resume, Resume::Inline { scanned: 8 });
    assert_eq!(
        parser.parse(b"PING hello\r\n", &mut resume),
        Ok(Parsed::Request { len: 12 })
    );
    assert_eq!(parser.args(b"").get(1), b"hello");
}

#[test]
fn protocol_errors_are_worded_as_redis_words_them() {
    let cases: &[(&[u8], &str)] = &[
        (b"*x\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*+1\r\n", "invalid multibulk length"),
        (b"*1\r\n:1\r\n", "expected '$', got ':'"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (
            b"*1\r\n$123456789012345678901234567890123\r\n",
            "too big bulk count string",
        ),
        (
            b"*123456789012345678901234567890123\r\n",
            "too big mbulk count string",
        ),
        (b"SET k \"open\r\n", "unbalanced quotes in request"),
        (b"SET k \"a\"b\r\n", "unbalanced quotes in request"),
        (b"SET k 'a\r\n", "unbalanced quotes in request"),
    ];
    for (bytes, message) in cases {
        let error = parse_all(bytes).expect_err("a protocol error");
        assert_eq!(
            error.to_string(),
            *message,
            "{:?}",
            String::from_utf8_lossy(bytes)
        );
    }
}

#[test]
fn limits_are_protocol_errors() {
    let too_many = format!("*{}\r\n", MAX_ARGS + 1);
    assert_eq!(
        parse_all(too_many.as_bytes()),
        Err(ProtocolError::MultibulkLength)
    );
    let too_long = format!("*1\r\n${}\r\n", MAX_BULK_LEN + 1);
    assert_eq!(
        parse_all(too_long.as_bytes()),
        Err(ProtocolError::BulkLength)
    );
    // The limits themselves are fine (incomplete until the bytes come).
    let mut connection = Connection::new();
    let at_limit = format!("*{MAX_ARGS}\r\n$1\r\nx\r\n${MAX_BULK_LEN}\r\n");
    connection
        .receive(at_limit.as_bytes())
        .expect("at the limits");
    assert!(connection.requests.is_empty());

    let line = vec![b'a'; MAX_INLINE_LEN + 1];
    assert_eq!(parse_all(&line), Err(ProtocolError::InlineTooBig));
    let mut connection = Connection::new();
    connection
        .receive(&line[..MAX_INLINE_LEN])
        .expect("not too big yet");
    assert_eq!(
        connection.receive(b"a"),
        Err(ProtocolError::InlineTooBig),
        "reported once the line passes the limit, across reads too"
    );
}

#[test]
fn zero_and_negative_counts_are_skipped_as_redis_does() {
    assert_eq!(
        parse_all(b"*0\r\n*-1\r\nPING\r\n").expect("valid"),
        vec![words(&["PING"])]
    );
}

#[test]
fn integers_parse_as_redis_string2ll() {
    let good: &[(&[u8], i64)] = &[
        (b"0", 0),
        (b"7", 7),
        (b"-7", -7),
        (b"9223372036854775807", i64::MAX),
        (b"-9223372036854775808", i64::MIN),
    ];
    for (text, value) in good {
        assert_eq!(resp::parse_i64(text), Some(*value));
    }
    let bad: &[&[u8]] = &[
        b"",
        b"-",
        b"-0",
        b"01",
        b"+1",
        b" 1",
        b"1 ",
        b"1.5",
        b"9223372036854775808",
        b"-9223372036854775809",
    ];
    for text in bad {
        assert_eq!(
            resp::parse_i64(text),
            None,
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

/// What a connection made of `chunks` in turn: its requests, and the
/// error that ended it, if one did.
fn outcome<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
) -> (Vec<Vec<Vec<u8>>>, Option<ProtocolError>) {
    let mut connection = Connection::new();
    for chunk in chunks {
        if let Err(error) = connection.receive(chunk) {
            return (connection.requests, Some(error));
        }
    }
    (connection.requests, None)
}

#[test]
fn random_bytes_never_panic_and_parse_the_same_in_any_chunks() {
    // A small deterministic generator (xorshift): every run sees the same
    // bytes, and no dependency is needed.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let alphabet = b"*$\r\n0123456789-abc \"'\\x";
    for _ in 0..20_000 {
        let len = usize::try_from(next() % 24).expect("small");
        let bytes: Vec<u8> = (0..len)
            .map(|_| alphabet[usize::try_from(next() % alphabet.len() as u64).expect("small")])
            .collect();
        let chunk = 1 + usize::try_from(next() % 4).expect("small");
        assert_eq!(
            outcome(bytes.chunks(chunk)),
            outcome([&bytes[..]]),
            "{:?} in chunks of {chunk}",
            String::from_utf8_lossy(&bytes)
        );
    }
}
