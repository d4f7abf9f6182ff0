//! The Confluent wire format: a zero magic byte, the schema id as a 4-byte
//! big-endian integer, then the encoded value. Protobuf values put the path
//! of message indexes to their message type between the id and the message.

/// The first byte of every framed value.
pub const MAGIC: u8 = 0;

/// Why a value is not in the wire format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Shorter than the five-byte header, or a first byte other than [`MAGIC`].
    NotFramed,
    /// The Protobuf message indexes run past the end or are negative.
    BadIndexes,
}

/// The schema id and the encoded value of a framed `payload`.
pub fn split(payload: &[u8]) -> Result<(u32, &[u8]), FrameError> {
    match payload {
        [MAGIC, a, b, c, d, body @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), body)),
        _ => Err(FrameError::NotFramed),
    }
}

/// `body` framed under schema `id`.
pub fn frame(id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + body.len());
    out.push(MAGIC);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// Splits a Protobuf body into its message indexes and the message: a
/// zig-zag varint count, then that many zig-zag varints; a count of zero
/// stands for the path `[0]` (the file's first message).
pub fn split_indexes(body: &[u8]) -> Result<(Vec<usize>, &[u8]), FrameError> {
    let mut rest = body;
    let count = zigzag(&mut rest)?;
    if count == 0 {
        return Ok((vec![0], rest));
    }
    // Each index takes at least a byte: a count beyond the body is a lie.
    if count < 0 || count as usize > rest.len() {
        return Err(FrameError::BadIndexes);
    }
    let mut path = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let i = zigzag(&mut rest)?;
        path.push(usize::try_from(i).map_err(|_| FrameError::BadIndexes)?);
    }
    Ok((path, rest))
}

/// The message-index prefix of the message at `path` (`[0]` as one zero byte).
pub fn indexes(path: &[usize]) -> Vec<u8> {
    if path == [0] {
        return vec![0];
    }
    let mut out = Vec::new();
    put_zigzag(&mut out, path.len() as i64);
    for &i in path {
        put_zigzag(&mut out, i as i64);
    }
    out
}

fn zigzag(rest: &mut &[u8]) -> Result<i64, FrameError> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let (&byte, tail) = rest.split_first().ok_or(FrameError::BadIndexes)?;
        *rest = tail;
        value |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok((value >> 1) as i64 ^ -((value & 1) as i64));
        }
    }
    Err(FrameError::BadIndexes)
}

fn put_zigzag(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_frame_is_magic_big_endian_id_and_body() {
        let framed = frame(0x0102_0304, b"xyz");
        assert_eq!(framed, [0, 1, 2, 3, 4, b'x', b'y', b'z']);
        assert_eq!(split(&framed), Ok((0x0102_0304, &b"xyz"[..])));
        assert_eq!(split(&[0, 0, 0, 0, 7]), Ok((7, &b""[..])));
    }

    #[test]
    fn json_text_and_short_values_are_not_framed() {
        for bad in [
            &b"{\"device_id\":1}"[..],
            b"",
            b"\0\0\0\0",
            b"\x01\0\0\0\x01x",
        ] {
            assert_eq!(split(bad), Err(FrameError::NotFramed), "{bad:?}");
        }
    }

    #[test]
    fn message_indexes_read_as_confluent_writes_them() {
        // The first message: a single zero byte.
        assert_eq!(split_indexes(&[0, 9]), Ok((vec![0], &[9u8][..])));
        // [1]: count 1 (zig-zag 2), index 1 (zig-zag 2).
        assert_eq!(split_indexes(&[2, 2, 9]), Ok((vec![1], &[9u8][..])));
        // [0, 2]: the third message nested in the first.
        assert_eq!(split_indexes(&[4, 0, 4]), Ok((vec![0, 2], &[][..])));
        assert_eq!(indexes(&[0]), [0]);
        assert_eq!(indexes(&[1]), [2, 2]);
        for bad in [
            &[][..],
            &[2][..],
            &[0x80][..],
            &[1, 1][..],
            &[2, 1][..],
            &[40, 0][..],
        ] {
            assert_eq!(split_indexes(bad), Err(FrameError::BadIndexes), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn indexes_round_trip(path in proptest::collection::vec(0usize..100_000, 1..6), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut bytes = indexes(&path);
            bytes.extend_from_slice(&tail);
            prop_assert_eq!(split_indexes(&bytes), Ok((path, &tail[..])));
        }

        #[test]
        fn splitting_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = split(&bytes);
            let _ = split_indexes(&bytes);
        }
    }
}
