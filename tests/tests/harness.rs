//! Self-tests of the harness against the real etcd 3.5 and 3.4 (no concord needed): start-up on
//! distinct loopback addresses, `/version`, etcdctl of both versions, stop, pause/resume,
//! `kill -9` + restart on the same data dir, and etcdctl commands that never end (`run_for`,
//! `spawn`).

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use anyhow::{Result, ensure};
use concord_tests::{Etcdctl, Server, ServerKind, http_get};

#[test]
fn etcd35_and_etcd34_start_side_by_side() -> Result<()> {
    let mut e35 = Server::start(ServerKind::Etcd35)?;
    let e34 = Server::start(ServerKind::Etcd34)?;
    ensure!(e35.ip() != e34.ip(), "both servers got {}", e35.ip());
    for (server, version) in [
        (&e35, "\"etcdserver\":\"3.5.16\""),
        (&e34, "\"etcdserver\":\"3.4.23\""),
    ] {
        let (code, body) = http_get(server.client_addr(), "/version", Duration::from_secs(5))?;
        ensure!(
            code == 200 && body.contains(version),
            "/version: {code} {body}"
        );
        for ctl in Etcdctl::ALL {
            let out = ctl.run(&server.endpoint(), ["put", "k", "v"], None)?;
            ensure!(
                out.success() && out.stdout_text() == "OK\n",
                "{ctl:?} put: {out:?}"
            );
            let out = ctl.run(&server.endpoint(), ["get", "k", "--print-value-only"], None)?;
            ensure!(out.stdout_text() == "v\n", "{ctl:?} get: {out:?}");
        }
    }
    // A paused server answers nothing; a resumed one answers again.
    e34.pause()?;
    let out = Etcdctl::V35.run_with_timeout(
        &e34.endpoint(),
        ["get", "k", "--command-timeout=500ms"],
        None,
        Duration::from_secs(10),
    )?;
    ensure!(!out.success(), "a paused server answered: {out:?}");
    e34.resume()?;
    let out = Etcdctl::V35.run(&e34.endpoint(), ["get", "k", "--print-value-only"], None)?;
    ensure!(out.stdout_text() == "v\n", "after resume: {out:?}");

    // etcd re-raises SIGTERM after its clean shutdown, so it ends "killed by SIGTERM".
    let status = e35.stop()?.expect("was running");
    ensure!(
        status.success() || status.signal() == Some(15),
        "etcd 3.5 stopped with {status}"
    );
    ensure!(!e35.is_running());
    Ok(())
}

#[test]
fn etcd35_kill9_restart_keeps_data() -> Result<()> {
    let mut server = Server::builder(ServerKind::Etcd35)
        .name("harness")
        .arg("--snapshot-count=5")
        .start()?;
    let ep = server.endpoint();
    for i in 0..10 {
        let out = Etcdctl::V35.run(&ep, ["put", &format!("k{i}"), &format!("v{i}")], None)?;
        ensure!(out.success(), "put: {out:?}");
    }
    server.kill9()?;
    ensure!(!server.is_running());
    server.restart()?;
    let out = Etcdctl::V35.run(
        &ep,
        ["get", "k", "--prefix", "--count-only", "-w", "fields"],
        None,
    )?;
    ensure!(
        out.stdout_text().contains("\"Count\" : 10"),
        "after restart: {out:?}"
    );
    Ok(())
}

#[test]
fn etcdctl_run_for_returns_what_a_watch_printed() -> Result<()> {
    let server = Server::start(ServerKind::Etcd35)?;
    let ep = server.endpoint();
    let out = Etcdctl::V35.run(&ep, ["put", "k", "v"], None)?;
    ensure!(out.success(), "put: {out:?}");
    for ctl in Etcdctl::ALL {
        // A watch never ends: it is stopped, and what it printed is returned.
        let out = ctl.run_for(
            &ep,
            ["watch", "k", "--rev", "1"],
            None,
            Duration::from_secs(1),
        )?;
        ensure!(
            out.stopped && out.code.is_none() && out.stdout_text() == "PUT\nk\nv\n",
            "{ctl:?} watch: {out:?}"
        );
        // Interactive mode reads stdin, which stays open until the end.
        let out = ctl.run_for(
            &ep,
            ["watch", "-i"],
            Some(b"watch k --rev 1\n"),
            Duration::from_secs(1),
        )?;
        ensure!(
            out.stopped && out.stdout_text() == "PUT\nk\nv\n",
            "{ctl:?} watch -i: {out:?}"
        );
        // A command that ends by itself is not stopped.
        let out = ctl.run_for(&ep, ["watch"], None, Duration::from_secs(10))?;
        ensure!(
            !out.stopped && out.code == Some(128),
            "{ctl:?} watch: {out:?}"
        );
        // A background watcher is seen connected, then sees a live put.
        let mut bg = ctl.spawn(&ep, ["watch", "live"], None)?;
        ensure!(bg.wait_connected(server.client_addr(), Duration::from_secs(15))?);
        std::thread::sleep(Duration::from_millis(300));
        let out = ctl.run(&ep, ["put", "live", "1"], None)?;
        ensure!(out.success(), "put: {out:?}");
        let out = bg.stop_after(Duration::from_millis(500))?;
        ensure!(
            out.stopped && out.stdout_text() == "PUT\nlive\n1\n",
            "{ctl:?} live watch: {out:?}"
        );
    }
    Ok(())
}
