//! Length-prefixed frames.

use super::{Decode, Frame, FrameError, Frames};

/// The byte order of a length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    /// Most significant byte first (network order; tokio-util's default).
    Big,
    /// Least significant byte first.
    Little,
}

/// Frames made of a length prefix (1, 2, 4 or 8 bytes, in a [`ByteOrder`])
/// and that many bytes of payload, at most `max_length`.
///
/// ```
/// use tcp_reactor::framing::{ByteOrder, Frame, FrameError, LengthPrefixed};
///
/// let frames = LengthPrefixed::new(2, ByteOrder::Big, 1024);
/// let mut out = Vec::new();
/// frames.encode(b"hi", &mut out)?;
/// assert_eq!(out, b"\x00\x02hi");
/// assert_eq!(frames.decode(&out)?, Some(Frame { payload: b"hi", consumed: 4 }));
/// assert_eq!(frames.decode(b"\x00\x02h")?, None); // needs more bytes
/// assert_eq!(
///     frames.decode(b"\x04\x01"), // told from the prefix alone
///     Err(FrameError::FrameTooLong { len: 1025, max: 1024 })
/// );
/// # Ok::<(), FrameError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LengthPrefixed {
    width: usize,
    order: ByteOrder,
    max_length: usize,
}

impl LengthPrefixed {
    /// Frames with a `width`-byte length prefix in `order`, payloads of at
    /// most `max_length` bytes, capped at the largest length the prefix can
    /// say (255 for one byte, 65,535 for two, ...).
    ///
    /// # Panics
    ///
    /// If `width` is not 1, 2, 4 or 8: a program's constant, not input.
    pub const fn new(width: usize, order: ByteOrder, max_length: usize) -> LengthPrefixed {
        assert!(
            matches!(width, 1 | 2 | 4 | 8),
            "length prefix width must be 1, 2, 4 or 8 bytes"
        );
        let prefix_max = if width == 8 {
            u64::MAX
        } else {
            (1u64 << (8 * width)) - 1
        };
        let max_length = if (max_length as u64) > prefix_max {
            prefix_max as usize
        } else {
            max_length
        };
        LengthPrefixed {
            width,
            order,
            max_length,
        }
    }

    /// The longest payload accepted, in bytes: the `max_length` given, or
    /// less if the prefix cannot say it.
    pub const fn max_length(&self) -> usize {
        self.max_length
    }

    /// The prefix width, in bytes.
    pub const fn width(&self) -> usize {
        self.width
    }

    /// The prefix byte order.
    pub const fn order(&self) -> ByteOrder {
        self.order
    }

    /// The frame at the start of `input`. `Ok(None)`: its prefix or payload
    /// is incomplete. An error as soon as the prefix says more than the
    /// maximum, before the payload arrives.
    pub fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        let Some(prefix) = input.get(..self.width) else {
            return Ok(None);
        };
        let len = self.read_prefix(prefix);
        if len > self.max_length as u64 {
            return Err(FrameError::FrameTooLong {
                len,
                max: self.max_length,
            });
        }
        // At most max_length, so it fits a usize; the sum overflows only
        // for a frame that could not be in memory anyway.
        let end = self.width.checked_add(len as usize);
        match end.and_then(|end| input.get(self.width..end)) {
            Some(payload) => Ok(Some(Frame {
                payload,
                consumed: self.width + payload.len(),
            })),
            None => Ok(None),
        }
    }

    /// As [`decode`](Self::decode), when no more bytes will come: an
    /// unfinished frame is [`FrameError::Truncated`] (tokio-util's "bytes
    /// remaining on stream"); empty input is `Ok(None)`.
    pub fn decode_eof<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        match self.decode(input)? {
            Some(frame) => Ok(Some(frame)),
            None if input.is_empty() => Ok(None),
            None => Err(FrameError::Truncated {
                buffered: input.len(),
            }),
        }
    }

    /// Appends the prefix and `payload` to `out`; a payload longer than the
    /// maximum is an error and appends nothing.
    pub fn encode(&self, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
        if payload.len() > self.max_length {
            return Err(FrameError::FrameTooLong {
                len: payload.len() as u64,
                max: self.max_length,
            });
        }
        let len = payload.len() as u64;
        out.reserve(self.width + payload.len());
        match self.order {
            ByteOrder::Big => out.extend_from_slice(&len.to_be_bytes()[8 - self.width..]),
            ByteOrder::Little => out.extend_from_slice(&len.to_le_bytes()[..self.width]),
        }
        out.extend_from_slice(payload);
        Ok(())
    }

    /// The frames at the start of `input`; see [`Frames`].
    pub fn frames<'a>(&self, input: &'a [u8]) -> Frames<'a, LengthPrefixed> {
        Frames::new(*self, input)
    }

    /// The length a prefix of `self.width` bytes says.
    fn read_prefix(&self, prefix: &[u8]) -> u64 {
        let mut bytes = [0; 8];
        match self.order {
            ByteOrder::Big => {
                bytes[8 - self.width..].copy_from_slice(prefix);
                u64::from_be_bytes(bytes)
            }
            ByteOrder::Little => {
                bytes[..self.width].copy_from_slice(prefix);
                u64::from_le_bytes(bytes)
            }
        }
    }
}

impl Decode for LengthPrefixed {
    fn decode<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        LengthPrefixed::decode(self, input)
    }

    fn decode_eof<'a>(&self, input: &'a [u8]) -> Result<Option<Frame<'a>>, FrameError> {
        LengthPrefixed::decode_eof(self, input)
    }
}
