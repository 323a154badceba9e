//! Child processes that never outlive the test: each runs in its own process group (so that a
//! kill reaches everything it forked) and, where util-linux's `setpriv` exists, with a parent-death
//! signal, so that even a test process killed by a timeout takes its children with it.
//!
//! This module owns spawning and killing; it never signals a process it did not start.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;

/// util-linux's `setpriv`, used for `--pdeathsig KILL`.
const SETPRIV: &str = "/usr/bin/setpriv";

/// A `Command` running `program` in a new process group, with SIGKILL as its parent-death signal
/// when `setpriv` is available, stdin closed, and stdout and stderr appended to `log`.
pub(crate) fn command(program: impl AsRef<OsStr>, log: &Path) -> Result<Command> {
    let mut cmd = if Path::new(SETPRIV).is_file() {
        let mut c = Command::new(SETPRIV);
        c.arg("--pdeathsig").arg("KILL").arg("--").arg(program);
        c
    } else {
        Command::new(program)
    };
    let out = open_log(log)?;
    let err = out.try_clone()?;
    cmd.process_group(0)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    // Proxies would send the control plane's loopback traffic elsewhere.
    for (k, _) in std::env::vars_os() {
        let name = k.to_string_lossy().to_ascii_lowercase();
        if name.ends_with("_proxy") || name.starts_with("etcd_") || name.starts_with("etcdctl_") {
            cmd.env_remove(&k);
        }
    }
    Ok(cmd)
}

/// Opens `path` for appending (creating it), with a header line saying what starts next.
pub(crate) fn open_log(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))
}

/// Appends one line to a log file (best effort).
pub(crate) fn log_line(path: &Path, line: &str) {
    if let Ok(mut f) = open_log(path) {
        let _ = writeln!(f, "=== concord-tests: {line}");
    }
}

/// Sends `sig` to the process group led by `pid` (a child started with [`command`]).
pub(crate) fn signal_group(pid: u32, sig: Signal) {
    let _ = killpg(Pid::from_raw(pid as i32), sig);
}

/// The last `max_lines` lines of a (possibly large) file, lossily decoded.
pub(crate) fn tail(path: &Path, max_lines: usize) -> String {
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

/// A free TCP port on `127.0.0.1` (bound and released; callers retry if another process takes it
/// in between).
pub(crate) fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("127.0.0.1", 0)).context("binding 127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// A temp dir that is kept (and printed) when `CONCORD_TEST_KEEP_DIRS` is set or `keep` is true.
pub(crate) fn finish_dir(
    dir: Option<tempfile::TempDir>,
    what: &str,
    keep: bool,
) -> Option<PathBuf> {
    let dir = dir?;
    if keep || super::keep_dirs() {
        let path = dir.keep();
        eprintln!("--- kept {what} dir {}", path.display());
        Some(path)
    } else {
        None
    }
}
