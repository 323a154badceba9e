//! Pod DNS names for processes on this machine: a marked block of `/etc/hosts` owned by one
//! stand-in node, so that glibc's resolver and Go's pure resolver (both read `/etc/hosts` first)
//! resolve `<hostname>.<subdomain>.<namespace>.svc[.cluster.local]` to the pod's loopback address.
//!
//! Each [`HostsBlock`] owns the lines between its `# BEGIN concord-test-node <id> pid=<pid>` and
//! `# END concord-test-node <id>` markers and never touches other lines. Every change rewrites
//! the file under an exclusive `flock` on a lock file next to it, into a temp file renamed over
//! `/etc/hosts` (atomic for readers), keeping the file's mode. Dropping the block removes it;
//! blocks left by a process that no longer exists (a test killed by a timeout) are removed by the
//! next [`HostsBlock::new`].

use std::fs::OpenOptions;
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{Flock, FlockArg};

const MARK: &str = "concord-test-node";

/// One stand-in node's block in a hosts file.
#[derive(Debug)]
pub struct HostsBlock {
    path: PathBuf,
    id: String,
}

impl HostsBlock {
    /// A new, empty block in `/etc/hosts` (`CONCORD_TEST_HOSTS_FILE` overrides the path, for tests
    /// of this module). Removes blocks of dead processes.
    pub fn new(id: impl Into<String>) -> Result<HostsBlock> {
        let path = std::env::var_os("CONCORD_TEST_HOSTS_FILE")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/etc/hosts"));
        HostsBlock::at(path, id)
    }

    /// A new, empty block in the hosts file at `path`.
    pub fn at(path: impl Into<PathBuf>, id: impl Into<String>) -> Result<HostsBlock> {
        let block = HostsBlock {
            path: path.into(),
            id: id.into(),
        };
        block.update(|text| remove_blocks(text, |id, pid| id == block.id || !pid_alive(pid)))?;
        Ok(block)
    }

    /// Replaces the block's content with one line per `(address, names)` entry (entries with no
    /// names are skipped).
    pub fn set(&self, entries: &[(Ipv4Addr, Vec<String>)]) -> Result<()> {
        let mut lines = format!("# BEGIN {MARK} {} pid={}\n", self.id, std::process::id());
        for (ip, names) in entries.iter().filter(|(_, n)| !n.is_empty()) {
            lines.push_str(&format!("{ip} {}\n", names.join(" ")));
        }
        lines.push_str(&format!("# END {MARK} {}\n", self.id));
        self.update(|text| {
            let mut kept = remove_blocks(text, |id, _| id == self.id);
            if !kept.is_empty() && !kept.ends_with('\n') {
                kept.push('\n');
            }
            kept.push_str(&lines);
            kept
        })
    }

    fn update(&self, edit: impl FnOnce(&str) -> String) -> Result<()> {
        let lock_path = lock_path(&self.path);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?;
        let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .with_context(|| format!("locking {}", lock_path.display()))?;
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        let new = edit(&text);
        if new == text {
            return Ok(());
        }
        let mode = std::fs::metadata(&self.path)
            .map(|m| m.permissions().mode())
            .unwrap_or(0o644);
        let dir = self.path.parent().unwrap_or(Path::new("/"));
        let tmp = dir.join(format!(
            ".{}.{MARK}.{}.tmp",
            self.path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("hosts"),
            std::process::id()
        ));
        {
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(new.as_bytes())?;
            f.set_permissions(std::fs::Permissions::from_mode(mode))?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
            .with_context(|| format!("renaming {} over {}", tmp.display(), self.path.display()))
    }
}

impl Drop for HostsBlock {
    fn drop(&mut self) {
        let _ = self.update(|text| remove_blocks(text, |id, _| id == self.id));
    }
}

fn lock_path(path: &Path) -> PathBuf {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("hosts");
    path.with_file_name(format!(".{name}.{MARK}.lock"))
}

fn pid_alive(pid: Option<u32>) -> bool {
    match pid {
        Some(pid) => Path::new(&format!("/proc/{pid}")).exists(),
        None => true,
    }
}

/// `text` without the marked blocks for which `drop(id, pid)` is true.
fn remove_blocks(text: &str, drop: impl Fn(&str, Option<u32>) -> bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut skipping: Option<String> = None;
    let begin = format!("# BEGIN {MARK} ");
    let end = format!("# END {MARK} ");
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_end();
        if let Some(id) = &skipping {
            if trimmed.strip_prefix(&end) == Some(id.as_str()) {
                skipping = None;
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix(&begin) {
            let mut parts = rest.split_whitespace();
            let id = parts.next().unwrap_or_default().to_owned();
            let pid = parts
                .next()
                .and_then(|p| p.strip_prefix("pid="))
                .and_then(|p| p.parse().ok());
            if drop(&id, pid) {
                skipping = Some(id);
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_is_added_replaced_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "127.0.0.1 localhost\n").unwrap();
        // A block from a process that no longer exists is cleaned up.
        let stale =
            "# BEGIN concord-test-node old pid=4294967\n127.9.9.9 x\n# END concord-test-node old\n";
        std::fs::write(&path, format!("127.0.0.1 localhost\n{stale}")).unwrap();
        let a = HostsBlock::at(&path, "a").unwrap();
        let b = HostsBlock::at(&path, "b").unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n"
        );
        a.set(&[(
            Ipv4Addr::new(127, 1, 1, 1),
            vec!["m-0.s.ns.svc".into(), "m-0".into()],
        )])
        .unwrap();
        b.set(&[(Ipv4Addr::new(127, 2, 2, 2), vec!["other".into()])])
            .unwrap();
        a.set(&[
            (Ipv4Addr::new(127, 1, 1, 2), vec!["m-0.s.ns.svc".into()]),
            (Ipv4Addr::new(127, 1, 1, 3), vec![]),
        ])
        .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("127.0.0.1 localhost\n"), "{text}");
        assert!(text.contains("127.1.1.2 m-0.s.ns.svc\n"), "{text}");
        assert!(!text.contains("127.1.1.1"), "{text}");
        assert!(!text.contains("127.1.1.3"), "{text}");
        assert!(text.contains("127.2.2.2 other\n"), "{text}");
        drop(a);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("m-0"), "{text}");
        assert!(text.contains("127.2.2.2 other\n"), "{text}");
        drop(b);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "127.0.0.1 localhost\n"
        );
    }
}
