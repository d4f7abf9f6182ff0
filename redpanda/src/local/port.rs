//! Free loopback ports for brokers, peers and status servers.

use std::net::{TcpListener, UdpSocket};
use std::path::PathBuf;

use crate::error::{Error, Result};

/// A port on 127.0.0.1 that was free a moment ago, for TCP and UDP alike
/// (a process's hostfile port carries both: timely's connections and the
/// peer heartbeats).
///
/// Picked at random below the kernel's ephemeral range: a port from that
/// range (what `bind(0)` returns) can be handed to any outgoing connection or
/// `bind(0)` between this check and the caller's own bind, and a machine
/// running many brokers and clients at once makes that happen. Only a port
/// from the range is left when none below it is free.
pub fn free_port() -> Result<u16> {
    const BELOW_EPHEMERAL: std::ops::Range<u32> = 10_000..32_768;
    let free = |port: u16| {
        TcpListener::bind(("127.0.0.1", port)).is_ok()
            && UdpSocket::bind(("127.0.0.1", port)).is_ok()
    };
    let span = BELOW_EPHEMERAL.end - BELOW_EPHEMERAL.start;
    for _ in 0..64 {
        let offset = u32::try_from(random_u64() % u64::from(span)).unwrap_or(0);
        let port = u16::try_from(BELOW_EPHEMERAL.start + offset).unwrap_or(0);
        if port != 0 && free(port) {
            return Ok(port);
        }
    }
    let io = |source| Error::Io {
        what: "find a free port",
        path: PathBuf::new(),
        source,
    };
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io)?;
    listener.local_addr().map(|a| a.port()).map_err(io)
}

/// A random number from the standard library's per-process random keys and
/// the clock: enough to spread ports, no generator needed.
fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.write_u32(std::process::id());
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_free_port_takes_tcp_and_udp_and_lies_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..8).map(|_| free_port().unwrap()).collect();
        for &port in &ports {
            assert!((10_000..32_768).contains(&port), "{port}");
            let _tcp = TcpListener::bind(("127.0.0.1", port)).unwrap();
            let _udp = UdpSocket::bind(("127.0.0.1", port)).unwrap();
        }
        let mut distinct = ports.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(distinct.len() > 1, "the same port every time: {ports:?}");
    }
}
