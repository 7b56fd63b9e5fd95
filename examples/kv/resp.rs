//! RESP2 requests: the parser over the bytes `on_data` gets.
//!
//! A request is a multibulk (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what
//! clients send) or an inline line (`GET k\r\n`, what a person types into
//! `nc`). [`Parser::parse`] reads one request from the front of the input
//! and says how many bytes it took; a request not complete yet takes
//! nothing and stays in the reactor's buffer, to be offered again with the
//! next bytes. The arguments are not copied: a multibulk's are ranges of
//! the input; only an inline line's (whose quotes and escapes must be
//! undone) are copied into the parser's own buffer, reused from request to
//! request.
//!
//! Errors are worded as Redis words them (`networking.c`); the server
//! answers `-ERR Protocol error: ...` and closes the connection, as Redis
//! does.
//!
//! This file is self-contained (the tests include it with `#[path]`).

use std::ops::Range;

/// The longest bulk string (an argument) accepted. Redis allows 512 MB
/// (`proto-max-bulk-len`); a whole request must also fit in the reactor's
/// input buffer (`Config::max_input`, set from this in `main.rs`), so
/// this bounds a connection's memory to a few MiB.
pub const MAX_BULK_LEN: usize = 1024 * 1024;

/// The most arguments in one request. Redis allows 1024 * 1024; each one
/// costs a range here (16 bytes), so a lower bound keeps a hostile count
/// from reserving much, and 65,536 keys in one MGET is plenty.
pub const MAX_ARGS: usize = 64 * 1024;

/// The longest inline line (Redis's `PROTO_INLINE_MAX_SIZE`).
pub const MAX_INLINE_LEN: usize = 64 * 1024;

/// A count line (`*3`, `$5`) longer than this without its `\r` cannot be a
/// number Redis would accept (at most 20 digits and a sign): it is refused
/// at once, rather than after 64 KiB as Redis does.
const MAX_COUNT_LINE: usize = 32;

/// Why a request cannot be read: the connection is answered with
/// `-ERR Protocol error: {self}` and closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// `*N` with N not a number Redis accepts, or above [`MAX_ARGS`].
    #[error("invalid multibulk length")]
    MultibulkLength,
    /// `$N` with N negative, not a number, or above [`MAX_BULK_LEN`].
    #[error("invalid bulk length")]
    BulkLength,
    /// An argument of a multibulk that does not start with `$`.
    #[error("expected '$', got '{}'", char::from(*.0))]
    ExpectedDollar(u8),
    /// A `*N` line without its `\r` after [`MAX_COUNT_LINE`] bytes.
    #[error("too big mbulk count string")]
    MultibulkLine,
    /// A `$N` line without its `\r` after [`MAX_COUNT_LINE`] bytes.
    #[error("too big bulk count string")]
    BulkLine,
    /// An inline line without its `\n` after [`MAX_INLINE_LEN`] bytes.
    #[error("too big inline request")]
    InlineTooBig,
    /// An inline line with a quote that is not closed (or not followed by
    /// a space).
    #[error("unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// What [`Parser::parse`] found at the front of the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A request of `len` bytes; its arguments are in [`Parser::args`].
    Request {
        /// Bytes it took from the input.
        len: usize,
    },
    /// `len` bytes that hold no request (an empty line, `*0\r\n`):
    /// consumed, nothing to answer.
    Nothing {
        /// Bytes it took from the input.
        len: usize,
    },
    /// The request is not complete yet: nothing consumed.
    Incomplete,
}

/// Where an incomplete request was left, so that the next call, offered
/// the same bytes and more, goes on from there instead of scanning them
/// again. Kept per connection (a `Copy` word or two, no allocation); the
/// reactor offers unconsumed input again from the same first byte, so the
/// offsets stay valid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Resume {
    /// Nothing scanned: start at the first byte.
    #[default]
    Fresh,
    /// A multibulk whose arguments before byte `at` are whole and valid,
    /// with `left` arguments still to come from `at` on.
    Multibulk {
        /// Offset of the next argument's `$`.
        at: usize,
        /// Arguments not seen yet.
        left: usize,
    },
    /// An inline line with no `\n` in its first `scanned` bytes.
    Inline {
        /// Bytes known to hold no `\n`.
        scanned: usize,
    },
}

/// The arguments of the last request parsed: `args()[0]` is the command
/// name.
#[derive(Debug, Default)]
pub struct Parser {
    /// Each argument's bytes: a range of the input, or of `inline`.
    ranges: Vec<Range<usize>>,
    /// An inline request's arguments, unquoted.
    inline: Vec<u8>,
    /// Whether the ranges are of `inline` (the last request was inline).
    is_inline: bool,
}

/// A request's arguments, borrowed from the input (or the parser).
#[derive(Debug, Clone, Copy)]
pub struct Args<'a> {
    bytes: &'a [u8],
    ranges: &'a [Range<usize>],
}

impl<'a> Args<'a> {
    /// How many arguments, the command name included.
    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// Whether there are none (never for a parsed request).
    #[allow(dead_code)] // `len` without it is a clippy warning
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Argument `i` (0 is the command name).
    ///
    /// # Panics
    ///
    /// For `i >= len()`; callers check the arity first.
    pub fn get(&self, i: usize) -> &'a [u8] {
        &self.bytes[self.ranges[i].clone()]
    }

    /// Arguments `from..`, in order.
    pub fn from(&self, from: usize) -> impl Iterator<Item = &'a [u8]> + 'a {
        let bytes = self.bytes;
        self.ranges[from.min(self.ranges.len())..]
            .iter()
            .map(move |r| &bytes[r.clone()])
    }
}

impl Parser {
    /// An empty parser (its buffers grow with the requests and are reused).
    pub fn new() -> Parser {
        Parser::default()
    }

    /// The arguments of the request [`parse`](Self::parse) just returned,
    /// `input` being the slice it was given.
    pub fn args<'a>(&'a self, input: &'a [u8]) -> Args<'a> {
        Args {
            bytes: if self.is_inline { &self.inline } else { input },
            ranges: &self.ranges,
        }
    }

    /// Parses one request from the front of `input`. `resume` is the
    /// connection's: it says how far an earlier call got into this same
    /// request, and is updated.
    ///
    /// # Errors
    ///
    /// A [`ProtocolError`] when the bytes cannot be a request.
    pub fn parse(&mut self, input: &[u8], resume: &mut Resume) -> Result<Parsed, ProtocolError> {
        let Some(&first) = input.first() else {
            return Ok(Parsed::Incomplete);
        };
        let parsed = if first == b'*' {
            self.multibulk(input, resume)
        } else {
            self.inline(input, resume)
        };
        if !matches!(parsed, Ok(Parsed::Incomplete)) {
            *resume = Resume::Fresh;
        }
        parsed
    }

    /// `*N\r\n` then N times `$LEN\r\nBYTES\r\n`.
    fn multibulk(&mut self, input: &[u8], resume: &mut Resume) -> Result<Parsed, ProtocolError> {
        if let Resume::Multibulk { at, left } = *resume {
            // The arguments before `at` were checked last time: see
            // whether the rest has come, without collecting anything.
            match scan_bulks(input, at, left, None)? {
                Scan::Done(_) => {} // complete: collect from the start
                Scan::Stopped { at, left } => {
                    *resume = Resume::Multibulk { at, left };
                    return Ok(Parsed::Incomplete);
                }
            }
        }
        let Some((count, at)) = count_line(input, 0).map_err(|e| match e {
            CountError::Invalid => ProtocolError::MultibulkLength,
            CountError::TooLong => ProtocolError::MultibulkLine,
        })?
        else {
            return Ok(Parsed::Incomplete);
        };
        if count <= 0 {
            // Redis skips `*0` and `*-1` as requests with no arguments.
            return Ok(Parsed::Nothing { len: at });
        }
        let count = usize::try_from(count).map_err(|_| ProtocolError::MultibulkLength)?;
        if count > MAX_ARGS {
            return Err(ProtocolError::MultibulkLength);
        }
        self.is_inline = false;
        self.ranges.clear();
        match scan_bulks(input, at, count, Some(&mut self.ranges))? {
            Scan::Done(len) => Ok(Parsed::Request { len }),
            Scan::Stopped { at, left } => {
                *resume = Resume::Multibulk { at, left };
                Ok(Parsed::Incomplete)
            }
        }
    }

    /// A line of words separated by spaces, ended by `\n` (a `\r` before
    /// it is dropped); quotes as `redis-cli` and Redis read them.
    fn inline(&mut self, input: &[u8], resume: &mut Resume) -> Result<Parsed, ProtocolError> {
        let from = match *resume {
            Resume::Inline { scanned } => scanned,
            _ => 0,
        };
        let Some(newline) = input[from..].iter().position(|&b| b == b'\n') else {
            if input.len() > MAX_INLINE_LEN {
                return Err(ProtocolError::InlineTooBig);
            }
            *resume = Resume::Inline {
                scanned: input.len(),
            };
            return Ok(Parsed::Incomplete);
        };
        let end = from + newline;
        if end > MAX_INLINE_LEN {
            return Err(ProtocolError::InlineTooBig);
        }
        let line = input[..end].strip_suffix(b"\r").unwrap_or(&input[..end]);
        self.is_inline = true;
        self.ranges.clear();
        self.inline.clear();
        split_words(line, &mut self.inline, &mut self.ranges)?;
        if self.ranges.is_empty() {
            return Ok(Parsed::Nothing { len: end + 1 });
        }
        Ok(Parsed::Request { len: end + 1 })
    }
}

/// How far [`scan_bulks`] got.
enum Scan {
    /// All arguments are there; the request ends at this offset.
    Done(usize),
    /// Argument at `at` (and `left - 1` after it) not complete yet.
    Stopped { at: usize, left: usize },
}

/// Walks `left` bulk arguments from `at`, pushing each one's range to
/// `ranges` if given.
fn scan_bulks(
    input: &[u8],
    mut at: usize,
    mut left: usize,
    mut ranges: Option<&mut Vec<Range<usize>>>,
) -> Result<Scan, ProtocolError> {
    while left > 0 {
        let Some(&marker) = input.get(at) else {
            return Ok(Scan::Stopped { at, left });
        };
        if marker != b'$' {
            return Err(ProtocolError::ExpectedDollar(marker));
        }
        let Some((len, start)) = count_line(input, at).map_err(|e| match e {
            CountError::Invalid => ProtocolError::BulkLength,
            CountError::TooLong => ProtocolError::BulkLine,
        })?
        else {
            return Ok(Scan::Stopped { at, left });
        };
        let len = usize::try_from(len).map_err(|_| ProtocolError::BulkLength)?;
        if len > MAX_BULK_LEN {
            return Err(ProtocolError::BulkLength);
        }
        // As Redis, the two bytes after the bulk are taken as its `\r\n`
        // without looking at them.
        let end = start + len;
        if input.len() < end + 2 {
            return Ok(Scan::Stopped { at, left });
        }
        if let Some(ranges) = ranges.as_deref_mut() {
            ranges.push(start..end);
        }
        at = end + 2;
        left -= 1;
    }
    Ok(Scan::Done(at))
}

/// A count line that cannot be accepted.
enum CountError {
    /// Not a number Redis's `string2ll` accepts.
    Invalid,
    /// No `\r` within [`MAX_COUNT_LINE`] bytes.
    TooLong,
}

/// The number on the line at `at` (`*N\r\n` or `$N\r\n`, the marker at
/// `at`) and the offset after its `\r\n`; `None` while incomplete.
fn count_line(input: &[u8], at: usize) -> Result<Option<(i64, usize)>, CountError> {
    let digits_from = at + 1;
    let window = &input[digits_from.min(input.len())..];
    let window = &window[..window.len().min(MAX_COUNT_LINE)];
    let Some(cr) = window.iter().position(|&b| b == b'\r') else {
        return if window.len() >= MAX_COUNT_LINE {
            Err(CountError::TooLong)
        } else {
            Ok(None)
        };
    };
    // As Redis, the byte after the `\r` is taken as the `\n`; it must
    // have arrived.
    let next = digits_from + cr + 2;
    if input.len() < next {
        return Ok(None);
    }
    let number = parse_i64(&window[..cr]).ok_or(CountError::Invalid)?;
    Ok(Some((number, next)))
}

/// A decimal integer as Redis's `string2ll` reads it: an optional `-`,
/// digits, no leading zero (but `0` itself), no `+`, no spaces, and in
/// `i64`'s range.
pub fn parse_i64(text: &[u8]) -> Option<i64> {
    let (negative, digits) = match text {
        [b'-', rest @ ..] => (true, rest),
        _ => (false, text),
    };
    match digits {
        [] => return None,
        [b'0'] => return (!negative).then_some(0),
        [b'0', ..] => return None,
        _ => {}
    }
    let mut value: i64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        let digit = i64::from(b - b'0');
        // Accumulated as a negative number: i64::MIN has no positive twin.
        value = value.checked_mul(10)?.checked_sub(digit)?;
    }
    if negative {
        Some(value)
    } else {
        value.checked_neg()
    }
}

/// Splits an inline line into words as Redis's `sdssplitargs` does:
/// spaces separate words; `"..."` may hold spaces and the escapes `\n`,
/// `\r`, `\t`, `\b`, `\a`, `\xHH` and `\` before any other byte; `'...'`
/// may hold spaces and `\'`. A closing quote must be followed by a space
/// or the end of the line. Words go to `out`, their ranges to `ranges`.
fn split_words(
    line: &[u8],
    out: &mut Vec<u8>,
    ranges: &mut Vec<Range<usize>>,
) -> Result<(), ProtocolError> {
    let mut i = 0;
    loop {
        while line.get(i).is_some_and(|b| is_space(*b)) {
            i += 1;
        }
        let Some(&first) = line.get(i) else {
            return Ok(());
        };
        let start = out.len();
        i = match first {
            b'"' => double_quoted(line, i + 1, out)?,
            b'\'' => single_quoted(line, i + 1, out)?,
            _ => {
                let end = line[i..]
                    .iter()
                    .position(|&b| is_space(b))
                    .map_or(line.len(), |n| i + n);
                out.extend_from_slice(&line[i..end]);
                end
            }
        };
        ranges.push(start..out.len());
    }
}

/// C's `isspace`, which `sdssplitargs` uses.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// The rest of a `"` word from `i`; returns the offset after it.
fn double_quoted(line: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(i..) {
            None | Some([]) => return Err(ProtocolError::UnbalancedQuotes),
            Some([b'\\', b'x', h, l, ..]) if h.is_ascii_hexdigit() && l.is_ascii_hexdigit() => {
                out.push(hex_value(*h) * 16 + hex_value(*l));
                i += 4;
            }
            Some([b'\\', escaped, ..]) => {
                out.push(match escaped {
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'b' => 0x08,
                    b'a' => 0x07,
                    other => *other,
                });
                i += 2;
            }
            Some([b'"', rest @ ..]) => return closing_quote(rest, i),
            Some([b, ..]) => {
                out.push(*b);
                i += 1;
            }
        }
    }
}

/// The rest of a `'` word from `i`; returns the offset after it.
fn single_quoted(line: &[u8], mut i: usize, out: &mut Vec<u8>) -> Result<usize, ProtocolError> {
    loop {
        match line.get(i..) {
            None | Some([]) => return Err(ProtocolError::UnbalancedQuotes),
            Some([b'\\', b'\'', ..]) => {
                out.push(b'\'');
                i += 2;
            }
            Some([b'\'', rest @ ..]) => return closing_quote(rest, i),
            Some([b, ..]) => {
                out.push(*b);
                i += 1;
            }
        }
    }
}

/// A closing quote at `at`, `rest` after it: it must end the word (a
/// space or the end of the line follows). Returns the offset after it.
fn closing_quote(rest: &[u8], at: usize) -> Result<usize, ProtocolError> {
    match rest.first() {
        Some(&b) if !is_space(b) => Err(ProtocolError::UnbalancedQuotes),
        _ => Ok(at + 1),
    }
}

/// The value of an ASCII hex digit (checked by the caller).
fn hex_value(digit: u8) -> u8 {
    match digit {
        b'0'..=b'9' => digit - b'0',
        b'a'..=b'f' => digit - b'a' + 10,
        _ => digit - b'A' + 10,
    }
}
