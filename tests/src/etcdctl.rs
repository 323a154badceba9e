//! Running the real etcdctl (3.5 or 3.4) against an endpoint: to completion ([`Etcdctl::run`]),
//! or for a fixed time for commands that never end on their own, such as `watch` and
//! `lease keep-alive` ([`Etcdctl::run_for`], [`Etcdctl::spawn`]).

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::normalize::bytes_to_text;

/// Which etcdctl to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Etcdctl {
    /// etcdctl 3.5.16 (in [`crate::etcd35_bin_dir`]).
    V35,
    /// etcdctl 3.4.23 (in [`crate::etcd34_bin_dir`]), run with `ETCDCTL_API=3`.
    V34,
}

/// What one etcdctl run produced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CtlOutput {
    /// Exit code; `None` if it was ended by a signal.
    pub code: Option<i32>,
    /// Raw stdout.
    pub stdout: Vec<u8>,
    /// Raw stderr.
    pub stderr: Vec<u8>,
    /// Whether the harness ended it ([`Etcdctl::run_for`], [`Background::stop_after`]) because it
    /// was still running, rather than it exiting by itself (`code` is then `None`).
    pub stopped: bool,
}

impl CtlOutput {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Stdout as text (invalid UTF-8 bytes shown as `\xNN`).
    pub fn stdout_text(&self) -> String {
        bytes_to_text(&self.stdout)
    }

    /// Stderr as text (invalid UTF-8 bytes shown as `\xNN`).
    pub fn stderr_text(&self) -> String {
        bytes_to_text(&self.stderr)
    }
}

impl Etcdctl {
    /// Both versions.
    pub const ALL: [Etcdctl; 2] = [Etcdctl::V35, Etcdctl::V34];

    /// Default timeout of [`Etcdctl::run`]: generous, but a hung server fails the test.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

    /// Path of the etcdctl binary.
    pub fn binary(self) -> PathBuf {
        match self {
            Etcdctl::V35 => crate::etcd35_bin_dir().join("etcdctl"),
            Etcdctl::V34 => crate::etcd34_bin_dir().join("etcdctl"),
        }
    }

    /// A `Command` for this etcdctl aimed at `endpoint` (`--endpoints` is set, `ETCDCTL_API=3`,
    /// no inherited `ETCDCTL_*` or proxy variables). Add the subcommand's arguments.
    pub fn command(self, endpoint: &str) -> Command {
        let mut cmd = Command::new(self.binary());
        for (k, _) in std::env::vars_os() {
            let name = k.to_string_lossy().to_ascii_lowercase();
            if name.starts_with("etcdctl_") || name.ends_with("_proxy") {
                cmd.env_remove(&k);
            }
        }
        cmd.env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={endpoint}"));
        cmd
    }

    /// Runs `etcdctl --endpoints=<endpoint> <args>` with optional stdin (empty stdin otherwise),
    /// bounded by [`Etcdctl::DEFAULT_TIMEOUT`].
    pub fn run<I, S>(self, endpoint: &str, args: I, stdin: Option<&[u8]>) -> Result<CtlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.run_with_timeout(endpoint, args, stdin, Etcdctl::DEFAULT_TIMEOUT)
    }

    /// Like [`Etcdctl::run`] with an explicit timeout; on timeout the process is killed and an
    /// error returned.
    pub fn run_with_timeout<I, S>(
        self,
        endpoint: &str,
        args: I,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<CtlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let mut cmd = self.command(endpoint);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        run_bounded(cmd, stdin.unwrap_or_default(), timeout).with_context(|| {
            format!(
                "etcdctl {self:?} {}",
                args.iter()
                    .map(|a| a.to_string_lossy())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
    }
}

impl Etcdctl {
    /// Runs `etcdctl --endpoints=<endpoint> <args>` for `duration`, then kills it if it is still
    /// running, and returns what it printed (`stopped` says whether it had to be killed; that is
    /// not an error). For commands that never end on their own: `watch`, `watch -i`,
    /// `lease keep-alive`. `stdin` is written and kept open until the end (interactive mode
    /// exits at end of input).
    pub fn run_for<I, S>(
        self,
        endpoint: &str,
        args: I,
        stdin: Option<&[u8]>,
        duration: Duration,
    ) -> Result<CtlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let start = Instant::now();
        let running = self.spawn(endpoint, args, stdin)?;
        running.stop_after(duration.saturating_sub(start.elapsed()))
    }

    /// Starts `etcdctl --endpoints=<endpoint> <args>` in the background; `stdin` is written and
    /// kept open until the process is stopped. See [`Background`].
    pub fn spawn<I, S>(self, endpoint: &str, args: I, stdin: Option<&[u8]>) -> Result<Background>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
        let label = format!(
            "etcdctl {self:?} {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut cmd = self.command(endpoint);
        cmd.args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().with_context(|| format!("spawning {label}"))?;
        let mut child_stdin = child.stdin.take().context("stdin not piped")?;
        let input = stdin.unwrap_or_default().to_vec();
        let writer = std::thread::spawn(move || {
            // A child that exits without reading stdin gives EPIPE; that is fine. The pipe is
            // handed back so that it stays open until the process is stopped.
            let _ = child_stdin.write_all(&input);
            child_stdin
        });
        let out = child.stdout.take().context("stdout not piped")?;
        let err = child.stderr.take().context("stderr not piped")?;
        Ok(Background {
            child,
            label,
            writer: Some(writer),
            out_reader: Some(read_all(out)),
            err_reader: Some(read_all(err)),
        })
    }
}

fn read_all(mut r: impl Read + Send + 'static) -> JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// An etcdctl process running in the background ([`Etcdctl::spawn`]). Dropping it kills it.
pub struct Background {
    child: Child,
    label: String,
    writer: Option<JoinHandle<ChildStdin>>,
    out_reader: Option<JoinHandle<Vec<u8>>>,
    err_reader: Option<JoinHandle<Vec<u8>>>,
}

impl Background {
    /// Process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited by itself.
    pub fn has_exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// Waits until the process has an established TCP connection to `server` (read from
    /// `/proc/<pid>/fd` and `/proc/<pid>/net/tcp`), which etcdctl opens just before sending its
    /// request: `Ok(true)`. `Ok(false)` if the process exited first; an error after `timeout`.
    pub fn wait_connected(&mut self, server: SocketAddr, timeout: Duration) -> Result<bool> {
        let start = Instant::now();
        loop {
            if self.has_exited()? {
                return Ok(false);
            }
            if connected_to(self.pid(), server) {
                return Ok(true);
            }
            if start.elapsed() > timeout {
                bail!(
                    "{}: no connection to {server} after {timeout:?}",
                    self.label
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Lets the process run for up to `duration` more, then kills it if it is still running, and
    /// returns everything it printed.
    pub fn stop_after(mut self, duration: Duration) -> Result<CtlOutput> {
        let deadline = Instant::now() + duration;
        let mut stopped = false;
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                stopped = true;
                break self.child.wait()?;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // The process is gone: the writer ends (EPIPE at worst) and the pipes reach EOF.
        drop(self.writer.take().map(JoinHandle::join));
        let stdout = self
            .out_reader
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let stderr = self
            .err_reader
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        Ok(CtlOutput {
            code: if stopped { None } else { status.code() },
            stdout,
            stderr,
            stopped,
        })
    }

    /// Kills the process now and returns everything it printed.
    pub fn stop(self) -> Result<CtlOutput> {
        self.stop_after(Duration::ZERO)
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.out_reader.is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Whether process `pid` owns an established TCP (IPv4) connection to `server`.
fn connected_to(pid: u32, server: SocketAddr) -> bool {
    let SocketAddr::V4(server) = server else {
        return false;
    };
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let inodes: Vec<String> = fds
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            Some(t.strip_prefix("socket:[")?.strip_suffix(']')?.to_owned())
        })
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    // Columns: sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
    // Addresses are `%08X:%04X`: the IPv4 address as a native-endian u32, the port as a number.
    table.lines().skip(1).any(|line| {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let (Some(remote), Some(&"01"), Some(inode)) = (cols.get(2), cols.get(3), cols.get(9))
        else {
            return false;
        };
        let Some((ip, port)) = remote.split_once(':') else {
            return false;
        };
        let (Ok(ip), Ok(port)) = (u32::from_str_radix(ip, 16), u16::from_str_radix(port, 16))
        else {
            return false;
        };
        Ipv4Addr::from(ip.to_ne_bytes()) == *server.ip()
            && port == server.port()
            && inodes.iter().any(|i| i == inode)
    })
}

/// Runs a prepared command (stdin/stdout/stderr piped), feeding `stdin` and collecting output,
/// killing it after `timeout`.
pub fn run_bounded(mut cmd: Command, stdin: &[u8], timeout: Duration) -> Result<CtlOutput> {
    let mut child = cmd.spawn().context("spawning")?;
    let mut child_stdin = child.stdin.take().context("stdin not piped")?;
    let input = stdin.to_vec();
    let writer = std::thread::spawn(move || {
        // A child that exits without reading stdin gives EPIPE; that is fine.
        let _ = child_stdin.write_all(&input);
    });
    let mut out = child.stdout.take().context("stdout not piped")?;
    let mut err = child.stderr.take().context("stderr not piped")?;
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        buf
    });
    let start = Instant::now();
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let _ = writer.join();
            let stdout = out_reader.join().unwrap_or_default();
            let stderr = err_reader.join().unwrap_or_default();
            bail!(
                "timed out after {timeout:?}; stdout: {:?}; stderr: {:?}",
                bytes_to_text(&stdout),
                bytes_to_text(&stderr)
            );
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    };
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(CtlOutput {
        code: status.code(),
        stdout,
        stderr,
        stopped: false,
    })
}
