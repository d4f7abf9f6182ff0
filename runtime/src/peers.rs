//! A liveness watchdog between the processes of one job. Timely's progress
//! alone cannot name a silent peer: a process that stopped (SIGSTOP, a
//! frozen VM, a cut link) just holds every other one back. Each process
//! sends a small UDP heartbeat to every peer, on the port of its own
//! hostfile entry (UDP beside timely's TCP), and stops the job when a peer
//! has been silent for longer than the timeout, naming it.
//!
//! ```text
//!   every timeout/5: "iotflow-hb <job> <index> beat" ──UDP──▶ each peer's host:port
//!   received beats ──▶ PeerWatch::heard(peer)      a clean end sends "… bye": no longer watched
//!   PeerWatch::overdue(now) ──Some(peer)──▶ the caller stops the process, naming the peer
//! ```
//!
//! `PeerWatch` is the pure part; `watch` is the thin UDP adapter.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

/// Who was heard from when. A peer not heard from yet is given the timeout
/// from the watch's start (processes start at slightly different times).
#[derive(Debug, Clone)]
pub struct PeerWatch {
    me: usize,
    timeout: Duration,
    started: Instant,
    /// Per process: last heard, or gone (it said goodbye).
    last: Vec<Option<Instant>>,
    gone: Vec<bool>,
}

impl PeerWatch {
    pub fn new(me: usize, processes: usize, timeout: Duration, now: Instant) -> Self {
        Self {
            me,
            timeout,
            started: now,
            last: vec![None; processes],
            gone: vec![false; processes],
        }
    }

    pub fn heard(&mut self, peer: usize, now: Instant) {
        if let Some(l) = self.last.get_mut(peer) {
            *l = Some(now);
        }
    }

    /// `peer` ended cleanly: its silence from now on is no fault.
    pub fn gone(&mut self, peer: usize) {
        if let Some(g) = self.gone.get_mut(peer) {
            *g = true;
        }
    }

    /// The first peer silent for longer than the timeout, and for how long.
    pub fn overdue(&self, now: Instant) -> Option<(usize, Duration)> {
        (0..self.last.len())
            .filter(|&p| p != self.me && !self.gone[p])
            .map(|p| (p, now.duration_since(self.last[p].unwrap_or(self.started))))
            .find(|(_, silent)| *silent > self.timeout)
    }
}

/// A heartbeat datagram: `iotflow-hb <job> <process> beat|bye`.
pub fn datagram(job: &str, process: usize, bye: bool) -> String {
    format!(
        "iotflow-hb {job} {process} {}",
        if bye { "bye" } else { "beat" }
    )
}

/// A received datagram of job `job`: (sender, bye?).
pub fn parse(datagram: &[u8], job: &str) -> Option<(usize, bool)> {
    let text = std::str::from_utf8(datagram).ok()?;
    let rest = text.strip_prefix("iotflow-hb ")?;
    let (kind_rest, kind) = rest.rsplit_once(' ')?;
    let (name, process) = kind_rest.rsplit_once(' ')?;
    if name != job {
        return None;
    }
    let bye = match kind {
        "beat" => false,
        "bye" => true,
        _ => return None,
    };
    Some((process.parse().ok()?, bye))
}

/// A silent peer: who, at which address, for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SilentPeer {
    pub process: usize,
    pub addr: String,
    pub silent: Duration,
}

/// Watches the peers of process `me` (`hosts` in process order) until one
/// is silent for longer than `timeout`; returns it. Errors: the socket.
pub async fn watch(
    job: &str,
    me: usize,
    hosts: &[String],
    timeout: Duration,
) -> std::io::Result<SilentPeer> {
    let port = hosts
        .get(me)
        .and_then(|h| h.rsplit_once(':'))
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| std::io::Error::other("no port for this process in the hostfile"))?;
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))).await?;
    let mut peers = PeerWatch::new(me, hosts.len(), timeout, Instant::now());
    let beat = datagram(job, me, false);
    let every = (timeout / 5).max(Duration::from_millis(50));
    let mut tick = tokio::time::interval(every);
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            _ = tick.tick() => {
                for host in hosts.iter().enumerate().filter(|(p, _)| *p != me).map(|(_, h)| h) {
                    // A peer not up yet, or a name that does not resolve: try again next tick.
                    let _ = socket.send_to(beat.as_bytes(), host.as_str()).await;
                }
                if let Some((process, silent)) = peers.overdue(Instant::now()) {
                    let addr = hosts.get(process).cloned().unwrap_or_default();
                    return Ok(SilentPeer { process, addr, silent });
                }
            }
            received = socket.recv_from(&mut buf) => {
                if let Ok((n, _)) = received
                    && let Some((peer, bye)) = parse(&buf[..n], job)
                {
                    match bye {
                        true => peers.gone(peer),
                        false => peers.heard(peer, Instant::now()),
                    }
                }
            }
        }
    }
}

/// A broken connection to a peer, from a panic of one of timely's
/// communication threads (`timely:send-N` and `timely:recv-N` talk to
/// process N; their panics begin "timely communication error:", wording
/// timely keeps for crates that look for it): the peer and the cause.
pub fn broken_link<'a>(thread: &str, panic_message: &'a str) -> Option<(usize, &'a str)> {
    let cause = panic_message.strip_prefix("timely communication error: ")?;
    let peer = thread
        .strip_prefix("timely:send-")
        .or_else(|| thread.strip_prefix("timely:recv-"))?;
    Some((peer.parse().ok()?, cause))
}

/// Tells every peer this process ended cleanly (best effort).
pub async fn say_goodbye(job: &str, me: usize, hosts: &[String]) {
    let Ok(socket) = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0))).await else {
        return;
    };
    let bye = datagram(job, me, true);
    for host in hosts
        .iter()
        .enumerate()
        .filter(|(p, _)| *p != me)
        .map(|(_, h)| h)
    {
        let _ = socket.send_to(bye.as_bytes(), host.as_str()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_overdue_past_the_timeout_and_not_once_gone() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        let mut w = PeerWatch::new(0, 3, s(10), t0);
        assert_eq!(
            w.overdue(t0 + s(9)),
            None,
            "the start gives every peer the timeout"
        );
        w.heard(1, t0 + s(5));
        assert_eq!(
            w.overdue(t0 + s(11)),
            Some((2, s(11))),
            "never heard: from the start"
        );
        w.heard(2, t0 + s(11));
        assert_eq!(w.overdue(t0 + s(14)), None);
        assert_eq!(w.overdue(t0 + s(16)), Some((1, s(11))));
        w.gone(1);
        assert_eq!(
            w.overdue(t0 + s(16)),
            None,
            "a peer that said goodbye is not watched"
        );
        assert_eq!(w.overdue(t0 + s(22)), Some((2, s(11))));
    }

    #[test]
    fn a_broken_link_is_read_from_timely_s_communication_panics() {
        let m = "timely communication error: reading data: socket closed";
        assert_eq!(
            broken_link("timely:recv-2", m),
            Some((2, "reading data: socket closed"))
        );
        assert_eq!(broken_link("timely:send-10", m).map(|b| b.0), Some(10));
        assert_eq!(broken_link("timely:work-0", m), None, "a worker's panic");
        assert_eq!(broken_link("timely:recv-1", "MergeQueue poisoned."), None);
    }

    #[test]
    fn datagrams_name_their_job_and_sender() {
        let d = datagram("plant 3", 2, false);
        assert_eq!(parse(d.as_bytes(), "plant 3"), Some((2, false)));
        assert_eq!(
            parse(datagram("plant 3", 1, true).as_bytes(), "plant 3"),
            Some((1, true))
        );
        assert_eq!(
            parse(d.as_bytes(), "another"),
            None,
            "another job's beats are not ours"
        );
        for junk in [
            &b"hello"[..],
            b"iotflow-hb x y beat",
            b"iotflow-hb j 1 dance",
            &[0xff, 0xfe],
        ] {
            assert_eq!(parse(junk, "j"), None);
        }
    }
}
