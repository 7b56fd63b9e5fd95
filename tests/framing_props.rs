//! Property tests of framing, decoding the way a handler does on the
//! reactor: each read is appended to the connection's buffer, the frames in
//! it are decoded, and the bytes they used are dropped from its front.
//!
//! - any split of a stream into reads decodes to the frames (and the error,
//!   and the leftover) of the stream read at once;
//! - random bytes never panic, and no frame is ever longer than the
//!   maximum;
//! - an over-long line or frame is always reported, after the frames
//!   before it, never cut;
//! - what is encoded decodes back to the same payloads.
//!
//! Both codecs; length prefixes of every width, both byte orders.

use proptest::prelude::*;
use proptest::sample::Index;
use tcp_reactor::framing::{ByteOrder, Decode, FrameError, Frames, LengthPrefixed, Lines};

/// What decoding a whole stream gave: the payloads, the error that stopped
/// it if any, and the bytes left undecoded.
#[derive(Debug, PartialEq)]
struct Decoded {
    payloads: Vec<Vec<u8>>,
    error: Option<FrameError>,
    leftover: Vec<u8>,
}

/// Decodes `stream` as it arrives in reads cut at `cuts`, as on the
/// reactor; at the end, what is left goes through `decode_eof`.
fn decode_in_reads<D: Decode + Copy>(codec: D, stream: &[u8], cuts: &[usize]) -> Decoded {
    let mut buffer = Vec::new();
    let mut payloads = Vec::new();
    let mut start = 0;
    for &end in cuts.iter().chain([&stream.len()]) {
        buffer.extend_from_slice(&stream[start..end]);
        start = end;
        let mut frames = Frames::new(codec, &buffer);
        for frame in &mut frames {
            match frame {
                Ok(payload) => payloads.push(payload.to_vec()),
                Err(error) => {
                    // Not consumed: the buffer's rest and the unread reads.
                    let mut leftover = frames.remaining().to_vec();
                    leftover.extend_from_slice(&stream[start..]);
                    return Decoded {
                        payloads,
                        error: Some(error),
                        leftover,
                    };
                }
            }
        }
        let used = frames.consumed();
        buffer.drain(..used);
    }
    let error = match codec.decode_eof(&buffer) {
        Ok(Some(frame)) => {
            assert_eq!(frame.consumed, buffer.len(), "a last frame uses the rest");
            payloads.push(frame.payload.to_vec());
            buffer.clear();
            None
        }
        Ok(None) => None,
        Err(error) => Some(error),
    };
    Decoded {
        payloads,
        error,
        leftover: buffer,
    }
}

/// Sorted cut points inside a stream of `len` bytes.
fn cuts_of(len: usize, indices: &[Index]) -> Vec<usize> {
    let mut cuts: Vec<usize> = indices.iter().map(|i| i.index(len + 1)).collect();
    cuts.sort_unstable();
    cuts
}

/// Bytes that make lines interesting: newlines, carriage returns, text.
fn line_bytes(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![
        3 => Just(b'\n'),
        2 => Just(b'\r'),
        8 => Just(b'a'),
        2 => any::<u8>(),
    ];
    prop::collection::vec(byte, 0..max_len)
}

fn order() -> impl Strategy<Value = ByteOrder> {
    prop_oneof![Just(ByteOrder::Big), Just(ByteOrder::Little)]
}

fn width() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![1usize, 2, 4, 8])
}

/// A line payload that encodes and decodes to itself: no `\n`, no
/// trailing `\r`.
fn plain_line(max_len: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no newline", |&b| b != b'\n'),
        0..max_len,
    )
    .prop_map(|mut line| {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        line
    })
}

fn assert_within(decoded: &Decoded, max: usize) {
    for payload in &decoded.payloads {
        assert!(payload.len() <= max, "a frame of {} > {max}", payload.len());
    }
}

proptest! {
    #[test]
    fn lines_any_split_decodes_the_same(
        stream in line_bytes(200),
        max in 0usize..24,
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let lines = Lines::new(max);
        let at_once = decode_in_reads(lines, &stream, &[]);
        let in_reads = decode_in_reads(lines, &stream, &cuts_of(stream.len(), &cuts));
        assert_within(&at_once, max);
        prop_assert_eq!(in_reads, at_once);
    }

    #[test]
    fn lines_byte_by_byte_decode_the_same(stream in line_bytes(120), max in 0usize..24) {
        let lines = Lines::new(max);
        let every_byte: Vec<usize> = (0..stream.len()).collect();
        prop_assert_eq!(
            decode_in_reads(lines, &stream, &every_byte),
            decode_in_reads(lines, &stream, &[])
        );
    }

    #[test]
    fn length_prefixed_any_split_decodes_the_same(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..8),
        tail in prop::collection::vec(any::<u8>(), 0..12),
        width in width(),
        order in order(),
        max in 0usize..32,
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        // Encoded with room for all of them, so some pass `max`.
        let wide = LengthPrefixed::new(width, order, 255);
        let mut stream = Vec::new();
        for payload in &payloads {
            wide.encode(payload, &mut stream).expect("within 255");
        }
        stream.extend_from_slice(&tail);
        let codec = LengthPrefixed::new(width, order, max);
        let at_once = decode_in_reads(codec, &stream, &[]);
        let in_reads = decode_in_reads(codec, &stream, &cuts_of(stream.len(), &cuts));
        assert_within(&at_once, max);
        prop_assert_eq!(in_reads, at_once);
    }

    #[test]
    fn random_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        max in prop_oneof![0usize..300, Just(usize::MAX)],
        width in width(),
        order in order(),
    ) {
        let lines = Lines::new(max);
        let _ = lines.decode(&bytes);
        let _ = lines.decode_eof(&bytes);
        assert_within(&decode_in_reads(lines, &bytes, &[]), max);
        let codec = LengthPrefixed::new(width, order, max);
        let _ = codec.decode(&bytes);
        let _ = codec.decode_eof(&bytes);
        assert_within(&decode_in_reads(codec, &bytes, &[]), codec.max_length());
    }

    #[test]
    fn an_over_long_line_is_always_reported(
        before in prop::collection::vec(plain_line(12), 0..5),
        max in 0usize..12,
        extra in 1usize..40,
        after in line_bytes(40),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let lines = Lines::new(max);
        let before: Vec<Vec<u8>> = before.into_iter().filter(|l| l.len() <= max).collect();
        let mut stream = Vec::new();
        for line in &before {
            lines.encode(line, &mut stream).expect("within max");
        }
        // max + extra bytes with no '\n' that a stripped '\r' cannot bring
        // back within max.
        let mut long = vec![b'x'; max + extra];
        if extra > 1 {
            long[max] = b'\r';
        }
        stream.extend_from_slice(&long);
        stream.extend_from_slice(&after);
        let decoded = decode_in_reads(lines, &stream, &cuts_of(stream.len(), &cuts));
        prop_assert_eq!(decoded.payloads, before);
        prop_assert_eq!(decoded.error, Some(FrameError::LineTooLong { max }));
    }

    #[test]
    fn an_over_long_frame_is_always_reported(
        before in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..16), 0..5),
        width in width(),
        order in order(),
        max in 0usize..16,
        excess in 1u64..1000,
        after in prop::collection::vec(any::<u8>(), 0..40),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let codec = LengthPrefixed::new(width, order, max);
        let before: Vec<Vec<u8>> = before.into_iter().filter(|p| p.len() <= max).collect();
        let mut stream = Vec::new();
        for payload in &before {
            codec.encode(payload, &mut stream).expect("within max");
        }
        let len = (max as u64 + excess).min(if width == 1 { 255 } else { u64::MAX });
        prop_assume!(len > max as u64);
        match order {
            ByteOrder::Big => stream.extend_from_slice(&len.to_be_bytes()[8 - width..]),
            ByteOrder::Little => stream.extend_from_slice(&len.to_le_bytes()[..width]),
        }
        stream.extend_from_slice(&after);
        let decoded = decode_in_reads(codec, &stream, &cuts_of(stream.len(), &cuts));
        prop_assert_eq!(decoded.payloads, before);
        prop_assert_eq!(decoded.error, Some(FrameError::FrameTooLong { len, max }));
    }

    #[test]
    fn lines_round_trip(
        payloads in prop::collection::vec(plain_line(30), 0..10),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let lines = Lines::new(30);
        let mut stream = Vec::new();
        for line in &payloads {
            lines.encode(line, &mut stream).expect("within max");
        }
        let decoded = decode_in_reads(lines, &stream, &cuts_of(stream.len(), &cuts));
        prop_assert_eq!(decoded, Decoded { payloads, error: None, leftover: Vec::new() });
    }

    #[test]
    fn length_prefixed_round_trip(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 0..10),
        width in width(),
        order in order(),
        cuts in prop::collection::vec(any::<Index>(), 0..12),
    ) {
        let codec = LengthPrefixed::new(width, order, 300);
        let mut stream = Vec::new();
        let mut sent = Vec::new();
        for payload in payloads {
            match codec.encode(&payload, &mut stream) {
                Ok(()) => sent.push(payload),
                Err(error) => {
                    // Only a one-byte prefix cannot say 256..300.
                    prop_assert_eq!(width, 1);
                    prop_assert!(payload.len() > 255);
                    prop_assert_eq!(error, FrameError::FrameTooLong { len: payload.len() as u64, max: 255 });
                }
            }
        }
        let decoded = decode_in_reads(codec, &stream, &cuts_of(stream.len(), &cuts));
        prop_assert_eq!(decoded, Decoded { payloads: sent, error: None, leftover: Vec::new() });
    }
}
