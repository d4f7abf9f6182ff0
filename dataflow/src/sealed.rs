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

/// Marks a packed body ([`write_packed_with_checksum`]). The plain bodies
/// packed (staged outputs, pending-row frames) begin with a sequence's
/// length, a varint, whose first byte is at most 0xFE: a body without the
/// mark is plain, as older binaries wrote them.
const PACKED: &[u8; 4] = b"\xffLZ4";

/// What [`write_packed_with_checksum`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packed {
    /// Bytes written: the packed body and its checksum.
    pub written: u64,
    /// The plain bincode's bytes.
    pub plain: u64,
}

/// `value` in [`codec`]'s form, compressed, streamed into `w`, then a CRC-32
/// of what was written. For the files synced before every commit (staged
/// outputs, pending-row frames): their JSON values shrink several times
/// over, and a sync costs by the bytes it writes back, far more than LZ4
/// costs by the bytes it reads. The body is the mark, then LZ4 blocks, each
/// after its packed and plain lengths (u32, little endian): a block per
/// `buffer` plain bytes, or per longer slice bincode writes at once (a big
/// value). LZ4's block format, not its frame format: the frame's own
/// checksum would be a second one.
pub fn write_packed_with_checksum<T, W>(w: W, value: &T, buffer: usize) -> bincode::Result<Packed>
where
    T: Serialize + ?Sized,
    W: std::io::Write,
{
    use bincode::Options;
    use std::io::Write;
    let mut checked = Checksummed {
        inner: w,
        crc: crc32fast::Hasher::new(),
        bytes: 0,
    };
    checked.write_all(PACKED)?;
    let mut out = std::io::BufWriter::with_capacity(
        buffer,
        Lz4Blocks {
            inner: checked,
            block: Vec::new(),
            plain: 0,
        },
    );
    codec().serialize_into(&mut out, value)?;
    let blocks = out.into_inner().map_err(|e| e.into_error())?;
    let mut checked = blocks.inner;
    let crc = checked.crc.finalize();
    checked.inner.write_all(&crc.to_be_bytes())?;
    Ok(Packed {
        written: checked.bytes + 4,
        plain: blocks.plain,
    })
}

/// A writer that packs each write as one LZ4 block: behind a `BufWriter`,
/// each full buffer (or a larger slice it passes straight on).
struct Lz4Blocks<W> {
    inner: W,
    /// The last block packed, kept for its allocation.
    block: Vec<u8>,
    /// Plain bytes packed so far.
    plain: u64,
}

impl<W: std::io::Write> std::io::Write for Lz4Blocks<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let plain = u32::try_from(buf.len()).map_err(std::io::Error::other)?;
        self.block
            .resize(lz4_flex::block::get_maximum_output_size(buf.len()), 0);
        let n =
            lz4_flex::block::compress_into(buf, &mut self.block).map_err(std::io::Error::other)?;
        let packed = u32::try_from(n).map_err(std::io::Error::other)?;
        self.inner.write_all(&packed.to_le_bytes())?;
        self.inner.write_all(&plain.to_le_bytes())?;
        self.inner
            .write_all(self.block.get(..n).unwrap_or_default())?;
        self.plain += u64::from(plain);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// The bincode in a checked `body`: unpacked if [`write_packed_with_checksum`]
/// wrote it, as it is if it is plain.
pub fn unpacked(body: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, Unsealed> {
    let Some(mut rest) = body.strip_prefix(PACKED) else {
        return Ok(std::borrow::Cow::Borrowed(body));
    };
    let broken = |what: &str| Unsealed::Decode(format!("packed body: {what}"));
    let mut plain = Vec::new();
    while !rest.is_empty() {
        let (head, tail) = rest
            .split_at_checked(8)
            .ok_or_else(|| broken("a block's lengths cut short"))?;
        let length = |at: usize| {
            let bytes: [u8; 4] = head
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .unwrap_or_default();
            u32::from_le_bytes(bytes) as usize
        };
        let (packed, size) = (length(0), length(4));
        // LZ4 unpacks at most about 255 bytes from one: a larger claim is
        // refused before it is allocated.
        if size > packed.saturating_mul(256).saturating_add(64) {
            return Err(broken("a block claims more than LZ4 unpacks from it"));
        }
        let (block, tail) = tail
            .split_at_checked(packed)
            .ok_or_else(|| broken("a block cut short"))?;
        let start = plain.len();
        plain.resize(start + size, 0);
        let n = lz4_flex::block::decompress_into(block, &mut plain[start..])
            .map_err(|e| broken(&e.to_string()))?;
        if n != size {
            return Err(broken("a block of another size than its lengths say"));
        }
        rest = tail;
    }
    Ok(std::borrow::Cow::Owned(plain))
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
    fn packed_bincode_round_trips_and_plain_bodies_still_read() {
        use bincode::Options;
        let value: Vec<(String, Vec<u8>)> = (0..5000)
            .map(|i| (format!("key-{i}"), vec![i as u8; i % 300]))
            .collect();
        let plain = bincode_with_checksum(&value).unwrap();
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
        let mut packed = Trickle(Vec::new());
        let n = write_packed_with_checksum(&mut packed, &value, 4096).unwrap();
        let packed = packed.0;
        assert_eq!(n.written, packed.len() as u64);
        assert_eq!(n.plain + 4, plain.len() as u64);
        assert!(
            packed.len() * 4 < plain.len(),
            "{} bytes packed, {} plain",
            packed.len(),
            plain.len()
        );
        let read = |bytes: &[u8]| -> Vec<(String, Vec<u8>)> {
            let body = unpacked(checked_body(bytes).unwrap()).unwrap();
            codec().deserialize(&body).unwrap()
        };
        assert_eq!(read(&packed), value);
        assert_eq!(read(&plain), value, "an older, plain body reads as it is");
        let mut flipped = packed.clone();
        flipped[100] ^= 1;
        assert!(checked_body(&flipped).is_err());
        // A body whose checksum holds but whose blocks do not add up.
        let body = checked_body(&packed).unwrap();
        for cut in [body.len() - 1, PACKED.len() + 5] {
            assert!(unpacked(&body[..cut]).is_err(), "cut at {cut}");
        }
        let mut lying = body.to_vec();
        lying[PACKED.len() + 4] ^= 1; // the first block's plain length
        assert!(unpacked(&lying).is_err());
        // A block claiming gigabytes from nothing is refused, not allocated.
        let huge = [&PACKED[..], &0u32.to_le_bytes(), &u32::MAX.to_le_bytes()].concat();
        assert!(unpacked(&huge).is_err());
    }
}
