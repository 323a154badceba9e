//! Multi-process test harness for concord.
//!
//! Tests here drive real binaries the way operators and clients do:
//!
//! - [`Server`] starts `concord`, etcd 3.5.16 or etcd 3.4.23 as a child process on its own
//!   loopback address ([`LoopbackIp`]: a random `127.a.b.c`, unique across concurrently running
//!   test processes) with etcd's standard ports 2379 (client) and 2380 (peer) and a fresh data dir,
//!   waits until `/health` says so, and can `kill -9`, restart, pause or stop it.
//! - [`Cluster`] starts several members of one kind, bootstrapped from flags, each a [`Server`].
//! - [`Etcdctl`] runs the real etcdctl (3.5 or 3.4) against an endpoint, with a timeout, or for a
//!   fixed time for commands that never end (`watch`, `lease keep-alive`).
//! - [`bench`] is the `concord-bench` tool: the same workloads against concord and etcd, side by
//!   side (or against running endpoints), with a table and JSON of the figures.
//! - [`normalize`] blanks the fields that legitimately differ between two servers (IDs, sizes,
//!   timings), each named by the test that blanks it, and renders readable line diffs.
//!
//! Binaries are found at fixed default paths, each overridable by an environment variable:
//!
//! | binary | default | override |
//! |---|---|---|
//! | concord | `<target dir>/debug/concord` (next to the test executable) | `CONCORD_BIN` |
//! | etcd / etcdctl 3.5.16 | `/var/cache/concord-test/etcd-3.5.16/usr/bin/` | `ETCD35_BIN_DIR` |
//! | etcd / etcdctl 3.4.23 | `/usr/bin/` | `ETCD34_BIN_DIR` |
//!
//! `scripts/install-test-deps.sh` puts the etcd binaries there. Setting `CONCORD_BIN` to etcd
//! 3.5's binary runs every concord test against etcd itself, which is how the harness and the
//! tests are validated. `CONCORD_TEST_KEEP_DIRS=1` keeps each server's temp dir (data dir and
//! `stdout.log` / `stderr.log`) after the test.
//!
//! Every child process talks only to loopback addresses.

pub mod bench;
pub mod cluster;
pub mod etcdctl;
pub mod k8s;
pub mod ledger;
pub mod normalize;
pub mod server;
pub mod tls;

pub use cluster::Cluster;
pub use etcdctl::{Background, CtlOutput, Etcdctl};
pub use normalize::{Normalizer, bytes_to_text, line_diff};
pub use server::{CLIENT_PORT, LoopbackIp, PEER_PORT, Server, ServerBuilder, ServerKind, http_get};

use std::path::PathBuf;

/// Default directory of etcd 3.5.16's binaries (see `scripts/install-test-deps.sh`).
pub const ETCD35_DEFAULT_BIN_DIR: &str = "/var/cache/concord-test/etcd-3.5.16/usr/bin";
/// Default directory of etcd 3.4.23's binaries (Debian bookworm's `etcd-server`, `etcd-client`).
pub const ETCD34_DEFAULT_BIN_DIR: &str = "/usr/bin";

/// Directory holding etcd 3.5's `etcd` and `etcdctl` (`ETCD35_BIN_DIR` or the default).
pub fn etcd35_bin_dir() -> PathBuf {
    std::env::var_os("ETCD35_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ETCD35_DEFAULT_BIN_DIR))
}

/// Directory holding etcd 3.4's `etcd` and `etcdctl` (`ETCD34_BIN_DIR` or the default).
pub fn etcd34_bin_dir() -> PathBuf {
    std::env::var_os("ETCD34_BIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(ETCD34_DEFAULT_BIN_DIR))
}

/// Path of the concord binary: `CONCORD_BIN`, else `concord` in the cargo target profile dir
/// that holds the running test executable (`target/debug/deps/<test>` -> `target/debug/concord`).
pub fn concord_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("CONCORD_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1).take(3) {
        let candidate = dir.join("concord");
        if candidate.is_file() {
            return Ok(candidate);
        }
    }
    anyhow::bail!(
        "no concord binary found next to {} (run `cargo build --bin concord`, or set CONCORD_BIN)",
        exe.display()
    )
}

/// A random 64-bit number, different in each process and call (no extra dependency needed).
pub fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.write_u32(std::process::id());
    if let Ok(d) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        h.write_u128(d.as_nanos());
    }
    h.finish()
}
