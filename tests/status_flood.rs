//! The status port is reachable by anything on the network: a flood of
//! slow headers, huge headers, garbage and idle connections must not stop
//! the job (its committed epoch advances during the flood) and `/metrics`
//! answers once it is over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

use iotflow_redpanda::Storage;
use iotflow_redpanda::local::free_port;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Kills the processes this test started, however it ends.
struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// `GET path` and the body, if the server answers within `bound`.
async fn get(addr: &str, path: &str, bound: Duration) -> Option<String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        String::from_utf8(out).ok()
    };
    tokio::time::timeout(bound, exchange).await.ok().flatten()
}

fn committed_epoch(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("iotflow_last_committed_epoch "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// One hostile client; whether the server answered it with a status line.
async fn hostile(addr: String, kind: usize, until: Instant) -> bool {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return false;
    };
    let sent = match kind % 4 {
        // Slow headers: a byte every half second.
        0 => {
            let _ = s.write_all(b"GET / HTTP/1.1\r\nX-Slow: ").await;
            while Instant::now() < until {
                if s.write_all(b"a").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            true
        }
        // Huge headers: a megabyte of them.
        1 => {
            let big = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "b".repeat(1 << 20));
            s.write_all(big.as_bytes()).await.is_ok()
        }
        // Garbage.
        2 => {
            let junk: Vec<u8> = (0..4096u32)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            s.write_all(&junk).await.is_ok()
        }
        // Idle: connect and say nothing.
        _ => {
            tokio::time::sleep(until.saturating_duration_since(Instant::now())).await;
            true
        }
    };
    let mut head = [0u8; 12];
    sent && tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .is_ok_and(|r| r.is_ok() && head.starts_with(b"HTTP/1."))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_status_port_neither_stops_the_job_nor_stays_down() {
    let broker = common::broker(Storage::Memory).await;
    let addr = broker.addr().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let input = common::unique("flood");
    let http = format!("127.0.0.1:{}", free_port().unwrap());
    let iotflow = || Command::new(env!("CARGO_BIN_EXE_iotflow"));
    let producer = iotflow()
        .args([
            "produce",
            "--brokers",
            &addr,
            "--topic",
            &input,
            "--partitions",
            "2",
        ])
        .args([
            "--rate",
            "2000",
            "--duration",
            "5m",
            "--batch-records",
            "50",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut children = Kill(vec![producer]);
    let started = Instant::now();
    while !common::stdout(&common::iotflow(&["topics", "list", "--brokers", &addr]))
        .contains(&input)
    {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no input topic"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let job = iotflow()
        .args(["run", "--brokers", &addr, "--input", &input, "-w", "2"])
        .args([
            "--output-topic",
            &format!("{input}.out"),
            "--dlq",
            &format!("{input}.dlq"),
        ])
        .args(["--epoch-interval", "100ms", "--http", &http])
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--parquet-dir")
        .arg(dir.path().join("parquet"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    children.0.push(job);
    // Committing before the flood.
    let started = Instant::now();
    let before = loop {
        if let Some(e) = get(&http, "/metrics", Duration::from_secs(2))
            .await
            .as_deref()
            .and_then(committed_epoch)
            && e > 0
        {
            break e;
        }
        assert!(
            started.elapsed() < common::RUN_BOUND,
            "the job never committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let flood = Duration::from_secs(8);
    let until = Instant::now() + flood;
    let answered = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    for kind in 0..400 {
        let (http, answered) = (http.clone(), Arc::clone(&answered));
        clients.push(tokio::spawn(async move {
            if hostile(http, kind, until).await {
                answered.fetch_add(1, Relaxed);
            }
        }));
    }
    // Honest requests during the flood: some may wait for a free slot.
    let (mut honest, mut honest_answered) = (0, 0);
    while Instant::now() < until {
        honest += 1;
        if get(&http, "/healthz", Duration::from_secs(1))
            .await
            .is_some_and(|r| r.contains("ok"))
        {
            honest_answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for c in clients {
        let _ = c.await;
    }
    let after = get(&http, "/metrics", Duration::from_secs(5))
        .await
        .as_deref()
        .and_then(committed_epoch)
        .expect("/metrics answers after the flood");
    eprintln!(
        "flood of 400 hostile connections for {flood:?}: {} answered with a status, \
         {honest_answered}/{honest} honest /healthz answered during it, \
         committed epoch {before} → {after}",
        answered.load(Relaxed)
    );
    // 100 ms epochs: the job went on committing through the flood.
    assert!(
        after >= before + 20,
        "commits stalled during the flood: {before} → {after}"
    );
}
