//! The processes behind the secured endpoints: certificates made with
//! openssl, tansu (with SCRAM users and `--authentication` when asked), and
//! stunnel terminating TLS in front of it; each killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A child killed when dropped.
pub struct Owned(Child);

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn port() -> u16 {
    iotflow_redpanda::local::free_port().unwrap()
}

pub fn run(c: &mut Command) -> Output {
    c.output().unwrap()
}

/// A CA, a server certificate for 127.0.0.1, a client certificate, and a
/// second CA nobody trusts.
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: &Path) -> Self {
        let dir = dir.join("pki");
        std::fs::create_dir_all(&dir).unwrap();
        let ssl = |args: &[&str]| {
            let out = run(Command::new("openssl").args(args).current_dir(&dir));
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        for ca in ["ca", "other-ca"] {
            ssl(&[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN=iotflow test {ca}"),
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
            ]);
        }
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        .unwrap();
        // Extensions make v3 certificates, the only version webpki takes.
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
        for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
            ssl(&[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ]);
            let mut sign = vec![
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
            ]
            .into_iter()
            .map(str::to_owned)
            .collect::<Vec<_>>();
            sign.extend(["-extfile".into(), ext.into()]);
            ssl(&sign.iter().map(String::as_str).collect::<Vec<_>>());
        }
        Self { dir }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_owned()
    }
}

/// tansu on `listen` (loopback), advertising `advertise`; with SCRAM users
/// `users` ((name, password, mechanism)) and `--authentication` when given.
pub fn tansu(
    dir: &Path,
    listen: u16,
    advertise: &str,
    users: Option<&[(&str, &str, &str)]>,
) -> Owned {
    let bin = iotflow_redpanda::install::find_tansu().expect("tansu (make tansu)");
    let name = format!("tansu-{listen}");
    let start = |auth: bool| {
        let url = format!("tcp://127.0.0.1:{listen}");
        let mut c = Command::new(&bin);
        c.args(["broker", "--cluster-id", "secured", "--listener-url", &url])
            .args(["--advertised-listener-url", &format!("tcp://{advertise}")])
            .current_dir(dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join(format!("{name}.log"))).unwrap());
        match users {
            Some(_) => c.args(["--storage-engine", &format!("sqlite:///{name}.db")]),
            None => c.args(["--storage-engine", "memory://tansu/"]),
        };
        if auth {
            c.arg("--authentication");
        }
        Owned(c.spawn().unwrap())
    };
    let Some(users) = users else {
        return start(false);
    };
    // Users live in the storage, written through the broker before it requires them.
    let open = start(false);
    for (user, password, mechanism) in users {
        let url = format!("tcp://127.0.0.1:{listen}");
        let started = Instant::now();
        loop {
            let out = run(Command::new(&bin).args([
                "user",
                "create",
                user,
                password,
                "--broker",
                &url,
                "--mechanism",
                mechanism,
            ]));
            if out.status.success() {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "tansu user create: {out:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    drop(open);
    start(true)
}

/// stunnel terminating TLS on `accept` for the broker on `connect`;
/// `verify_clients`: only clients with a certificate of our CA.
pub fn stunnel(pki: &Pki, accept: u16, connect: u16, verify_clients: bool) -> Owned {
    let conf = pki.dir.join(format!("stunnel-{accept}.conf"));
    let verify = match verify_clients {
        true => format!("verifyChain = yes\nCAfile = {}\n", pki.path("ca.pem")),
        false => String::new(),
    };
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{accept}\nconnect = 127.0.0.1:{connect}\n\
             cert = {}\nkey = {}\n{verify}",
            pki.path("server.pem"),
            pki.path("server.key")
        ),
    )
    .unwrap();
    Owned(
        Command::new("stunnel4")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(pki.dir.join(format!("stunnel-{accept}.log"))).unwrap())
            .spawn()
            .expect("stunnel4 (make stunnel)"),
    )
}
