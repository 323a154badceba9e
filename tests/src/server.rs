//! Server processes (concord, etcd 3.5, etcd 3.4) on their own loopback addresses.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// etcd's standard client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's standard peer port.
pub const PEER_PORT: u16 = 2380;

/// Which server binary to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServerKind {
    /// `concord` (see [`crate::concord_bin`]).
    Concord,
    /// etcd 3.5.16 (see [`crate::etcd35_bin_dir`]).
    Etcd35,
    /// etcd 3.4.23 (see [`crate::etcd34_bin_dir`]).
    Etcd34,
}

impl ServerKind {
    /// Path of the server binary.
    pub fn binary(self) -> Result<PathBuf> {
        let path = match self {
            ServerKind::Concord => crate::concord_bin()?,
            ServerKind::Etcd35 => crate::etcd35_bin_dir().join("etcd"),
            ServerKind::Etcd34 => crate::etcd34_bin_dir().join("etcd"),
        };
        if !path.is_file() {
            bail!(
                "{self:?} binary {} does not exist (run scripts/install-test-deps.sh; \
                 overrides: CONCORD_BIN, ETCD35_BIN_DIR, ETCD34_BIN_DIR)",
                path.display()
            );
        }
        Ok(path)
    }
}

/// A `127.a.b.c` address claimed for this process: a lock file created with `O_EXCL` in
/// `$TMPDIR/concord-test-ips/` (removed on drop) keeps concurrent test processes apart, and both
/// standard ports are checked to be bindable, which skips addresses held by leftover processes.
#[derive(Debug)]
pub struct LoopbackIp {
    ip: Ipv4Addr,
    lock: PathBuf,
}

impl LoopbackIp {
    /// Claims a fresh random loopback address (never `127.0.x.x`).
    pub fn claim() -> Result<LoopbackIp> {
        let dir = std::env::temp_dir().join("concord-test-ips");
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        for _ in 0..1000 {
            let r = crate::random_u64();
            let ip = Ipv4Addr::new(
                127,
                1 + (r % 254) as u8,
                (r >> 8) as u8,
                1 + ((r >> 16) % 254) as u8,
            );
            let lock = dir.join(ip.to_string());
            match OpenOptions::new().write(true).create_new(true).open(&lock) {
                Ok(mut f) => {
                    let _ = writeln!(f, "{}", std::process::id());
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("creating {}", lock.display())),
            }
            let claimed = LoopbackIp { ip, lock };
            if [CLIENT_PORT, PEER_PORT]
                .iter()
                .all(|&port| TcpListener::bind((ip, port)).is_ok())
            {
                return Ok(claimed);
            }
            // Busy (a leftover process?): drop the claim and try another address.
        }
        bail!("could not claim a free 127.x.y.z address after 1000 tries")
    }

    /// The address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }
}

impl Drop for LoopbackIp {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.lock);
    }
}

/// Builder for a [`Server`]; see [`Server::builder`].
#[must_use]
pub struct ServerBuilder {
    kind: ServerKind,
    name: String,
    ip: Option<LoopbackIp>,
    initial_cluster: Option<String>,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    ready_timeout: Duration,
    wait_ready: bool,
    client_tls: Option<crate::tls::ClientTls>,
    peer_https: bool,
}

impl ServerBuilder {
    /// Serves clients on `https://<ip>:2379` (the caller adds `--cert-file`... or `--auto-tls`);
    /// the harness probes `/health` with curl using `probe`'s CA and client certificate.
    pub fn https(mut self, probe: crate::tls::ClientTls) -> Self {
        self.client_tls = Some(probe);
        self
    }

    /// Uses `https://<ip>:2380` peer URLs (the caller adds `--peer-cert-file`... or
    /// `--peer-auto-tls`, and an `https` `--initial-cluster`).
    pub fn peer_https(mut self) -> Self {
        self.peer_https = true;
        self
    }

    /// Member name (`--name`); default `default`, as etcd's.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Use this (already claimed) address instead of claiming a new one; for clusters, whose
    /// members must know each other's peer URLs before they start.
    pub fn ip(mut self, ip: LoopbackIp) -> Self {
        self.ip = Some(ip);
        self
    }

    /// `--initial-cluster` value; default `<name>=http://<ip>:2380` (a one-member cluster).
    pub fn initial_cluster(mut self, value: impl Into<String>) -> Self {
        self.initial_cluster = Some(value.into());
        self
    }

    /// Adds one extra command-line argument (after the standard flags).
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds extra command-line arguments (after the standard flags).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable for the server (`ETCD_*` from the test's own environment
    /// are never inherited).
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Self {
        self.envs
            .push((key.as_ref().to_owned(), value.as_ref().to_owned()));
        self
    }

    /// How long [`ServerBuilder::start`] and [`Server::restart`] wait for `/health` (default 20 s).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Do not wait for `/health` on start (e.g. a cluster member that needs its peers first);
    /// call [`Server::wait_ready`] later.
    pub fn no_wait(mut self) -> Self {
        self.wait_ready = false;
        self
    }

    /// Starts the server and (unless [`ServerBuilder::no_wait`]) waits until it is healthy.
    pub fn start(self) -> Result<Server> {
        let binary = self.kind.binary()?;
        let ip = match self.ip {
            Some(ip) => ip,
            None => LoopbackIp::claim()?,
        };
        let dir = tempfile::Builder::new()
            .prefix(&format!("concord-test-{:?}-", self.kind).to_lowercase())
            .tempdir()
            .context("creating the server's temp dir")?;
        let data_dir = dir.path().join("data");
        let a = ip.ip();
        let client_scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        let peer_scheme = if self.peer_https { "https" } else { "http" };
        let client_url = format!("{client_scheme}://{a}:{CLIENT_PORT}");
        let peer_url = format!("{peer_scheme}://{a}:{PEER_PORT}");
        let initial_cluster = self
            .initial_cluster
            .unwrap_or_else(|| format!("{}={peer_url}", self.name));
        let mut args: Vec<OsString> = [
            "--name".to_owned(),
            self.name.clone(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen-client-urls".to_owned(),
            client_url.clone(),
            "--advertise-client-urls".to_owned(),
            client_url,
            "--listen-peer-urls".to_owned(),
            peer_url.clone(),
            "--initial-advertise-peer-urls".to_owned(),
            peer_url,
            "--initial-cluster".to_owned(),
            initial_cluster,
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        args.extend(self.args);
        let mut server = Server {
            kind: self.kind,
            name: self.name,
            binary,
            args,
            envs: self.envs,
            stdout_path: dir.path().join("stdout.log"),
            stderr_path: dir.path().join("stderr.log"),
            data_dir,
            dir: Some(dir),
            ip,
            child: None,
            ready_timeout: self.ready_timeout,
            client_tls: self.client_tls,
            peer_scheme,
        };
        server.spawn()?;
        if self.wait_ready {
            server.wait_ready()?;
        }
        Ok(server)
    }
}

/// A server child process on its own loopback address. Dropping it kills the process (and, when
/// the test is panicking, prints the tail of its stderr).
pub struct Server {
    kind: ServerKind,
    name: String,
    binary: PathBuf,
    args: Vec<OsString>,
    envs: Vec<(OsString, OsString)>,
    dir: Option<tempfile::TempDir>,
    data_dir: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    ip: LoopbackIp,
    child: Option<Child>,
    ready_timeout: Duration,
    /// Set for `https` client URLs: how the harness reaches them.
    client_tls: Option<crate::tls::ClientTls>,
    peer_scheme: &'static str,
}

impl Server {
    /// Starts a one-member server of `kind` with the standard flags and waits until it is healthy.
    pub fn start(kind: ServerKind) -> Result<Server> {
        Server::builder(kind).start()
    }

    /// A builder, for extra flags or cluster settings.
    pub fn builder(kind: ServerKind) -> ServerBuilder {
        ServerBuilder {
            kind,
            name: "default".to_owned(),
            ip: None,
            initial_cluster: None,
            args: Vec::new(),
            envs: Vec::new(),
            ready_timeout: Duration::from_secs(20),
            wait_ready: true,
            client_tls: None,
            peer_https: false,
        }
    }

    /// Which binary this is.
    pub fn kind(&self) -> ServerKind {
        self.kind
    }

    /// Member name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The server's loopback address.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip.ip()
    }

    /// Client endpoint, `http://<ip>:2379` (`https` with [`ServerBuilder::https`]).
    pub fn endpoint(&self) -> String {
        let scheme = if self.client_tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{CLIENT_PORT}", self.ip())
    }

    /// Peer URL, `http://<ip>:2380` (`https` with [`ServerBuilder::peer_https`]).
    pub fn peer_url(&self) -> String {
        format!("{}://{}:{PEER_PORT}", self.peer_scheme, self.ip())
    }

    /// Client socket address.
    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from((self.ip(), CLIENT_PORT))
    }

    /// The data dir (`--data-dir`).
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The command line the server runs with (without the binary).
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Sets flag `flag` (e.g. `--initial-cluster`) to `value` for the next (re)start, replacing
    /// it in either the `--flag value` or the `--flag=value` form, or adding it.
    pub fn set_flag(&mut self, flag: &str, value: &str) {
        let eq = format!("{flag}=");
        let mut i = 0;
        while i < self.args.len() {
            let arg = self.args[i].to_string_lossy().into_owned();
            if arg == flag && i + 1 < self.args.len() {
                self.args[i + 1] = value.into();
                return;
            }
            if arg.starts_with(&eq) {
                self.args[i] = format!("{eq}{value}").into();
                return;
            }
            i += 1;
        }
        self.args.push(format!("{eq}{value}").into());
    }

    /// File receiving the child's stdout (appended to across restarts).
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// File receiving the child's stderr (appended to across restarts).
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// The last `max_lines` lines of the child's stderr.
    pub fn stderr_tail(&self, max_lines: usize) -> String {
        tail(&self.stderr_path, max_lines)
    }

    /// Process id of the running child, if any.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the child is running (has not exited).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn spawn(&mut self) -> Result<()> {
        let open = |p: &Path| -> Result<File> {
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .with_context(|| format!("opening {}", p.display()))
        };
        let stdout = open(&self.stdout_path)?;
        let mut stderr = open(&self.stderr_path)?;
        let _ = writeln!(
            stderr,
            "=== concord-tests: starting {} {}",
            self.binary.display(),
            self.args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = Command::new(&self.binary);
        cmd.args(&self.args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ETCD_") {
                cmd.env_remove(k);
            }
        }
        cmd.envs(self.envs.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", self.binary.display()))?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `GET /health` until it reports healthy, bounded by the ready timeout. The error
    /// says why and includes the tail of the child's stderr.
    pub fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let mut last = String::from("no answer yet");
        while start.elapsed() < self.ready_timeout {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "{:?} server on {} exited during start-up with {status}; stderr tail:\n{}",
                    self.kind,
                    self.endpoint(),
                    self.stderr_tail(40)
                );
            }
            let probe = match &self.client_tls {
                Some(tls) => crate::tls::https_get(
                    &format!("{}/health", self.endpoint()),
                    tls,
                    Duration::from_secs(2),
                ),
                None => http_get(self.client_addr(), "/health", Duration::from_secs(2)),
            };
            match probe {
                Ok((200, body)) if body.contains(r#""health":"true""#) => return Ok(()),
                Ok((code, body)) => last = format!("HTTP {code}: {}", body.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.kill9();
        bail!(
            "{:?} server on {} not healthy after {:?} (last /health: {last}); stderr tail:\n{}",
            self.kind,
            self.endpoint(),
            self.ready_timeout,
            self.stderr_tail(40)
        )
    }

    /// `kill -9` the child and reap it. No-op if it is not running.
    pub fn kill9(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            // SIGKILL also ends a paused (SIGSTOPped) process.
            let _ = child.kill();
            child.wait()?;
        }
        Ok(())
    }

    /// Graceful stop: SIGTERM, then SIGKILL after 10 s. Returns the exit status, `None` if the
    /// server was not running.
    pub fn stop(&mut self) -> Result<Option<ExitStatus>> {
        let Some(mut child) = self.child.take() else {
            return Ok(None);
        };
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGCONT);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Ok(Some(child.wait()?));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the server again with the same address, data dir and flags (killing it first if it
    /// is still running) and waits until it is healthy.
    pub fn restart(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()?;
        self.wait_ready()
    }

    /// Like [`Server::restart`] but without waiting for health (cluster members).
    pub fn restart_no_wait(&mut self) -> Result<()> {
        self.kill9()?;
        self.spawn()
    }

    /// Freezes the process (SIGSTOP).
    pub fn pause(&self) -> Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&self) -> Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, sig: Signal) -> Result<()> {
        let child = self.child.as_ref().context("server is not running")?;
        kill(Pid::from_raw(child.id() as i32), sig)?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.kill9();
        if std::thread::panicking() {
            eprintln!(
                "--- {:?} server {} ({}) stderr tail:\n{}",
                self.kind,
                self.name,
                self.endpoint(),
                self.stderr_tail(30)
            );
        }
        if std::env::var_os("CONCORD_TEST_KEEP_DIRS").is_some_and(|v| v != "0")
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "--- kept {:?} server dir {}",
                self.kind,
                dir.keep().display()
            );
        }
    }
}

/// The last `max_lines` lines of a (possibly large) file, lossily decoded.
fn tail(path: &Path, max_lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("<cannot open {}>", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

/// A minimal HTTP/1.1 `GET` over a plain `TcpStream` (no proxy, loopback only): returns the status
/// code and the body (de-chunked if needed). Each network step is bounded by `timeout`.
pub fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<(u16, String)> {
    http_request(addr, "GET", path, timeout).map(|r| (r.code, r.body))
}

/// What [`http_request`] got back.
#[derive(Debug)]
pub struct HttpResponse {
    pub code: u16,
    /// The status line and headers.
    pub head: String,
    /// The body, de-chunked if needed.
    pub body: String,
}

/// Like [`http_get`], with any method (and an empty request body).
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<HttpResponse> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: concord-tests\r\nAccept: */*\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("malformed HTTP response: {text:?}"))?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed HTTP status line: {head:?}"))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        code,
        head: head.to_owned(),
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        let (Some(chunk), Some(after)) = (rest.get(..n), rest.get(n..)) else {
            break;
        };
        if n == 0 {
            break;
        }
        out.push_str(chunk);
        s = after.trim_start_matches("\r\n");
    }
    out
}
