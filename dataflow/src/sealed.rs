//! Checksummed JSON, the storage form of snapshots and commit records: the
//! JSON text, then a CRC-32 of it (4 bytes, big endian), so torn or flipped
//! bytes are recognised instead of trusted.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// Why sealed bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unsealed {
    #[error("{0} bytes: too short to hold a checksum")]
    Truncated(usize),
    #[error("checksum mismatch (stored {stored:08x}, computed {computed:08x})")]
    Checksum { stored: u32, computed: u32 },
    #[error("not valid: {0}")]
    Decode(String),
}

/// `value` as JSON followed by its CRC-32. Fails only if `value` cannot be
/// JSON (e.g. a map with non-string keys): an error, never an empty body.
pub fn seal<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    Ok(with_checksum(serde_json::to_vec(value)?))
}

/// `body` followed by its CRC-32 (4 bytes, big endian).
pub fn with_checksum(mut body: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    body
}

/// The bincode form of the binary state files (snapshots, staged outputs,
/// pending rows): integers as varints.
pub fn codec() -> impl bincode::Options + Copy {
    use bincode::Options;
    bincode::DefaultOptions::new().with_varint_encoding()
}

/// `value` in [`codec`]'s form followed by its CRC-32, in a buffer sized
/// once by a counting pass: snapshots and staged outputs run to megabytes,
/// and a buffer that grows by doubling copies and faults in each of them
/// several times over.
pub fn bincode_with_checksum<T: Serialize + ?Sized>(value: &T) -> bincode::Result<Vec<u8>> {
    use bincode::Options;
    let size = codec().serialized_size(value)?;
    let mut body = Vec::with_capacity(usize::try_from(size).unwrap_or(0).saturating_add(4));
    codec().serialize_into(&mut body, value)?;
    let crc = crc32fast::hash(&body);
    body.extend_from_slice(&crc.to_be_bytes());
    Ok(body)
}

/// What [`bincode_with_checksum`] returns, streamed into `w` instead: for
/// files written once and read only after a crash (staged outputs), where
/// a buffer of the whole file would be faulted in and copied for nothing.
/// Small writes gather in a buffer of `buffer` bytes; the checksum is taken
/// over each full buffer, not over bincode's many small writes. Returns the
/// bytes written.
pub fn write_bincode_with_checksum<T, W>(w: W, value: &T, buffer: usize) -> bincode::Result<u64>
where
    T: Serialize + ?Sized,
    W: std::io::Write,
{
    use bincode::Options;
    let mut out = std::io::BufWriter::with_capacity(
        buffer,
        Checksummed {
            inner: w,
            crc: crc32fast::Hasher::new(),
            bytes: 0,
        },
    );
    codec().serialize_into(&mut out, value)?;
    let mut out = out.into_inner().map_err(|e| e.into_error())?;
    let crc = out.crc.finalize();
    out.inner.write_all(&crc.to_be_bytes())?;
    Ok(out.bytes + 4)
}

/// A writer that keeps a CRC-32 and a count of what passes through it.
struct Checksummed<W> {
    inner: W,
    crc: crc32fast::Hasher,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for Checksummed<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        let written = buf.get(..n).unwrap_or(buf);
        self.crc.update(written);
        self.bytes += written.len() as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The body of `bytes` written by [`with_checksum`], if the checksum holds.
pub fn checked_body(bytes: &[u8]) -> Result<&[u8], Unsealed> {
    let Some(split) = bytes.len().checked_sub(4) else {
        return Err(Unsealed::Truncated(bytes.len()));
    };
    let (body, tail) = bytes.split_at(split);
    let stored = u32::from_be_bytes([tail[0], tail[1], tail[2], tail[3]]);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(Unsealed::Checksum { stored, computed });
    }
    Ok(body)
}

/// The value sealed in `bytes`, if the checksum holds and the JSON parses.
pub fn unseal<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Unsealed> {
    serde_json::from_slice(checked_body(bytes)?).map_err(|e| Unsealed::Decode(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streamed_and_buffered_bincode_are_the_same_bytes_and_check() {
        use bincode::Options;
        let value: Vec<(String, Vec<u8>)> = (0..5000)
            .map(|i| (format!("key-{i}"), vec![i as u8; i % 300]))
            .collect();
        let buffered = bincode_with_checksum(&value).unwrap();
        // A writer that takes a few bytes at a time: the checksum covers what was written.
        struct Trickle(Vec<u8>);
        impl std::io::Write for Trickle {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7);
                self.0.extend_from_slice(&buf[..n]);
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut streamed = Trickle(Vec::new());
        let n = write_bincode_with_checksum(&mut streamed, &value, 64).unwrap();
        assert_eq!(n, buffered.len() as u64);
        assert_eq!(streamed.0, buffered);
        let body = checked_body(&streamed.0).unwrap();
        let back: Vec<(String, Vec<u8>)> = codec().deserialize(body).unwrap();
        assert_eq!(back, value);
        let mut flipped = streamed.0;
        flipped[100] ^= 1;
        assert!(checked_body(&flipped).is_err());
    }
}
