//! kube-apiserver and kube-controller-manager on loopback, backed by the etcd endpoints a test
//! gives them; the admin kubeconfig; `kubectl`; kubeconfigs for ServiceAccount tokens.
//!
//! The apiserver serves HTTPS on `127.0.0.1:<free port>` with a certificate from a CA made for this
//! control plane, authenticates an admin token (group `system:masters`) from a token file and
//! ServiceAccount tokens it signs itself, authorizes with RBAC, and allocates Service IPs in
//! `127.240.0.0/16` (so that a stray connection to a ClusterIP stays on this machine). It never
//! advertises a non-loopback address: `--advertise-address=127.0.0.1` with the endpoint reconciler
//! off. The controller-manager runs without leader election and without serving ports, with the
//! ServiceAccount signing key and the CA, so ServiceAccount token secrets get created; the node
//! lifecycle controller is off, since the stand-in [`super::Node`] sends no heartbeats.
//!
//! Readiness is `/readyz` (through kubectl with the admin token) and, for the controller-manager,
//! the `default` ServiceAccount's token secret existing. Dropping a [`ControlPlane`] kills both
//! process groups.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::Signal;

use super::certs::{self, Certs};
use super::process;

/// Where the Service range lives: loopback, never a private range.
pub const SERVICE_CLUSTER_IP_RANGE: &str = "127.240.0.0/16";

/// Builder for a [`ControlPlane`]; see [`ControlPlane::builder`].
#[must_use]
pub struct ControlPlaneBuilder {
    etcd_servers: Vec<String>,
    compaction_interval: Option<Duration>,
    apiserver_args: Vec<String>,
    controller_manager: bool,
    ready_timeout: Duration,
}

impl ControlPlaneBuilder {
    /// `--etcd-compaction-interval` (apiserver's default is 5 minutes).
    pub fn compaction_interval(mut self, interval: Duration) -> Self {
        self.compaction_interval = Some(interval);
        self
    }

    /// One extra kube-apiserver flag (`--name=value`).
    pub fn apiserver_arg(mut self, arg: impl Into<String>) -> Self {
        self.apiserver_args.push(arg.into());
        self
    }

    /// Do not start kube-controller-manager.
    pub fn without_controller_manager(mut self) -> Self {
        self.controller_manager = false;
        self
    }

    /// How long to wait for `/readyz` and for the controller-manager (default 120 s: the first
    /// start on a loaded 2-core machine is slow).
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// Starts the control plane and waits until it is ready.
    pub fn start(self) -> Result<ControlPlane> {
        if self.etcd_servers.is_empty() {
            bail!("a control plane needs at least one etcd server");
        }
        let apiserver_bin = super::kubernetes_binary("kube-apiserver")?;
        let cm_bin = super::kubernetes_binary("kube-controller-manager")?;
        let kubectl_bin = super::kubernetes_binary("kubectl")?;
        let dir = tempfile::Builder::new()
            .prefix("concord-test-k8s-")
            .tempdir()
            .context("creating the control plane's temp dir")?;
        let certs = certs::generate(&dir.path().join("pki"))?;
        let token = format!("{:016x}{:016x}", crate::random_u64(), crate::random_u64());
        let token_file = dir.path().join("tokens.csv");
        std::fs::write(
            &token_file,
            format!("{token},concord-test-admin,concord-test-admin,\"system:masters\"\n"),
        )?;

        let mut cp = ControlPlane {
            dir: Some(dir),
            certs,
            token,
            port: 0,
            kubectl_bin,
            apiserver_bin,
            cm_bin,
            etcd_servers: self.etcd_servers,
            compaction_interval: self.compaction_interval,
            apiserver_args: self.apiserver_args,
            apiserver: None,
            controller_manager: None,
            ready_timeout: self.ready_timeout,
        };
        // A free port can be taken between picking and binding: retry a few times.
        let mut last = None;
        for _ in 0..3 {
            cp.port = process::free_port()?;
            cp.write_kubeconfig(&cp.kubeconfig(), &cp.token.clone())?;
            match cp.start_apiserver() {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e) => {
                    let busy =
                        process::tail(&cp.apiserver_log(), 20).contains("address already in use");
                    last = Some(e);
                    if !busy {
                        break;
                    }
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        if self.controller_manager {
            cp.start_controller_manager()?;
        }
        Ok(cp)
    }
}

/// A running kube-apiserver (and kube-controller-manager). Dropping it kills both; their logs
/// and certificates live in [`ControlPlane::dir`] (kept with `CONCORD_TEST_KEEP_DIRS=1` or after
/// a panic).
pub struct ControlPlane {
    dir: Option<tempfile::TempDir>,
    certs: Certs,
    token: String,
    port: u16,
    kubectl_bin: PathBuf,
    apiserver_bin: PathBuf,
    cm_bin: PathBuf,
    etcd_servers: Vec<String>,
    compaction_interval: Option<Duration>,
    apiserver_args: Vec<String>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    ready_timeout: Duration,
}

impl ControlPlane {
    /// A builder for a control plane storing its state in `etcd_servers` (client URLs).
    pub fn builder<I, S>(etcd_servers: I) -> ControlPlaneBuilder
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ControlPlaneBuilder {
            etcd_servers: etcd_servers.into_iter().map(Into::into).collect(),
            compaction_interval: None,
            apiserver_args: Vec::new(),
            controller_manager: true,
            ready_timeout: Duration::from_secs(120),
        }
    }

    /// Starts a control plane with the default settings on `etcd_servers`.
    pub fn start<I, S>(etcd_servers: I) -> Result<ControlPlane>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ControlPlane::builder(etcd_servers).start()
    }

    /// The control plane's temp dir (certificates, kubeconfigs, logs).
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("dir lives as long as the control plane")
    }

    /// The apiserver's URL, `https://127.0.0.1:<port>`.
    pub fn server_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// The admin kubeconfig (user in `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("admin.kubeconfig")
    }

    /// The admin bearer token.
    pub fn admin_token(&self) -> &str {
        &self.token
    }

    /// The CA certificate (PEM) the apiserver's serving certificate chains to.
    pub fn ca_crt(&self) -> &Path {
        &self.certs.ca_crt
    }

    /// kube-apiserver's log (stdout and stderr).
    pub fn apiserver_log(&self) -> PathBuf {
        self.dir().join("kube-apiserver.log")
    }

    /// kube-controller-manager's log (stdout and stderr).
    pub fn controller_manager_log(&self) -> PathBuf {
        self.dir().join("kube-controller-manager.log")
    }

    /// The last lines of the apiserver's log.
    pub fn apiserver_log_tail(&self, lines: usize) -> String {
        process::tail(&self.apiserver_log(), lines)
    }

    /// kubectl with the admin kubeconfig.
    pub fn kubectl(&self) -> Kubectl {
        Kubectl {
            binary: self.kubectl_bin.clone(),
            kubeconfig: self.kubeconfig(),
            timeout: Kubectl::DEFAULT_TIMEOUT,
        }
    }

    /// kubectl with another kubeconfig (e.g. one from [`ControlPlane::service_account_kubeconfig`]).
    pub fn kubectl_with(&self, kubeconfig: impl Into<PathBuf>) -> Kubectl {
        Kubectl {
            binary: self.kubectl_bin.clone(),
            kubeconfig: kubeconfig.into(),
            timeout: Kubectl::DEFAULT_TIMEOUT,
        }
    }

    /// Writes a kubeconfig that authenticates as ServiceAccount `namespace/name` (its token
    /// secret, created by the controller-manager; waits for it up to `timeout`) and returns its
    /// path. A process using it has exactly the permissions RBAC grants that ServiceAccount.
    pub fn service_account_kubeconfig(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<PathBuf> {
        let kubectl = self.kubectl();
        let deadline = Instant::now() + timeout;
        let token = loop {
            let secret = kubectl.run([
                "get",
                "serviceaccount",
                name,
                "-n",
                namespace,
                "-o",
                "jsonpath={.secrets[0].name}",
            ])?;
            let secret = secret.stdout.trim();
            if !secret.is_empty() {
                let out = kubectl.run([
                    "get",
                    "secret",
                    secret,
                    "-n",
                    namespace,
                    "-o",
                    "jsonpath={.data.token}",
                ])?;
                if out.success() && !out.stdout.trim().is_empty() {
                    break base64_decode(out.stdout.trim())?;
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "ServiceAccount {namespace}/{name} has no token secret after {timeout:?} \
                     (is kube-controller-manager running? log tail:\n{})",
                    process::tail(&self.controller_manager_log(), 20)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        };
        let path = self.dir().join(format!("sa-{namespace}-{name}.kubeconfig"));
        self.write_kubeconfig_ns(&path, &token, namespace)?;
        Ok(path)
    }

    fn write_kubeconfig(&self, path: &Path, token: &str) -> Result<()> {
        self.write_kubeconfig_ns(path, token, "default")
    }

    fn write_kubeconfig_ns(&self, path: &Path, token: &str, namespace: &str) -> Result<()> {
        let text = format!(
            "apiVersion: v1\n\
             kind: Config\n\
             clusters:\n\
             - name: concord-test\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n\
             - name: user\n  user:\n    token: {token}\n\
             contexts:\n\
             - name: concord-test\n  context:\n    cluster: concord-test\n    user: user\n    namespace: {namespace}\n\
             current-context: concord-test\n",
            server = self.server_url(),
            ca = self.certs.ca_crt.display(),
        );
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn start_apiserver(&mut self) -> Result<()> {
        let dir = self.dir().to_owned();
        let mut args = vec![
            format!("--etcd-servers={}", self.etcd_servers.join(",")),
            "--bind-address=127.0.0.1".to_owned(),
            "--advertise-address=127.0.0.1".to_owned(),
            format!("--secure-port={}", self.port),
            "--insecure-port=0".to_owned(),
            format!("--cert-dir={}", dir.join("cert-dir").display()),
            format!("--tls-cert-file={}", self.certs.server_crt.display()),
            format!("--tls-private-key-file={}", self.certs.server_key.display()),
            format!("--token-auth-file={}", dir.join("tokens.csv").display()),
            format!("--service-account-key-file={}", self.certs.sa_pub.display()),
            format!(
                "--service-account-signing-key-file={}",
                self.certs.sa_key.display()
            ),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".to_owned(),
            "--authorization-mode=RBAC".to_owned(),
            format!("--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}"),
            "--endpoint-reconciler-type=none".to_owned(),
            "--allow-privileged=true".to_owned(),
            "--profiling=false".to_owned(),
            "--v=1".to_owned(),
        ];
        if let Some(i) = self.compaction_interval {
            args.push(format!("--etcd-compaction-interval={}ms", i.as_millis()));
        }
        args.extend(self.apiserver_args.iter().cloned());
        let log = self.apiserver_log();
        process::log_line(&log, &format!("starting kube-apiserver {}", args.join(" ")));
        let child = process::command(&self.apiserver_bin, &log)?
            .args(&args)
            .spawn()
            .context("spawning kube-apiserver")?;
        self.apiserver = Some(child);
        self.wait_apiserver_ready()
    }

    /// Polls `/readyz` until the apiserver says `ok`, bounded by the ready timeout.
    pub fn wait_apiserver_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        let kubectl = self.kubectl().timeout(Duration::from_secs(10));
        let mut last = String::from("no answer yet");
        while start.elapsed() < self.ready_timeout {
            if let Some(child) = self.apiserver.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.apiserver = None;
                bail!(
                    "kube-apiserver exited during start-up with {status}; log tail:\n{}",
                    self.apiserver_log_tail(40)
                );
            }
            match kubectl.run(["get", "--raw", "/readyz"]) {
                Ok(out) if out.success() && out.stdout.trim() == "ok" => return Ok(()),
                Ok(out) => last = format!("{} {}", out.stdout.trim(), out.stderr.trim()),
                Err(e) => last = format!("{e:#}"),
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        bail!(
            "kube-apiserver not ready after {:?} (last /readyz: {last}); log tail:\n{}",
            self.ready_timeout,
            self.apiserver_log_tail(40)
        )
    }

    fn start_controller_manager(&mut self) -> Result<()> {
        let args = [
            format!("--kubeconfig={}", self.kubeconfig().display()),
            "--leader-elect=false".to_owned(),
            "--port=0".to_owned(),
            "--secure-port=0".to_owned(),
            format!(
                "--service-account-private-key-file={}",
                self.certs.sa_key.display()
            ),
            format!("--root-ca-file={}", self.certs.ca_crt.display()),
            "--use-service-account-credentials=false".to_owned(),
            // No heartbeats from the stand-in node: never taint it or evict its pods.
            "--controllers=*,-nodelifecycle".to_owned(),
            "--v=1".to_owned(),
        ];
        let log = self.controller_manager_log();
        process::log_line(
            &log,
            &format!("starting kube-controller-manager {}", args.join(" ")),
        );
        let child = process::command(&self.cm_bin, &log)?
            .args(&args)
            .spawn()
            .context("spawning kube-controller-manager")?;
        self.controller_manager = Some(child);
        // Ready once the ServiceAccount controllers work: pods need the default token.
        let deadline = Instant::now() + self.ready_timeout;
        let kubectl = self.kubectl().timeout(Duration::from_secs(10));
        loop {
            if let Some(child) = self.controller_manager.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.controller_manager = None;
                bail!(
                    "kube-controller-manager exited during start-up with {status}; log tail:\n{}",
                    process::tail(&log, 40)
                );
            }
            let out = kubectl.run([
                "get",
                "serviceaccount",
                "default",
                "-n",
                "default",
                "-o",
                "jsonpath={.secrets[0].name}",
            ])?;
            if out.success() && !out.stdout.trim().is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "kube-controller-manager made no token for default/default after {:?}; log tail:\n{}",
                    self.ready_timeout,
                    process::tail(&log, 40)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Whether kube-apiserver is still running.
    pub fn apiserver_running(&mut self) -> bool {
        matches!(self.apiserver.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Kills both processes (their process groups) and reaps them.
    pub fn stop(&mut self) {
        for child in [self.controller_manager.take(), self.apiserver.take()]
            .into_iter()
            .flatten()
        {
            kill_and_reap(child);
        }
    }
}

fn kill_and_reap(mut child: Child) -> Option<ExitStatus> {
    process::signal_group(child.id(), Signal::SIGKILL);
    let _ = child.kill();
    child.wait().ok()
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
        let panicking = std::thread::panicking();
        if panicking {
            eprintln!(
                "--- kube-apiserver log tail:\n{}\n--- kube-controller-manager log tail:\n{}",
                self.apiserver_log_tail(30),
                process::tail(&self.controller_manager_log(), 15)
            );
        }
        process::finish_dir(self.dir.take(), "control plane", panicking);
    }
}

/// What one kubectl run produced.
#[derive(Clone, Debug)]
pub struct KubectlOutput {
    /// Exit status code (`None` if killed by a signal or the timeout).
    pub code: Option<i32>,
    /// Stdout, lossily decoded.
    pub stdout: String,
    /// Stderr, lossily decoded.
    pub stderr: String,
}

impl KubectlOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Runs kubectl 1.20.2 with one kubeconfig.
#[derive(Clone, Debug)]
pub struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
    timeout: Duration,
}

impl Kubectl {
    /// Default timeout of one run: generous, but a hung apiserver fails the test.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

    /// kubectl `binary` with `kubeconfig` (for clusters this crate did not start, e.g. kind).
    pub fn new(binary: impl Into<PathBuf>, kubeconfig: impl Into<PathBuf>) -> Kubectl {
        Kubectl {
            binary: binary.into(),
            kubeconfig: kubeconfig.into(),
            timeout: Kubectl::DEFAULT_TIMEOUT,
        }
    }

    /// The same kubectl with another timeout per run.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The kubeconfig it uses.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// A `Command` for kubectl with `--kubeconfig` set and no proxy variables; add arguments.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.binary);
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()));
        cmd.env_remove("KUBECONFIG");
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().to_ascii_lowercase().ends_with("_proxy") {
                cmd.env_remove(&k);
            }
        }
        cmd
    }

    /// Runs kubectl with `args` to completion (or the timeout), whatever its exit code.
    pub fn run<I, S>(&self, args: I) -> Result<KubectlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_stdin(args, None)
    }

    /// Runs kubectl with `args`, failing unless it exits 0; returns stdout.
    pub fn ok<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let out = self.run(&args)?;
        if !out.success() {
            bail!(
                "kubectl {} failed ({:?}): {}{}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" "),
                out.code,
                out.stderr,
                out.stdout
            );
        }
        Ok(out.stdout)
    }

    /// `kubectl apply -f -` with `manifest` (YAML or JSON) on stdin; fails unless it exits 0.
    pub fn apply(&self, manifest: &str) -> Result<String> {
        let out = self.run_stdin(["apply", "-f", "-"], Some(manifest.as_bytes()))?;
        if !out.success() {
            bail!(
                "kubectl apply failed ({:?}): {}{}",
                out.code,
                out.stderr,
                out.stdout
            );
        }
        Ok(out.stdout)
    }

    /// Runs kubectl with `args` and `stdin`, to completion or the timeout.
    pub fn run_stdin<I, S>(&self, args: I, stdin: Option<&[u8]>) -> Result<KubectlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.command();
        cmd.args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().context("spawning kubectl")?;
        if let Some(input) = stdin {
            let mut pipe = child.stdin.take().context("kubectl stdin")?;
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            });
        }
        let mut out_pipe = child.stdout.take().context("kubectl stdout")?;
        let mut err_pipe = child.stderr.take().context("kubectl stderr")?;
        let out_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out_pipe.read_to_end(&mut v);
            v
        });
        let err_t = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = err_pipe.read_to_end(&mut v);
            v
        });
        let deadline = Instant::now() + self.timeout;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break Some(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stdout = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
        let mut stderr = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
        if status.is_none() {
            stderr.push_str(&format!(
                "\n(concord-tests: killed after {:?})",
                self.timeout
            ));
        }
        Ok(KubectlOutput {
            code: status.and_then(|s| s.code()),
            stdout,
            stderr,
        })
    }

    /// Starts kubectl with `args` in the background (e.g. `get --watch`), its output going to a
    /// file; see [`KubectlStream`].
    pub fn spawn<I, S>(&self, args: I, log_dir: &Path) -> Result<KubectlStream>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let path = log_dir.join(format!("kubectl-{:08x}.out", crate::random_u64() as u32));
        let out = process::open_log(&path)?;
        let err_path = path.with_extension("err");
        let err = process::open_log(&err_path)?;
        let mut cmd = self.command();
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().context("spawning kubectl")?;
        Ok(KubectlStream {
            child: Some(child),
            out: path,
            err: err_path,
        })
    }
}

/// A kubectl running in the background (killed on drop), its stdout in a file.
pub struct KubectlStream {
    child: Option<Child>,
    out: PathBuf,
    err: PathBuf,
}

impl KubectlStream {
    /// Everything it printed to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Everything it printed to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    /// Waits until some stdout line satisfies `pred`, up to `timeout`; returns that line.
    pub fn wait_for_line(
        &mut self,
        timeout: Duration,
        mut pred: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = self.stdout().lines().find(|l| pred(l)) {
                return Ok(line.to_owned());
            }
            if Instant::now() > deadline {
                bail!(
                    "no matching kubectl output line after {timeout:?} (running: {}); stdout:\n{}\nstderr:\n{}",
                    self.is_running(),
                    self.stdout(),
                    self.stderr()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for KubectlStream {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Standard base64 (with padding) to text, for token secrets read through kubectl.
fn base64_decode(s: &str) -> Result<String> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=') {
        let v = ALPHABET
            .iter()
            .position(|&a| a == c)
            .with_context(|| format!("invalid base64 byte {c:#x}"))? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    String::from_utf8(out).context("token is not UTF-8")
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn decodes_base64() {
        assert_eq!(base64_decode("aGVsbG8=").unwrap(), "hello");
        assert_eq!(base64_decode("aGVsbG8gd29ybGQ=").unwrap(), "hello world");
        assert_eq!(base64_decode("YQ==").unwrap(), "a");
        assert!(base64_decode("a*b").is_err());
    }
}
