//! Framing edge cases: empty lines, `\r\n`, a lone `\r`, the maximum exactly
//! and one past it, EOF, every prefix width and byte order.

use tcp_reactor::framing::{ByteOrder, Frame, FrameError, LengthPrefixed, Lines};

fn frame(payload: &[u8], consumed: usize) -> Option<Frame<'_>> {
    Some(Frame { payload, consumed })
}

#[test]
fn empty_lines() {
    let lines = Lines::new(4);
    assert_eq!(lines.decode(b"\n"), Ok(frame(b"", 1)));
    assert_eq!(lines.decode(b"\r\n"), Ok(frame(b"", 2)));
    assert_eq!(lines.decode(b""), Ok(None));
    assert_eq!(Lines::new(0).decode(b"\r\n"), Ok(frame(b"", 2)));
    assert_eq!(
        Lines::new(0).decode(b"x"),
        Err(FrameError::LineTooLong { max: 0 })
    );
}

#[test]
fn carriage_returns() {
    let lines = Lines::new(8);
    // Only one trailing '\r' is stripped; one elsewhere is payload.
    assert_eq!(lines.decode(b"a\rb\n"), Ok(frame(b"a\rb", 4)));
    assert_eq!(lines.decode(b"ab\r\r\n"), Ok(frame(b"ab\r", 5)));
    assert_eq!(lines.decode(b"\r"), Ok(None));
    assert_eq!(lines.decode(b"ab\r"), Ok(None));
}

#[test]
fn maximum_exactly_and_one_past() {
    let lines = Lines::new(3);
    assert_eq!(lines.decode(b"abc\n"), Ok(frame(b"abc", 4)));
    assert_eq!(lines.decode(b"abc\r\n"), Ok(frame(b"abc", 5)));
    assert_eq!(lines.decode(b"abc"), Ok(None));
    // max + 1 bytes ending in '\r' may still be "abc\r\n".
    assert_eq!(lines.decode(b"abc\r"), Ok(None));
    let too_long = Err(FrameError::LineTooLong { max: 3 });
    assert_eq!(lines.decode(b"abcd"), too_long);
    assert_eq!(lines.decode(b"abcd\n"), too_long);
    assert_eq!(lines.decode(b"abc\rx"), too_long);
    assert_eq!(lines.decode(b"abcd\r\n"), too_long);
    assert_eq!(lines.decode_eof(b"abcd"), too_long);
}

#[test]
fn lines_at_eof() {
    let lines = Lines::new(3);
    assert_eq!(lines.decode_eof(b""), Ok(None));
    assert_eq!(lines.decode_eof(b"\r"), Ok(None));
    assert_eq!(lines.decode_eof(b"ab"), Ok(frame(b"ab", 2)));
    assert_eq!(lines.decode_eof(b"abc\r"), Ok(frame(b"abc", 4)));
    assert_eq!(lines.decode_eof(b"a\nb"), Ok(frame(b"a", 2)));
}

#[test]
fn encode_lines() {
    let lines = Lines::new(3);
    let mut out = b"x\n".to_vec();
    assert_eq!(lines.encode(b"abc", &mut out), Ok(()));
    assert_eq!(lines.encode(b"", &mut out), Ok(()));
    assert_eq!(
        lines.encode(b"abcd", &mut out),
        Err(FrameError::LineTooLong { max: 3 })
    );
    assert_eq!(out, b"x\nabc\n\n");
}

#[test]
fn frames_stop_after_an_error_and_count_what_they_used() {
    let lines = Lines::new(3);
    let mut frames = lines.frames(b"a\n\nabcdef\nb\n");
    assert_eq!(frames.next(), Some(Ok(&b"a"[..])));
    assert_eq!(frames.next(), Some(Ok(&b""[..])));
    assert_eq!(frames.consumed(), 3);
    assert_eq!(frames.next(), Some(Err(FrameError::LineTooLong { max: 3 })));
    assert_eq!(frames.next(), None);
    assert_eq!(frames.consumed(), 3);
    assert_eq!(frames.remaining(), b"abcdef\nb\n");

    let mut frames = lines.frames(b"ab\ncd");
    assert_eq!(frames.by_ref().count(), 1);
    assert_eq!(frames.consumed(), 3);
}

#[test]
fn error_messages_are_clear() {
    assert_eq!(
        FrameError::LineTooLong { max: 8192 }.to_string(),
        "line longer than 8192 bytes"
    );
    assert_eq!(
        FrameError::FrameTooLong {
            len: 70000,
            max: 65535
        }
        .to_string(),
        "frame of 70000 bytes is longer than the maximum of 65535 bytes"
    );
    assert_eq!(
        FrameError::Truncated { buffered: 3 }.to_string(),
        "stream ended inside a frame (3 bytes of it received)"
    );
}

#[test]
fn prefixes_of_every_width_and_order() {
    let cases: [(usize, ByteOrder, &[u8]); 8] = [
        (1, ByteOrder::Big, b"\x03"),
        (1, ByteOrder::Little, b"\x03"),
        (2, ByteOrder::Big, b"\x00\x03"),
        (2, ByteOrder::Little, b"\x03\x00"),
        (4, ByteOrder::Big, b"\x00\x00\x00\x03"),
        (4, ByteOrder::Little, b"\x03\x00\x00\x00"),
        (8, ByteOrder::Big, b"\x00\x00\x00\x00\x00\x00\x00\x03"),
        (8, ByteOrder::Little, b"\x03\x00\x00\x00\x00\x00\x00\x00"),
    ];
    for (width, order, prefix) in cases {
        let codec = LengthPrefixed::new(width, order, 100);
        let mut out = Vec::new();
        codec.encode(b"abc", &mut out).expect("fits");
        assert_eq!(&out[..width], prefix, "width {width} {order:?}");
        assert_eq!(&out[width..], b"abc");
        assert_eq!(codec.decode(&out), Ok(frame(b"abc", width + 3)));
        for cut in 0..out.len() {
            assert_eq!(codec.decode(&out[..cut]), Ok(None));
        }
    }
}

#[test]
fn length_maximum_exactly_and_one_past() {
    let codec = LengthPrefixed::new(2, ByteOrder::Big, 3);
    assert_eq!(codec.decode(b"\x00\x03abcX"), Ok(frame(b"abc", 5)));
    assert_eq!(codec.decode(b"\x00\x00"), Ok(frame(b"", 2)));
    // Refused from the prefix alone.
    let too_long = FrameError::FrameTooLong { len: 4, max: 3 };
    assert_eq!(codec.decode(b"\x00\x04"), Err(too_long.clone()));
    let mut out = Vec::new();
    assert_eq!(codec.encode(b"abcd", &mut out), Err(too_long));
    assert!(out.is_empty());
    // The largest 8-byte length is refused, not overflowed.
    let wide = LengthPrefixed::new(8, ByteOrder::Little, usize::MAX);
    assert_eq!(
        wide.decode(&[0xff; 8]),
        if usize::BITS == 64 {
            Ok(None)
        } else {
            Err(FrameError::FrameTooLong {
                len: u64::MAX,
                max: usize::MAX,
            })
        }
    );
}

#[test]
fn maximum_capped_at_what_the_prefix_can_say() {
    assert_eq!(
        LengthPrefixed::new(1, ByteOrder::Big, 1000).max_length(),
        255
    );
    assert_eq!(
        LengthPrefixed::new(2, ByteOrder::Big, 1 << 20).max_length(),
        65535
    );
    assert_eq!(LengthPrefixed::new(4, ByteOrder::Big, 10).max_length(), 10);
    let codec = LengthPrefixed::new(1, ByteOrder::Big, 1000);
    let mut out = Vec::new();
    assert_eq!(
        codec.encode(&[0; 256], &mut out),
        Err(FrameError::FrameTooLong { len: 256, max: 255 })
    );
}

#[test]
#[should_panic(expected = "width must be 1, 2, 4 or 8")]
fn other_widths_panic() {
    let _ = LengthPrefixed::new(3, ByteOrder::Big, 10);
}

#[test]
fn length_prefixed_at_eof() {
    let codec = LengthPrefixed::new(4, ByteOrder::Big, 10);
    assert_eq!(codec.decode_eof(b""), Ok(None));
    assert_eq!(codec.decode_eof(b"\x00\x00\x00\x01a"), Ok(frame(b"a", 5)));
    assert_eq!(
        codec.decode_eof(b"\x00\x00"),
        Err(FrameError::Truncated { buffered: 2 })
    );
    assert_eq!(
        codec.decode_eof(b"\x00\x00\x00\x02a"),
        Err(FrameError::Truncated { buffered: 5 })
    );
    assert_eq!(
        codec.decode_eof(b"\x00\x00\x00\x0b"),
        Err(FrameError::FrameTooLong { len: 11, max: 10 })
    );
}
