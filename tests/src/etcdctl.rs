//! Running the real etcdctl (3.5 or 3.4) against an endpoint.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
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
    })
}
