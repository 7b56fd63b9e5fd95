//! Newline-delimited lines.

use super::{Decode, Frame, FrameError, Frames};

/// Newline-delimited lines, at most `max_length` bytes each (not counting
/// the `\n`, nor a `\r` before it, which is stripped).
///
/// ```
/// use tcp_reactor::framing::{Frame, FrameError, Lines};
///
/// let lines = Lines::new(5);
/// assert_eq!(
///     lines.decode(b"hello\r\nrest")?,
///     Some(Frame { payload: b"hello", consumed: 7 })
/// );
/// assert_eq!(lines.decode(b"hel")?, None); // needs more bytes
/// assert_eq!(lines.decode(b"hello!"), Err(FrameError::LineTooLong { max: 5 }));
///
/// let mut out = Vec::new();
/// lines.encode(b"hi", &mut out)?;
/// assert_eq!(out, b"hi\n");
/// # Ok::<(), FrameError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lines {
    max_length: usize,
}

impl Lines {
    /// Lines of at most `max_length` bytes, without `\n` and `\r`.
    pub const fn new(max_length: usize) -> Lines {
        Lines { max_length }
    }

    /// The longest line accepted, in bytes.
    pub const fn max_length(&self) -> usize {
        self.max_length
    }

    /// The line at the start of `input`, without its `\n` and trailing
    /// `\r`. `Ok(None)`: no `\n` yet, and what came so far may still be a
    /// line within the maximum. An error as soon as it cannot be: more
    /// than `max_length` bytes (a last `\r` aside) without `\n`.
    pub fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        // A line at the maximum may be followed by "\r\n": its '\n' is at
        // index max_length + 1 at the latest, so no need to look further.
        let window = input.len().min(self.max_length.saturating_add(2));
        match input[..window].iter().position(|&b| b == b'\n') {
            Some(newline) => {
                let line = strip_cr(&input[..newline]);
                if line.len() > self.max_length {
                    return Err(self.too_long());
                }
                Ok(Some(Frame {
                    payload: line,
                    consumed: newline + 1,
                }))
            }
            None if self.cannot_end_in_time(input) => Err(self.too_long()),
            None => Ok(None),
        }
    }

    /// As [`decode`](Self::decode), when no more bytes will come: a last
    /// line without `\n` is a line (its trailing `\r` stripped), as with
    /// tokio-util's `LinesCodec::decode_eof`; empty input or a lone `\r`
    /// is none.
    pub fn decode_eof<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        if let Some(frame) = self.decode(input)? {
            return Ok(Some(frame));
        }
        if input.is_empty() || input == b"\r" {
            return Ok(None);
        }
        // `decode` said the partial line may still fit: stripped of its
        // '\r', it does.
        Ok(Some(Frame {
            payload: strip_cr(input),
            consumed: input.len(),
        }))
    }

    /// Appends `line` and `\n` to `out`; a line longer than the maximum is
    /// an error and appends nothing. `line` should hold no `\n` (it would
    /// be read back as two lines) and not end in `\r` (it would be
    /// stripped).
    pub fn encode(&self, line: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if line.len() > self.max_length {
            return Err(self.too_long());
        }
        out.reserve(line.len() + 1);
        out.extend_from_slice(line);
        out.push(b'\n');
        Ok(())
    }

    /// The lines at the start of `input`; see [`Frames`].
    pub fn frames<'a>(&self, input: &'a [u8]) -> Frames<'a, Lines> {
        Frames::new(*self, input)
    }

    /// Whether `input`, holding no `\n`, is already too long to be a line
    /// within the maximum whatever comes next.
    fn cannot_end_in_time(&self, input: &[u8]) -> bool {
        let limit = self.max_length.saturating_add(1);
        // max_length + 1 bytes fit only as a line and its '\r'.
        input.len() > limit || (input.len() == limit && input[limit - 1] != b'\r')
    }

    fn too_long(&self) -> FrameError {
        FrameError::LineTooLong {
            max: self.max_length,
        }
    }
}

impl Decode for Lines {
    fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        Lines::decode(self, input)
    }

    fn decode_eof<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        Lines::decode_eof(self, input)
    }
}

/// `line` without one trailing `\r`.
fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}
