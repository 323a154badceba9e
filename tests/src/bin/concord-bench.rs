//! `concord-bench`: the side-by-side benchmark of concord and etcd (or of running endpoints).
//! Everything but argument parsing lives in [`concord_tests::bench`], whose header describes the
//! workloads and flags.
//!
//! Build optimised binaries first: `cargo build --release -p concord-store --bin concord -p
//! concord-tests --bin concord-bench`, then `target/release/concord-bench --pin` (it uses
//! `target/release/concord`, next to itself, unless `CONCORD_BIN` says otherwise).

use anyhow::Result;
use clap::Parser;
use concord_tests::bench::{Args, run};

/// mimalloc, as the server: the load generator allocates per request as much as the server
/// does, and with glibc's malloc it spent 8% of its CPU there.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    run(Args::parse())?;
    Ok(())
}
