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
