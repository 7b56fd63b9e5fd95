//! Framing: cutting the byte stream `on_data` gets into messages, and
//! writing messages the same way.
//!
//! Two formats, each with a maximum frame size:
//!
//! - [`Lines`]: newline-delimited lines; a trailing `\r` is stripped, so
//!   `"\r\n"` ends a line too.
//! - [`LengthPrefixed`]: a length prefix of 1, 2, 4 or 8 bytes, big or
//!   little endian ([`ByteOrder`]), then that many bytes of payload.
//!
//! # Working on the reactor's buffer
//!
//! A codec here holds no buffer and no state: it reads the `&[u8]` that
//! [`Handler::on_data`](crate::Handler::on_data) gets and says how many
//! bytes each frame used ([`Frame::consumed`]). `on_data` returns the sum
//! ([`Frames::consumed`]), and a partial frame at the end stays in the
//! reactor's input buffer, offered again with the next bytes. So there is
//! no second buffer per connection, no copy of consumed bytes, and no
//! allocation in decoding: a frame's payload borrows from `data`.
//!
//! ```
//! use tcp_reactor::framing::{FrameError, Lines};
//!
//! const LINES: Lines = Lines::new(16);
//! let data = b"PING\r\nECHO hi\nPAR"; // what one on_data got
//! let mut frames = LINES.frames(data);
//! let lines: Vec<&[u8]> = frames.by_ref().collect::<Result<_, FrameError>>()?;
//! assert_eq!(lines, [&b"PING"[..], b"ECHO hi"]);
//! assert_eq!(frames.consumed(), 14); // "PAR" waits for the rest of its line
//! # Ok::<(), FrameError>(())
//! ```
//!
//! An over-long line or frame is an error ([`FrameError`]) as soon as it
//! can be told: a line once more than the maximum has arrived without its
//! newline, a length-prefixed frame as soon as its prefix has. It is never
//! cut silently. The crate docs (*Framing*) show a handler that answers
//! such an error and closes the connection.
//!
//! # Compared with tokio-util
//!
//! [`Lines`] behaves as tokio-util's `LinesCodec::new_with_max_length`, and
//! [`LengthPrefixed`] as `LengthDelimitedCodec` with a length field only
//! (no offset, adjustment or skipped header), except as listed here.
//!
//! Where they match:
//!
//! - A line ends at `\n`; one trailing `\r` is stripped; a `\r` elsewhere
//!   is payload.
//! - At EOF a last line without `\n` is still a line ([`Lines::decode_eof`]),
//!   its trailing `\r` stripped; nothing, or a lone `\r`, is no line.
//! - A frame whose prefix says more than the maximum is an error, reported
//!   from the prefix alone, before its payload arrives.
//! - At EOF a partial length-prefixed frame is an error
//!   ([`FrameError::Truncated`], tokio-util's "bytes remaining on stream").
//!
//! Where they differ, and why:
//!
//! - **No recovery after an over-long line.** `LinesCodec` returns its
//!   error, then discards up to the next newline and goes on decoding. We
//!   are stateless over the reactor's buffer: nothing would remember, on
//!   the next call, that a line is being discarded. And a peer that sent a
//!   line past the limit is not speaking the protocol; the handler answers
//!   an error and closes that connection (the others carry on). After an
//!   error, [`Frames`] yields nothing more.
//! - **The maximum counts payload only.** Our `max_length` is the length
//!   of the line without its `\n` *and* without the stripped `\r`, so a
//!   line of exactly `max_length` bytes is accepted whether it ends in
//!   `"\n"` or `"\r\n"`. `LinesCodec` counts the `\r` (its limit is on the
//!   bytes before `\n`). For that, a partial line of `max_length + 1`
//!   bytes whose last byte is `\r` waits for the next byte before it is
//!   judged.
//! - **Bytes, not `String`.** Lines are `&[u8]`; a protocol that wants text
//!   checks UTF-8 itself (`LinesCodec` fails on invalid UTF-8).
//! - **Encoding checks the maximum, and the prefix width.** `LinesCodec`
//!   writes any line; `LengthDelimitedCodec` refuses a frame over its
//!   maximum but, with a narrow prefix and a larger maximum, writes a
//!   length that does not fit (tokio-rs/tokio#5080). Here the maximum is
//!   capped at what the prefix can say ([`LengthPrefixed::max_length`]),
//!   and `encode` refuses anything longer. [`Lines::encode`] does not look
//!   for `\n` inside the line: a line with one would be read back as two.
//! - **The partial line is scanned again.** `LinesCodec` remembers where
//!   its search for `\n` stopped; a stateless decoder starts over on each
//!   call. The scan is bounded by the maximum, so a line trickling in
//!   byte by byte costs at most `max_length` per call.
//! - **EOF in the reactor.** The reactor drops unconsumed input when the
//!   peer's FIN arrives ([`Handler::on_eof`](crate::Handler::on_eof) gets
//!   no data), so a server on it sees a last line only if it was ended by
//!   `\n`. `decode_eof` is for a caller that holds the bytes at EOF.

mod length;
mod lines;

pub use length::{ByteOrder, LengthPrefixed};
pub use lines::Lines;

use std::iter::FusedIterator;

/// Why bytes could not be decoded into a frame, or a frame not encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A line is longer than the maximum (counted without `\n` and the
    /// stripped `\r`).
    #[error("line longer than {max} bytes")]
    LineTooLong {
        /// The maximum line length, in bytes.
        max: usize,
    },
    /// A length-prefixed frame is longer than the maximum.
    #[error("frame of {len} bytes is longer than the maximum of {max} bytes")]
    FrameTooLong {
        /// The frame's length, as its prefix says (decoding) or as given
        /// (encoding).
        len: u64,
        /// The maximum frame length, in bytes.
        max: usize,
    },
    /// The stream ended inside a length-prefixed frame (its prefix or its
    /// payload is incomplete).
    #[error("stream ended inside a frame ({buffered} bytes of it received)")]
    Truncated {
        /// How many bytes of the unfinished frame had arrived.
        buffered: usize,
    },
}

/// One decoded frame: its payload, borrowed from the input, and how many
/// bytes of input it used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The frame's content, without delimiter or prefix.
    pub payload: &'a [u8],
    /// Bytes of input this frame used, delimiter or prefix included.
    pub consumed: usize,
}

/// A decoder of frames at the start of a byte slice, shared by [`Lines`]
/// and [`LengthPrefixed`] so that [`Frames`] works with either.
pub trait Decode {
    /// The frame at the start of `input`; `Ok(None)` if more bytes are
    /// needed; an error if the frame is invalid (too long).
    fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError>;

    /// As [`decode`](Self::decode), when no more bytes will come: what is
    /// left over is a last frame, or an error, or nothing.
    fn decode_eof<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError>;
}

/// The frames at the start of a byte slice, in order: each item a payload
/// or the error that stops decoding (nothing is yielded after an error).
///
/// [`consumed`](Self::consumed) is the number of bytes used by the frames
/// yielded so far: what `on_data` returns.
#[derive(Debug, Clone)]
pub struct Frames<'a, D> {
    codec: D,
    input: &'a [u8],
    consumed: usize,
    done: bool,
}

impl<'a, D: Decode> Frames<'a, D> {
    /// The frames of `input`, decoded by `codec`.
    pub fn new(codec: D, input: &'a [u8]) -> Frames<'a, D> {
        Frames {
            codec,
            input,
            consumed: 0,
            done: false,
        }
    }

    /// Bytes used by the frames yielded so far.
    pub fn consumed(&self) -> usize {
        self.consumed
    }

    /// The input not used by the frames yielded so far.
    pub fn remaining(&self) -> &'a [u8] {
        &self.input[self.consumed..]
    }
}

impl<'a, D: Decode> Iterator for Frames<'a, D> {
    type Item = Result<&'a [u8], FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        match self.codec.decode(self.remaining()) {
            Ok(Some(frame)) => {
                self.consumed += frame.consumed;
                Some(Ok(frame.payload))
            }
            Ok(None) => {
                self.done = true;
                None
            }
            Err(error) => {
                self.done = true;
                Some(Err(error))
            }
        }
    }
}

impl<D: Decode> FusedIterator for Frames<'_, D> {}
