//! Shared by the in-process integration tests: one concord member on 127.0.0.1:0 with a fresh
//! data dir, served until the returned [`Member`] is dropped.

use concord_store::config::Config;
use concord_store::embed;
use tonic::transport::Channel;

/// A running in-process member.
#[allow(dead_code)] // each test binary uses a subset of the fields
pub struct Member {
    /// A lazily connecting channel to the member's client port.
    pub channel: Channel,
    /// The member's client address (gRPC and HTTP share it).
    pub addr: std::net::SocketAddr,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// Starts a single-member concord with default flags and its own data dir.
#[allow(dead_code)] // not every test binary uses both constructors
pub async fn member() -> Member {
    member_with(|_| {}).await
}

/// Like [`member`], with flags changed by `tune`.
#[allow(dead_code)]
pub async fn member_with(tune: impl FnOnce(&mut Config)) -> Member {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut cfg = Config {
        data_dir: dir.path().join("data"),
        ..Config::default()
    };
    tune(&mut cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let server = embed::start(&cfg).expect("member starts");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(embed::serve(server, vec![listener], async move {
        let _ = rx.await;
    }));
    let channel = Channel::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect_lazy();
    Member {
        channel,
        addr,
        _dir: dir,
        _stop: tx,
    }
}
