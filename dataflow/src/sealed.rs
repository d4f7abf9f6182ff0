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
