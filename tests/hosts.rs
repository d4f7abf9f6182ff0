//! Several hosts: a 3-process job whose processes each run in a network
//! namespace of their own (own address, own link to a router namespace),
//! the broker in a fourth. A cut link is an `ip rule … blackhole` in the
//! router for each direction: its packets vanish, no reset and no error,
//! as with a pulled cable or a dead switch port.
//!
//! ```text
//!   h0 198.N.1.2 ─┐                       test (root namespace) 198.N.250.2
//!   h1 198.N.2.2 ─┼── router ──┬── broker 198.N.4.2 (tansu)
//!   h2 198.N.3.2 ─┘            └── up-link to the root namespace
//!
//! 198.18.0.0/15 is reserved for network benchmarks (RFC 2544): no real
//! network the machine talks to uses it, so the root namespace's route to
//! it (while the test runs) takes no traffic from anything else.
//! ```
//!
//! One fault per round, while the job runs live: a process SIGKILLed, the
//! link between two peers cut, the link between a peer and the broker cut,
//! a process SIGSTOPped. Each time, every other process stops within a
//! stated bound with exit 3: the first to notice names what went silent
//! (the peer, or the broker), the others the connection to it that broke.
//! Then the link is healed and every process restarted. At the end, the output (Kafka
//! records and Parquet bytes) is that of a run never faulted.
//!
//! Needs root for `ip netns`; where the kernel or the user is refused, the
//! test says so on stderr and passes without running.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use iotflow_sink::progress::ProgressLog;

/// The watchdogs' timeouts in these runs, and the bound on noticing.
const PEER_TIMEOUT: Duration = Duration::from_secs(2);
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);
/// Timeout + one probe interval + the slack of a loaded 2-core machine.
const NOTICE_BOUND: Duration = Duration::from_secs(8);
const PORT: u16 = 9092;
const PEER_PORT: u16 = 7800;

/// The namespaces of one test: a router, three job hosts and the broker's host.
struct Network {
    tag: String,
    /// 198.<net>.x.y, net 18 or 19
    net: u8,
}

impl Network {
    /// The reason, where namespaces cannot be made here.
    fn new() -> Result<Self, String> {
        let pid = std::process::id();
        let net = Self {
            tag: format!("iof{pid}"),
            net: 18 + (pid % 2) as u8,
        };
        ip(&["netns", "add", &net.router()])?;
        // Allowed to make one: whatever fails from here on is a failure.
        net.build().unwrap();
        Ok(net)
    }

    fn router(&self) -> String {
        format!("{}-r", self.tag)
    }

    /// Host `i` (0..3: the job's processes, 3: the broker).
    fn host(&self, i: usize) -> String {
        format!("{}-h{i}", self.tag)
    }

    fn addr(&self, i: usize) -> String {
        format!("198.{}.{}.2", self.net, i + 1)
    }

    fn broker(&self) -> String {
        format!("{}:{PORT}", self.addr(3))
    }

    fn build(&self) -> Result<(), String> {
        let (r, n) = (self.router(), self.net);
        ip(&["-n", &r, "link", "set", "lo", "up"])?;
        for i in 0..4 {
            let h = self.host(i);
            let leg = format!("{}v{i}", self.tag);
            ip(&["netns", "add", &h])?;
            ip(&["-n", &h, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &leg, "netns", &r, "type", "veth", "peer", "name", "eth0", "netns",
                &h,
            ])?;
            ip(&[
                "-n",
                &r,
                "addr",
                "add",
                &format!("198.{n}.{}.1/24", i + 1),
                "dev",
                &leg,
            ])?;
            ip(&["-n", &r, "link", "set", &leg, "up"])?;
            ip(&[
                "-n",
                &h,
                "addr",
                "add",
                &format!("{}/24", self.addr(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &h, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                &h,
                "route",
                "add",
                "default",
                "via",
                &format!("198.{n}.{}.1", i + 1),
            ])?;
        }
        // The test's own leg, so it can produce the input and read the outputs.
        let up = format!("{}up", self.tag);
        ip(&[
            "link", "add", &up, "type", "veth", "peer", "name", "uplink", "netns", &r,
        ])?;
        ip(&["addr", "add", &format!("198.{n}.250.2/24"), "dev", &up])?;
        ip(&["link", "set", &up, "up"])?;
        ip(&[
            "-n",
            &r,
            "addr",
            "add",
            &format!("198.{n}.250.1/24"),
            "dev",
            "uplink",
        ])?;
        ip(&["-n", &r, "link", "set", "uplink", "up"])?;
        ip(&[
            "route",
            "add",
            &format!("198.{n}.0.0/16"),
            "via",
            &format!("198.{n}.250.1"),
        ])?;
        let forward = Command::new("ip")
            .args([
                "netns",
                "exec",
                &r,
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .status()
            .map_err(|e| e.to_string())?;
        forward.success().then_some(()).ok_or("ip_forward".into())
    }

    /// Drops (`cut`) or forwards again every packet between hosts `a` and `b`.
    fn link(&self, a: usize, b: usize, cut: bool) {
        let verb = if cut { "add" } else { "del" };
        for (from, to) in [(a, b), (b, a)] {
            let (from, to) = (self.addr(from), self.addr(to));
            ip(&[
                "-n",
                &self.router(),
                "rule",
                verb,
                "from",
                &from,
                "to",
                &to,
                "blackhole",
            ])
            .unwrap();
        }
    }

    /// `iotflow ARGS` on host `i`.
    fn iotflow(&self, i: usize, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args([
            "netns",
            "exec",
            &self.host(i),
            env!("CARGO_BIN_EXE_iotflow"),
        ])
        .args(args)
        .env_remove(iotflow_sink::failpoint::ENV);
        c
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        // The up-link's root end (and the route through it) first: the
        // kernel frees a deleted namespace's interfaces only later.
        let _ = ip(&["link", "del", &format!("{}up", self.tag)]);
        for ns in (0..4).map(|i| self.host(i)).chain([self.router()]) {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// A child killed (SIGKILL) when dropped, so no test failure leaves it running.
struct Owned(Option<Child>);

impl Drop for Owned {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Owned {
    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_child(self.0.as_ref().unwrap())
    }

    fn signal(&self, s: rustix::process::Signal) {
        rustix::process::kill_process(self.pid(), s).unwrap();
    }

    fn exited(&mut self) -> bool {
        self.0.as_mut().unwrap().try_wait().unwrap().is_some()
    }

    fn output(mut self) -> Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

struct Job<'a> {
    net: &'a Network,
    input: String,
    dir: &'a Path,
}

impl Job<'_> {
    fn dir(&self, name: &str, what: &str) -> PathBuf {
        self.dir.join(name).join(what)
    }

    /// Job `name` on host `host` as process `p` of `n` (`n` 1: all three workers).
    fn command(&self, name: &str, host: usize, p: usize, n: usize) -> Command {
        let hostfile = self.dir.join("hosts");
        let workers = if n == 1 { "3" } else { "1" };
        let (state, parquet) = (self.dir(name, "state"), self.dir(name, "parquet"));
        let mut c = self.net.iotflow(
            host,
            &[
                "run",
                "--brokers",
                &self.net.broker(),
                "--input",
                &self.input,
                "--output-topic",
                &format!("{name}.aggregates"),
                "--dlq",
                &format!("{name}.dlq"),
                "--progress-topic",
                &format!("{name}.progress"),
                "--epoch-records",
                "100",
                // Windows close by event time only: live runs and bounded runs agree.
                "--idle-timeout",
                "1h",
                "-w",
                workers,
                "-n",
                &n.to_string(),
                "-p",
                &p.to_string(),
                "--hostfile",
                hostfile.to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--parquet-dir",
                parquet.to_str().unwrap(),
                "--parquet-roll-rows",
                "200",
                "--peer-timeout",
                &format!("{}s", PEER_TIMEOUT.as_secs()),
                "--broker-timeout",
                &format!("{}s", BROKER_TIMEOUT.as_secs()),
            ],
        );
        c.stdout(Stdio::null()).stderr(Stdio::piped());
        c
    }

    /// The three processes of the faulted job, live.
    fn start(&self) -> Vec<Owned> {
        (0..3)
            .map(|p| Owned(Some(self.command("faulted", p, p, 3).spawn().unwrap())))
            .collect()
    }

    async fn commits(&self, name: &str) -> usize {
        let client = iotflow_redpanda::connect(&[self.net.broker()], Duration::from_secs(30))
            .await
            .unwrap();
        match ProgressLog::open(&client, &format!("{name}.progress")).await {
            Ok(log) => log.read_all().await.unwrap().0.len(),
            Err(_) => 0,
        }
    }
}

/// What each fault round does, and what the survivors must say.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill(usize),
    CutPeers(usize, usize),
    CutBroker(usize),
    Stop(usize),
}

impl Fault {
    fn inject(self, net: &Network, procs: &[Owned]) {
        use rustix::process::Signal;
        match self {
            Fault::Kill(p) => procs[p].signal(Signal::KILL),
            Fault::Stop(p) => procs[p].signal(Signal::STOP),
            Fault::CutPeers(a, b) => net.link(a, b, true),
            Fault::CutBroker(p) => net.link(p, 3, true),
        }
    }

    fn heal(self, net: &Network) {
        match self {
            Fault::CutPeers(a, b) => net.link(a, b, false),
            Fault::CutBroker(p) => net.link(p, 3, false),
            Fault::Kill(_) | Fault::Stop(_) => {}
        }
    }

    /// The process the fault is done to (it is not expected to notice anything).
    fn victim(self) -> Option<usize> {
        match self {
            Fault::Kill(p) | Fault::Stop(p) => Some(p),
            Fault::CutPeers(..) | Fault::CutBroker(_) => None,
        }
    }

    /// What the first process to notice names: one of these. (The others
    /// then see their connection to it break, and name that.)
    fn named(self, net: &Network) -> Vec<String> {
        let peer = |q: usize| format!("process {q} (198.{}.{}.2:{PEER_PORT})", net.net, q + 1);
        let silent = |q: usize| format!("{} has not been heard from", peer(q));
        match self {
            Fault::Kill(q) => vec![format!("the connection to {} broke", peer(q)), silent(q)],
            Fault::Stop(q) => vec![silent(q)],
            Fault::CutPeers(a, b) => vec![silent(a), silent(b)],
            Fault::CutBroker(_) => vec![format!("no broker of {} has answered", net.broker())],
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_between_hosts_are_noticed_named_and_survived() {
    let net = match Network::new() {
        Ok(net) => net,
        Err(why) => {
            eprintln!("SKIPPED: network namespaces are refused here ({why})");
            return;
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let hostfile: String = (0..3)
        .map(|i| format!("{}:{PEER_PORT}\n", net.addr(i)))
        .collect();
    std::fs::write(dir.path().join("hosts"), hostfile).unwrap();
    let tansu = iotflow_redpanda::install::find_tansu().expect("tansu (make tansu)");
    let url = format!("tcp://{}", net.broker());
    let _broker = Owned(Some(
        Command::new("ip")
            .args(["netns", "exec", &net.host(3)])
            .arg(tansu)
            .args(["broker", "--cluster-id", "hosts", "--listener-url", &url])
            .args(["--advertised-listener-url", &url])
            .args(["--storage-engine", "memory://tansu/"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("broker.log")).unwrap())
            .spawn()
            .unwrap(),
    ));
    let started = Instant::now();
    while iotflow_redpanda::local::answers_metadata(&net.broker())
        .await
        .is_err()
    {
        assert!(started.elapsed() < Duration::from_secs(30), "no broker");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let bootstrap = vec![net.broker()];
    let client = iotflow_redpanda::connect(&bootstrap, Duration::from_secs(30))
        .await
        .unwrap();
    let input = "hosts.in".to_owned();
    iotflow_redpanda::topics::create_topics(
        &client,
        &bootstrap,
        &[iotflow_redpanda::TopicSpec::new(input.as_str(), 3)],
    )
    .await
    .unwrap();
    let job = Job {
        net: &net,
        input: input.clone(),
        dir: dir.path(),
    };
    let rounds = [
        Fault::Kill(2),
        Fault::CutPeers(0, 1),
        Fault::CutBroker(1),
        Fault::Stop(2),
    ];
    for (round, fault) in rounds.into_iter().enumerate() {
        // New readings each round: every run has work to resume.
        let sim = iotflow_ingest::simulator::SimConfig {
            start_ms: iotflow_ingest::simulator::SimConfig::default().start_ms
                + round as i64 * 600_000,
            ..common::troubled_sim(round as u64, 30_000)
        };
        common::produce_sim(&client, &input, sim, 3_000).await;
        let before = job.commits("faulted").await;
        let mut procs = job.start();
        let started = Instant::now();
        while job.commits("faulted").await < before + 3 {
            if let Some(p) = procs.iter_mut().position(Owned::exited) {
                // Its own words say why (a flake once ended one at start).
                let out = procs.swap_remove(p).output();
                panic!(
                    "round {round}: process {p} ended early ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            assert!(
                started.elapsed() < common::RUN_BOUND,
                "round {round}: no commits"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        fault.inject(&net, &procs);
        let injected = Instant::now();
        let mut noticed = [None; 3];
        while injected.elapsed() < NOTICE_BOUND {
            for (p, c) in procs.iter_mut().enumerate() {
                if Some(p) != fault.victim() && noticed[p].is_none() && c.exited() {
                    noticed[p] = Some(injected.elapsed());
                }
            }
            if (0..3).all(|p| Some(p) == fault.victim() || noticed[p].is_some()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        fault.heal(&net);
        let outputs: Vec<(usize, Output)> = procs
            .into_iter()
            .enumerate()
            .map(|(p, mut c)| {
                if !c.exited() {
                    c.signal(rustix::process::Signal::KILL);
                }
                (p, c.output())
            })
            .collect();
        eprintln!("round {round}, {fault:?}: noticed after {noticed:?}");
        let mut named = false;
        for (p, out) in outputs {
            let err = String::from_utf8_lossy(&out.stderr);
            if Some(p) == fault.victim() {
                continue;
            }
            let last = err.lines().last().unwrap_or_default();
            eprintln!("  process {p}: {last}");
            assert!(
                noticed[p].is_some(),
                "round {round}, {fault:?}: process {p} still running {NOTICE_BOUND:?} after: {err}"
            );
            assert_eq!(
                out.status.code(),
                Some(3),
                "round {round}, {fault:?}, process {p}: {err}"
            );
            named |= fault.named(&net).iter().any(|n| last.contains(n.as_str()));
        }
        assert!(
            named,
            "round {round}, {fault:?}: no process named any of {:?}",
            fault.named(&net)
        );
    }
    // Healed: every process once more, to the end of the input.
    let finals: Vec<Owned> = (0..3)
        .map(|p| {
            let mut c = job.command("faulted", p, p, 3);
            c.arg("--until-end");
            Owned(Some(c.spawn().unwrap()))
        })
        .collect();
    for (p, mut c) in finals.into_iter().enumerate() {
        common::finish(c.0.take().unwrap(), &format!("the last run's process {p}"));
    }
    let mut reference = job.command("reference", 0, 0, 1);
    reference.arg("--until-end");
    common::finish(reference.spawn().unwrap(), "the run never faulted");

    common::assert_runs_match(
        &bootstrap,
        ("reference", &job.dir("reference", "parquet")),
        ("faulted", &job.dir("faulted", "parquet")),
    )
    .await;
}
