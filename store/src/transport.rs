//! The peer transport: raft messages between the members of a cluster, and the gRPC peer calls
//! (`concordpb.Peer`, see `proto/concordpb/peer.proto`), on the peer URLs. This is the only code
//! that talks to other members.
//!
//! Outgoing: each remote member has an `Outbox` and a link task that owns one raft stream to
//! it: a TCP (or TLS) connection that starts with `RAFT_MAGIC` and then carries frames, each
//! a 4-byte big-endian length and a [`RaftEnvelope`] (messages encoded with raft-rs's protobuf
//! codec). [`Transport::send`], called by the raft loop, never blocks: it encodes each member's
//! messages of one call into an envelope frame and, when that member's plain TCP stream is idle
//! (nothing queued or being written), writes it to the socket itself with a non-blocking write;
//! otherwise (TLS, a short write, a busy stream) it queues the bytes and wakes the link task,
//! which writes them in order. This is etcd's design (a long-lived HTTP/1.1 stream per member
//! pair) without HTTP: a gRPC client stream cost, per message, task hops and HTTP/2 framing and
//! flow control on both sides; a direct write saves the hop to the link task too. Frames for a
//! member with `MAX_PENDING_BYTES` queued, or whose stream failed and waits to reconnect, are
//! dropped and the member reported unreachable, as etcd's rafthttp does (raft resends what
//! matters). An idle stream carries an empty frame every `IDLE_FRAME`; a frame that cannot be
//! written, or a stream silent, for `IO_TIMEOUT` ends it, as etcd's stream timeouts do. A
//! failed stream reconnects with exponential backoff (`backon`). The raft loop collects the
//! unreachable reports with [`Transport::take_unreachable`] and passes them to
//! `RawNode::report_unreachable`.
//!
//! Incoming: [`serve_peers`] tells raft streams from gRPC connections on the peer listener (by
//! `RAFT_MAGIC`, or on TLS by the ALPN protocol [`crate::tls::RAFT_ALPN`]). A raft stream's
//! task checks every envelope's cluster id, sender and destination, and hands each decoded
//! message to the raft loop as [`Msg::Step`]. A refused envelope ends the stream with the reason
//! written back: a member of another cluster gets a message naming both ids, a removed member
//! "the member has been permanently removed from the cluster", which makes its transport report
//! [`Transport::removed_by_peer`] so it stops, as etcd's rafthttp does with HTTP 410. The gRPC
//! side ([`PeerService`]) answers `Members` (the members table and cluster id), which a member
//! joining with `--initial-cluster-state=existing` asks of the others through
//! [`fetch_members`], and the lease keep-alives, time-to-live queries and learner promotions
//! that followers forward to the leader ([`LeaderCalls`], [`Transport::client`]).
//!
//! Snapshots: a MsgSnapshot does not go on the stream. Its state, staged by the raft log
//! ([`Transport::stage_snapshot`]), is written to a file and streamed in chunks over a
//! `Snapshot` call of its own; the outcome goes back to raft
//! ([`Transport::take_snapshot_reports`]). The receiving member saves the file
//! ([`received_snapshot_path`]) before it steps the message.

use std::collections::{HashMap, HashSet};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use prost::Message as ProstMessage;
use protobuf::Message as PbMessage;
use raft::prelude::{Message, MessageType};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status, Streaming};

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fault::PeerFaults;
use crate::proto::concordpb::peer_client::PeerClient;
use crate::proto::concordpb::peer_server::{Peer, PeerServer};
use crate::proto::concordpb::{
    MembersRequest, MembersResponse, RaftEnvelope, SnapshotAck, SnapshotChunk, StreamAck,
};
use crate::proto::etcdserverpb::{
    LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
    Member, MemberPromoteRequest, MemberPromoteResponse,
};
use crate::raft::Msg;
use crate::tls::Tls;

/// Bytes of frames waiting for one member before new ones are dropped.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// The first bytes of a raft stream on a plaintext peer listener, which tell it from gRPC
/// (whose connections start with the HTTP/2 preface). On TLS, [`crate::tls::RAFT_ALPN`] does.
const RAFT_MAGIC: &[u8; 8] = b"CNCDRFT1";
/// An idle raft stream carries an empty frame this often.
const IDLE_FRAME: Duration = Duration::from_secs(1);
/// A raft stream whose frame cannot be written, or which carries nothing, for this long is
/// dead (etcd's rafthttp `ConnWriteTimeout` and `ConnReadTimeout`).
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Connecting to one peer URL.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// An envelope stops taking messages once it holds this many bytes.
const MAX_ENVELOPE_BYTES: usize = 4 << 20;
/// Largest envelope a member accepts: one oversized entry plus a batch.
const MAX_RECV_BYTES: usize = 64 << 20;
/// Bytes of the state file per snapshot chunk.
const SNAPSHOT_CHUNK: usize = 1 << 20;
/// A stream that stayed up this long resets the reconnect backoff.
const HEALTHY_STREAM: Duration = Duration::from_secs(5);

/// How this member reaches the others.
pub struct Transport {
    local: u64,
    cluster: u64,
    shared: Arc<Shared>,
    /// Each remote member's peer URLs and queue.
    peers: Mutex<HashMap<u64, PeerLink>>,
    /// Channels for unary calls to other members (forwarded lease requests), by member id.
    calls: Mutex<HashMap<u64, Channel>>,
    /// TLS for `https` peer URLs.
    tls: Option<Tls>,
    rt: tokio::runtime::Handle,
    /// Test-only network cuts ([`crate::fault`]).
    faults: Option<PeerFaults>,
}

/// A remote member's peer URLs and the outbox of its link task; dropping it ends the task.
struct PeerLink {
    urls: Vec<String>,
    outbox: Arc<Outbox>,
}

impl Drop for PeerLink {
    fn drop(&mut self) {
        self.outbox.close();
    }
}

/// The sending side of the raft stream to one member, shared by the raft loop (which queues
/// frames, or writes them itself) and the member's link task (which owns the connection).
struct Outbox {
    state: Mutex<OutboxState>,
    /// Wakes the link task: bytes are pending, or the link closed.
    wake: tokio::sync::Notify,
}

struct OutboxState {
    /// Whether frames are taken: while a stream is up or being connected, but not while the
    /// link waits to reconnect after a failure (they would be stale by then; raft resends what
    /// matters).
    accepting: bool,
    /// The socket of a plain TCP stream: the raft loop writes a frame to it itself, without
    /// waking the link task, when nothing is pending or being written.
    direct: Option<Arc<tokio::net::tcp::OwnedWriteHalf>>,
    /// Whether the link task is writing bytes it took from `pending`.
    writing: bool,
    /// Frame bytes not written yet, in order.
    pending: Vec<u8>,
    /// The link is gone (the member was removed, or the transport dropped).
    closed: bool,
}

impl Outbox {
    fn new() -> Outbox {
        Outbox {
            state: Mutex::new(OutboxState {
                accepting: true,
                direct: None,
                writing: false,
                pending: Vec::new(),
                closed: false,
            }),
            wake: tokio::sync::Notify::new(),
        }
    }

    /// Writes `frame` at once, or queues it for the link task. False when the member cannot
    /// take it: no stream is up, or too much is pending.
    fn push(&self, frame: &[u8]) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        if !st.accepting || st.pending.len() + frame.len() > MAX_PENDING_BYTES {
            return false;
        }
        let mut rest = frame;
        if st.pending.is_empty()
            && !st.writing
            && let Some(direct) = &st.direct
        {
            // A short or failed write leaves the rest to the task, which meets the error (if
            // any) on its next write.
            match direct.try_write(frame) {
                Ok(n) if n == frame.len() => return true,
                Ok(n) => rest = &frame[n..],
                Err(_) => {}
            }
        }
        st.pending.extend_from_slice(rest);
        drop(st);
        self.wake.notify_one();
        true
    }

    /// Ends the link: its task stops.
    fn close(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.closed = true;
        }
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.state.lock().map_or(true, |st| st.closed)
    }

    /// Takes frames again (queued until the stream being connected is up).
    fn connecting(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.accepting = true;
        }
    }

    /// A stream is up: the link task writes what is pending first; with `direct` (a plain TCP
    /// stream's socket) the raft loop writes to it itself after that.
    fn up(&self, direct: Option<Arc<tokio::net::tcp::OwnedWriteHalf>>) {
        if let Ok(mut st) = self.state.lock() {
            st.direct = direct;
            st.writing = false;
        }
    }

    /// The stream failed: frames are dropped (pending ones too) until the next connect.
    fn down(&self) {
        if let Ok(mut st) = self.state.lock() {
            st.accepting = false;
            st.direct = None;
            st.writing = false;
            st.pending.clear();
        }
    }

    /// Swaps what is pending into `buf` (empty) and marks it being written; `None` when the
    /// link closed. Returns with an empty `buf` (and nothing marked) when nothing is pending.
    fn take(&self, buf: &mut Vec<u8>) -> Option<()> {
        let mut st = self.state.lock().ok()?;
        if st.closed {
            return None;
        }
        std::mem::swap(buf, &mut st.pending);
        st.writing = !buf.is_empty();
        Some(())
    }

    /// Marks the link task writing `frame` (an idle frame) unless something is pending or
    /// being written already, which keeps the stream busy anyway.
    fn take_idle(&self, buf: &mut Vec<u8>, frame: &[u8]) {
        if let Ok(mut st) = self.state.lock()
            && st.pending.is_empty()
            && !st.writing
        {
            st.writing = true;
            buf.extend_from_slice(frame);
        }
    }
}

/// State shared with the peer tasks.
#[derive(Default)]
struct Shared {
    /// Members whose messages could not be delivered since the raft loop last asked.
    unreachable: Mutex<HashSet<u64>>,
    /// Members with a working stream, and since when.
    active: Mutex<HashMap<u64, Instant>>,
    /// A peer refused this member as removed from the cluster.
    removed: std::sync::atomic::AtomicBool,
    /// The state for the next MsgSnapshot to each member, staged by the raft log.
    staged: Mutex<HashMap<u64, StagedSnapshot>>,
    /// Outcomes of snapshots sent since the raft loop last asked: (member, delivered).
    snapshot_reports: Mutex<Vec<(u64, bool)>>,
}

/// The state a raft snapshot to one member carries: a read transaction of the leader's
/// database, begun by the raft loop at the snapshot's index, and that database.
pub struct StagedSnapshot {
    pub rtx: redb::ReadTransaction,
    pub backend: Arc<Backend>,
}

impl Shared {
    fn report_unreachable(&self, id: u64) {
        if let Ok(mut u) = self.unreachable.lock() {
            u.insert(id);
        }
    }

    fn report_snapshot(&self, id: u64, delivered: bool) {
        if let Ok(mut r) = self.snapshot_reports.lock() {
            r.push((id, delivered));
        }
    }
}

impl Transport {
    /// A transport for member `local` of cluster `cluster`, reaching `https` peer URLs with
    /// `tls`; spawns its tasks on `rt`.
    pub fn new(
        local: u64,
        cluster: u64,
        tls: Option<Tls>,
        rt: tokio::runtime::Handle,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            local,
            cluster,
            shared: Arc::default(),
            peers: Mutex::new(HashMap::new()),
            calls: Mutex::new(HashMap::new()),
            tls,
            rt,
            faults: PeerFaults::from_env(),
        })
    }

    /// Starts sending to member `id` at `peer_urls` (replacing an earlier link to it with other
    /// URLs). Messages to this member itself are never sent.
    pub fn add_peer(&self, id: u64, peer_urls: Vec<String>) {
        if id == self.local {
            return;
        }
        if let Ok(peers) = self.peers.lock()
            && peers.get(&id).is_some_and(|p| p.urls == peer_urls)
        {
            return;
        }
        let outbox = Arc::new(Outbox::new());
        let link = Link {
            to: id,
            urls: peer_urls.clone(),
            tls: self.tls.clone(),
            shared: self.shared.clone(),
        };
        self.rt.spawn(link.run(outbox.clone()));
        if let Ok(mut peers) = self.peers.lock() {
            // Dropping a previous link ends its task.
            peers.insert(
                id,
                PeerLink {
                    urls: peer_urls,
                    outbox,
                },
            );
        }
    }

    /// Stops sending to member `id`.
    pub fn remove_peer(&self, id: u64) {
        if let Ok(mut peers) = self.peers.lock() {
            peers.remove(&id);
        }
        if let Ok(mut calls) = self.calls.lock() {
            calls.remove(&id);
        }
    }

    /// Stops sending to every member not in `ids` (after a snapshot replaced the members).
    pub fn retain_peers(&self, ids: impl IntoIterator<Item = u64>) {
        let keep: HashSet<u64> = ids.into_iter().collect();
        if let Ok(mut peers) = self.peers.lock() {
            peers.retain(|id, _| keep.contains(id));
        }
        if let Ok(mut calls) = self.calls.lock() {
            calls.retain(|id, _| keep.contains(id));
        }
    }

    /// A client for unary peer calls to member `id` (on its peer URLs), connecting on first use
    /// and reusing the channel after that (tonic reconnects it when it breaks).
    pub async fn client(&self, id: u64) -> Result<PeerClient<Channel>> {
        if let Some(f) = &self.faults
            && let Ok(peers) = self.peers.lock()
            && peers.get(&id).is_some_and(|p| f.is_cut(&p.urls))
        {
            return Err(Error::Raft(format!(
                "member {id:x} is cut off ({})",
                crate::fault::ENV
            )));
        }
        let cached = self.calls.lock().ok().and_then(|c| c.get(&id).cloned());
        let channel = match cached {
            Some(ch) => ch,
            None => {
                let urls = self
                    .peers
                    .lock()
                    .ok()
                    .and_then(|p| p.get(&id).map(|p| p.urls.clone()))
                    .ok_or(Error::NoLeader)?;
                let ch = connect(&urls, self.tls.as_ref())
                    .await
                    .map_err(Error::Raft)?;
                if let Ok(mut calls) = self.calls.lock() {
                    calls.insert(id, ch.clone());
                }
                ch
            }
        };
        Ok(PeerClient::new(channel))
    }

    /// Whether a peer refused this member's messages because it was removed from the cluster
    /// (a removed member restarted on its old data dir); the raft loop then stops.
    pub fn removed_by_peer(&self) -> bool {
        self.shared
            .removed
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sends `msgs` to their members without blocking: each member's messages, in order, as
    /// envelope frames written at once when its stream is idle, else queued for its link task.
    /// Members that cannot take them (unknown, cut off, no stream up, or too much pending) are
    /// reported unreachable.
    pub fn send(&self, msgs: Vec<Message>) {
        if msgs.is_empty() {
            return;
        }
        let Ok(peers) = self.peers.lock() else {
            return;
        };
        let cut = |urls: &[String]| self.faults.as_ref().is_some_and(|f| f.is_cut(urls));
        // Per member, in the order raft produced them (a Ready rarely has more than a few).
        let mut batches: Vec<(u64, Vec<Vec<u8>>)> = Vec::new();
        for m in msgs {
            let to = m.to;
            if m.get_msg_type() == MessageType::MsgSnapshot {
                match peers.get(&to) {
                    Some(p) if !cut(&p.urls) => self.send_snapshot(m, p.urls.clone()),
                    _ => {
                        if let Ok(mut s) = self.shared.staged.lock() {
                            s.remove(&to);
                        }
                        self.shared.report_snapshot(to, false);
                        self.shared.report_unreachable(to);
                    }
                }
                continue;
            }
            let bytes = match m.write_to_bytes() {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode a raft message; dropped");
                    continue;
                }
            };
            match batches.iter_mut().find(|(id, _)| *id == to) {
                Some((_, batch)) => batch.push(bytes),
                None => batches.push((to, vec![bytes])),
            }
        }
        let mut frame = Vec::new();
        for (to, batch) in batches {
            let Some(link) = peers.get(&to) else {
                tracing::debug!(to = format!("{to:x}"), "no link to member; message dropped");
                self.shared.report_unreachable(to);
                continue;
            };
            if cut(&link.urls) {
                self.shared.report_unreachable(to);
                continue;
            }
            let mut batch = batch.into_iter().peekable();
            while batch.peek().is_some() {
                let mut messages = Vec::new();
                let mut bytes = 0;
                while bytes < MAX_ENVELOPE_BYTES
                    && let Some(m) = batch.next()
                {
                    bytes += m.len();
                    messages.push(m);
                }
                frame.clear();
                RaftEnvelope {
                    cluster_id: self.cluster,
                    from: self.local,
                    to,
                    messages,
                }
                .encode_frame(&mut frame);
                if !link.outbox.push(&frame) {
                    self.shared.report_unreachable(to);
                    break;
                }
            }
        }
    }

    /// Stages the state the next MsgSnapshot to member `to` carries (replacing an unsent one).
    pub fn stage_snapshot(&self, to: u64, staged: StagedSnapshot) {
        if let Ok(mut s) = self.shared.staged.lock() {
            s.insert(to, staged);
        }
    }

    /// Snapshots sent (or failed) since the last call: (member, delivered), for
    /// `RawNode::report_snapshot`.
    pub fn take_snapshot_reports(&self) -> Vec<(u64, bool)> {
        match self.shared.snapshot_reports.lock() {
            Ok(mut r) => std::mem::take(&mut *r),
            Err(_) => Vec::new(),
        }
    }

    /// Streams MsgSnapshot `m` with its staged state to the member at `urls`, on its own task:
    /// a snapshot can take long, and the member's other messages must not wait behind it.
    fn send_snapshot(&self, m: Message, urls: Vec<String>) {
        let to = m.to;
        let staged = self
            .shared
            .staged
            .lock()
            .ok()
            .and_then(|mut s| s.remove(&to));
        let Some(staged) = staged else {
            tracing::warn!(
                remote_peer_id = format!("{to:x}"),
                "no state staged for a raft snapshot; it is not sent"
            );
            self.shared.report_snapshot(to, false);
            return;
        };
        let header = RaftEnvelope {
            cluster_id: self.cluster,
            from: self.local,
            to,
            messages: Vec::new(),
        };
        let tls = self.tls.clone();
        let shared = self.shared.clone();
        self.rt.spawn(async move {
            let index = m.get_snapshot().get_metadata().index;
            let started = Instant::now();
            tracing::info!(
                remote_peer_id = format!("{to:x}"),
                snapshot_index = index,
                "sending database snapshot"
            );
            match stream_snapshot(m, header, staged, &urls, tls.as_ref()).await {
                Ok(bytes) => {
                    tracing::info!(
                        remote_peer_id = format!("{to:x}"),
                        snapshot_index = index,
                        bytes,
                        took = ?started.elapsed(),
                        "sent database snapshot"
                    );
                    shared.report_snapshot(to, true);
                }
                Err(e) => {
                    tracing::warn!(
                        remote_peer_id = format!("{to:x}"),
                        snapshot_index = index,
                        error = %e,
                        "failed to send database snapshot; the leader retries"
                    );
                    shared.report_snapshot(to, false);
                }
            }
        });
    }

    /// Since when the stream to member `id` has been working (`None`: it is not).
    pub fn active_since(&self, id: u64) -> Option<Instant> {
        self.shared.active.lock().ok()?.get(&id).copied()
    }

    /// Members reported unreachable since the last call.
    pub fn take_unreachable(&self) -> Vec<u64> {
        match self.shared.unreachable.lock() {
            Ok(mut u) if !u.is_empty() => u.drain().collect(),
            _ => Vec::new(),
        }
    }
}

/// One direction of one member pair: this member's messages to `to`.
struct Link {
    to: u64,
    urls: Vec<String>,
    tls: Option<Tls>,
    shared: Arc<Shared>,
}

/// Why a stream ended.
enum Ended {
    /// The queue closed: the member was removed or the transport is gone.
    Closed,
    /// Connecting or sending failed.
    Failed(String),
}

fn backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(50))
        .with_max_delay(Duration::from_secs(1))
        .with_jitter()
        .without_max_times()
        .build()
}

impl Link {
    async fn run(self, outbox: Arc<Outbox>) {
        let mut delays = backoff();
        let mut active = false;
        loop {
            let started = Instant::now();
            outbox.connecting();
            let ended = match self.connect().await {
                Ok(conn) => {
                    let (rd, wr) = conn.split();
                    outbox.up(wr.direct());
                    if !active {
                        active = true;
                        if let Ok(mut a) = self.shared.active.lock() {
                            a.insert(self.to, Instant::now());
                        }
                        tracing::info!(
                            remote_peer_id = format!("{:x}", self.to),
                            "peer became active"
                        );
                    }
                    self.stream(rd, wr, &outbox).await
                }
                Err(e) => Ended::Failed(e),
            };
            outbox.down();
            let reason = match ended {
                Ended::Closed => return,
                Ended::Failed(reason) => reason,
            };
            if active {
                active = false;
                if let Ok(mut a) = self.shared.active.lock() {
                    a.remove(&self.to);
                }
                tracing::warn!(
                    remote_peer_id = format!("{:x}", self.to),
                    error = %reason,
                    "peer became inactive (message send to peer failed)"
                );
            } else {
                tracing::debug!(
                    remote_peer_id = format!("{:x}", self.to),
                    error = %reason,
                    "cannot reach peer"
                );
            }
            self.shared.report_unreachable(self.to);
            if started.elapsed() >= HEALTHY_STREAM {
                delays = backoff();
            }
            let delay = delays.next().unwrap_or(Duration::from_secs(1));
            // Meanwhile, messages for the member are dropped (the outbox is down).
            let sleep = tokio::time::sleep(delay);
            tokio::pin!(sleep);
            loop {
                if outbox.is_closed() {
                    return;
                }
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = outbox.wake.notified() => {}
                }
            }
            if outbox.is_closed() {
                return;
            }
        }
    }

    /// Opens a raft stream to the first of the member's peer URLs that answers.
    async fn connect(&self) -> std::result::Result<RaftConn, String> {
        let mut errors = Vec::new();
        for url in &self.urls {
            match tokio::time::timeout(CONNECT_TIMEOUT, connect_raft(url, self.tls.as_ref())).await
            {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => errors.push(format!("{url}: {e}")),
                Err(_) => errors.push(format!("{url}: connecting timed out")),
            }
        }
        Err(errors.join("; "))
    }

    /// Writes what the outbox queues to one raft stream until it fails or the link closes.
    /// Frames the raft loop wrote itself never meet this task. An idle stream carries an empty
    /// frame every [`IDLE_FRAME`] so the receiver can tell it from a dead one.
    async fn stream(
        &self,
        mut rd: Box<dyn AsyncRead + Unpin + Send>,
        mut wr: RaftWriter,
        outbox: &Outbox,
    ) -> Ended {
        let refusal = read_refusal(&mut rd);
        tokio::pin!(refusal);
        let mut idle = tokio::time::interval(IDLE_FRAME);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            if outbox.take(&mut buf).is_none() {
                return Ended::Closed;
            }
            if buf.is_empty() {
                tokio::select! {
                    r = &mut refusal => {
                        if r == Error::Removed.to_string() {
                            self.shared
                                .removed
                                .store(true, std::sync::atomic::Ordering::Relaxed);
                        }
                        return Ended::Failed(r);
                    }
                    _ = outbox.wake.notified() => continue,
                    _ = idle.tick() => outbox.take_idle(&mut buf, &0u32.to_be_bytes()),
                }
                if buf.is_empty() {
                    continue;
                }
            }
            match tokio::time::timeout(IO_TIMEOUT, wr.write_all(&buf)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Ended::Failed(format!("cannot write to the peer: {e}")),
                Err(_) => {
                    return Ended::Failed(format!(
                        "writing to the peer took longer than {IO_TIMEOUT:?}"
                    ));
                }
            }
        }
    }
}

/// An open raft stream, before it is split into its reading and writing halves.
enum RaftConn {
    Plain(tokio::net::TcpStream),
    Tls(Box<dyn PeerIo>),
}

/// The writing half of a raft stream.
enum RaftWriter {
    /// Shared with the raft loop, which writes to it directly (see [`Outbox::push`]).
    Plain(Arc<tokio::net::tcp::OwnedWriteHalf>),
    Tls(tokio::io::WriteHalf<Box<dyn PeerIo>>),
}

impl RaftConn {
    fn split(self) -> (Box<dyn AsyncRead + Unpin + Send>, RaftWriter) {
        match self {
            RaftConn::Plain(tcp) => {
                let (rd, wr) = tcp.into_split();
                (Box::new(rd), RaftWriter::Plain(Arc::new(wr)))
            }
            RaftConn::Tls(io) => {
                let (rd, wr) = tokio::io::split(io);
                (Box::new(rd), RaftWriter::Tls(wr))
            }
        }
    }
}

impl RaftWriter {
    /// The socket the raft loop may write to itself.
    fn direct(&self) -> Option<Arc<tokio::net::tcp::OwnedWriteHalf>> {
        match self {
            RaftWriter::Plain(w) => Some(w.clone()),
            RaftWriter::Tls(_) => None,
        }
    }

    async fn write_all(&mut self, mut buf: &[u8]) -> std::io::Result<()> {
        match self {
            RaftWriter::Plain(w) => {
                while !buf.is_empty() {
                    w.writable().await?;
                    match w.try_write(buf) {
                        Ok(n) => buf = &buf[n..],
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return Err(e),
                    }
                }
                Ok(())
            }
            RaftWriter::Tls(w) => {
                w.write_all(buf).await?;
                w.flush().await
            }
        }
    }
}

/// A raft stream's connection: plain TCP or TLS.
trait PeerIo: AsyncRead + AsyncWrite + Unpin + Send {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send> PeerIo for T {}

/// Opens a raft stream to the member at peer URL `url` (over `tls` for `https`).
async fn connect_raft(url: &str, tls: Option<&Tls>) -> std::io::Result<RaftConn> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let https = uri.scheme_str() == Some("https");
    let (host, port) = crate::tls::host_port(&uri, if https { 443 } else { 80 })?;
    if https {
        let tls = tls.ok_or_else(|| {
            std::io::Error::other(
                "an https peer URL needs peer TLS (--peer-cert-file and --peer-key-file, or \
                 --peer-auto-tls)",
            )
        })?;
        let mut conn: Box<dyn PeerIo> = Box::new(tls.connect_raft(host, port).await?);
        conn.write_all(RAFT_MAGIC).await?;
        conn.flush().await?;
        Ok(RaftConn::Tls(conn))
    } else {
        let mut tcp = tokio::net::TcpStream::connect((host, port)).await?;
        tcp.set_nodelay(true)?;
        tcp.write_all(RAFT_MAGIC).await?;
        Ok(RaftConn::Plain(tcp))
    }
}

/// Waits for the receiver of a raft stream to refuse it (a length-prefixed reason, then the
/// end of the stream) or to close it; returns why the stream ended.
async fn read_refusal(rd: &mut (impl AsyncRead + Unpin)) -> String {
    let len = match rd.read_u32().await {
        Ok(len) => len as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return "the peer closed the stream".to_owned();
        }
        Err(e) => return format!("cannot read from the peer: {e}"),
    };
    let mut reason = vec![0; len.min(64 << 10)];
    match rd.read_exact(&mut reason).await {
        Ok(_) => String::from_utf8_lossy(&reason).into_owned(),
        Err(e) => format!("cannot read from the peer: {e}"),
    }
}

impl RaftEnvelope {
    /// Appends this envelope to `buf` as a raft stream frame: its length (4 bytes, big-endian),
    /// then its protobuf encoding. An empty frame (length 0) only keeps an idle stream alive.
    fn encode_frame(&self, buf: &mut Vec<u8>) {
        let len = ProstMessage::encoded_len(self);
        buf.reserve(4 + len);
        buf.extend_from_slice(&(len as u32).to_be_bytes());
        // Encoding into a Vec only fails for want of capacity, which `reserve` gave.
        let _ = ProstMessage::encode(self, buf);
    }
}

/// Connects to a member at the first of `urls` that answers (`https` ones over `tls`).
async fn connect(urls: &[String], tls: Option<&Tls>) -> std::result::Result<Channel, String> {
    let mut errors = Vec::new();
    for url in urls {
        let endpoint = match Endpoint::from_shared(crate::tls::endpoint_url(url)) {
            Ok(e) => e,
            Err(e) => {
                errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        let endpoint = endpoint
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3))
            .keep_alive_while_idle(true);
        match connect_endpoint(&endpoint, url, tls).await {
            Ok(ch) => return Ok(ch),
            Err(e) => errors.push(e),
        }
    }
    Err(errors.join("; "))
}

/// Connects `endpoint` (made from peer URL `url`): over TLS for an `https` URL.
async fn connect_endpoint(
    endpoint: &Endpoint,
    url: &str,
    tls: Option<&Tls>,
) -> std::result::Result<Channel, String> {
    let connected = if url.starts_with("https://") {
        let Some(tls) = tls else {
            return Err(format!(
                "{url}: an https peer URL needs peer TLS (--peer-cert-file and \
                 --peer-key-file, or --peer-auto-tls)"
            ));
        };
        endpoint
            .connect_with_connector(crate::tls::PeerConnector::new(tls))
            .await
    } else {
        endpoint.connect().await
    };
    connected.map_err(|e| format!("{url}: {}", error_chain(&e)))
}

/// Writes the staged state to a file and streams it, after `m` in `header`, to the member at
/// `urls`; returns the bytes of state sent.
async fn stream_snapshot(
    mut m: Message,
    mut header: RaftEnvelope,
    staged: StagedSnapshot,
    urls: &[String],
    tls: Option<&Tls>,
) -> std::result::Result<u64, String> {
    let file = tokio::task::spawn_blocking(move || {
        crate::snapshot::create_from(staged.rtx, &staged.backend)
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    let total = std::fs::metadata(file.path())
        .map_err(|e| format!("cannot stat {}: {e}", file.path().display()))?
        .len();
    m.mut_snapshot().data = Default::default();
    header.messages = vec![m.write_to_bytes().map_err(|e| e.to_string())?];
    let channel = connect(urls, tls).await?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(4);
    // The reader owns the file (deleted when dropped) until the last chunk is queued.
    let reader = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(file.path())
            .await
            .map_err(|e| format!("cannot open {}: {e}", file.path().display()))?;
        let mut first = Some(header);
        loop {
            let mut data = vec![0; SNAPSHOT_CHUNK];
            let mut n = 0;
            while n < data.len() {
                match f.read(&mut data[n..]).await {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(format!("cannot read {}: {e}", file.path().display())),
                }
            }
            data.truncate(n);
            let chunk = SnapshotChunk {
                total_bytes: if first.is_some() { total } else { 0 },
                header: first.take(),
                data,
            };
            if tx.send(chunk).await.is_err() {
                return Err("the snapshot stream closed".to_owned());
            }
            if n < SNAPSHOT_CHUNK {
                return Ok(());
            }
        }
    });
    let sent = PeerClient::new(channel)
        .max_encoding_message_size(usize::MAX)
        .snapshot(ReceiverStream::new(rx))
        .await;
    let read = reader.await.map_err(|e| e.to_string())?;
    sent.map_err(|s| format!("{}: {}", code_name(s.code()), s.message()))?;
    read?;
    Ok(total)
}

/// Where a member keeps a raft snapshot received at `index` until raft installs it: next to
/// the database (`<data-dir>/concord/`).
pub fn received_snapshot_path(backend: &Backend, index: u64) -> std::path::PathBuf {
    backend
        .path()
        .with_file_name(format!("snap-{index:016x}.redb"))
}

fn code_name(c: tonic::Code) -> String {
    format!("{c:?}")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The requests other members forward to this one while it leads: lease requests (answered
/// from its lessor) and learner promotions (it alone tracks the learner's progress). The
/// server answers them itself, never forwarding again.
#[tonic::async_trait]
pub trait LeaderCalls: Send + Sync + 'static {
    /// A keep-alive of lease `id`; [`Error::NotLeader`] unless this member's lessor is primary.
    async fn renew_as_leader(&self, id: i64) -> Result<LeaseKeepAliveResponse>;
    /// A time-to-live query; [`Error::NotLeader`] unless this member's lessor is primary.
    async fn time_to_live_as_leader(
        &self,
        req: LeaseTimeToLiveRequest,
    ) -> Result<LeaseTimeToLiveResponse>;
    /// A learner promotion; [`Error::NotLeader`] unless this member leads.
    async fn promote_as_leader(&self, id: u64) -> Result<MemberPromoteResponse>;
}

/// The `concordpb.Peer` service of one member: incoming raft messages and snapshots, the member
/// list, and the lease requests and promotions forwarded to the leader.
pub struct PeerService {
    inbox: RaftInbox,
    leader: Arc<dyn LeaderCalls>,
}

/// Where incoming raft messages go: checked, decoded and stepped into this member's raft loop.
#[derive(Clone)]
struct RaftInbox {
    local: u64,
    cluster: u64,
    raft: Sender<Msg>,
    backend: Arc<Backend>,
}

impl PeerService {
    /// The service of member `local` in cluster `cluster`, stepping messages into `raft`,
    /// listing the members of `backend` and answering forwarded requests with `leader`.
    pub fn new(
        local: u64,
        cluster: u64,
        raft: Sender<Msg>,
        backend: Arc<Backend>,
        leader: Arc<dyn LeaderCalls>,
    ) -> PeerService {
        PeerService {
            inbox: RaftInbox {
                local,
                cluster,
                raft,
                backend,
            },
            leader,
        }
    }
}

impl RaftInbox {
    fn check(&self, env: &RaftEnvelope) -> std::result::Result<(), Status> {
        if env.cluster_id != self.cluster {
            tracing::warn!(
                local_member_id = format!("{:x}", self.local),
                local_member_cluster_id = format!("{:x}", self.cluster),
                remote_peer_id = format!("{:x}", env.from),
                remote_peer_cluster_id = format!("{:x}", env.cluster_id),
                "request cluster ID mismatch"
            );
            return Err(Status::failed_precondition(format!(
                "cluster ID mismatch: member {:x} belongs to cluster {:x}, but the sender {:x} \
                 belongs to cluster {:x}; members of one cluster must be started with the same \
                 --initial-cluster and --initial-cluster-token",
                self.local, self.cluster, env.from, env.cluster_id
            )));
        }
        if crate::membership::is_removed(&self.backend, env.from)? {
            // etcd's rafthttp answers 410 Gone with errMemberRemoved; the sender stops.
            tracing::warn!(
                local_member_id = format!("{:x}", self.local),
                remote_peer_id = format!("{:x}", env.from),
                "rejected stream from remote peer because it was removed"
            );
            return Err(Status::failed_precondition(Error::Removed.to_string()));
        }
        if env.to != self.local {
            tracing::warn!(
                local_member_id = format!("{:x}", self.local),
                remote_peer_id = format!("{:x}", env.from),
                intended_member_id = format!("{:x}", env.to),
                "request sent to the wrong member"
            );
            return Err(Status::failed_precondition(format!(
                "member ID mismatch: this is member {:x}, the message is for member {:x}; check \
                 the peer URLs in --initial-cluster",
                self.local, env.to
            )));
        }
        Ok(())
    }

    /// Checks `env` and steps its messages into the raft loop, in order.
    fn deliver(&self, env: RaftEnvelope) -> std::result::Result<(), Status> {
        self.check(&env)?;
        for b in env.messages {
            let m = Message::parse_from_bytes(&b)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?;
            if self.raft.send(Msg::Step(m)).is_err() {
                return Err(Error::Stopped.into());
            }
        }
        Ok(())
    }

    /// Serves one raft stream (after [`RAFT_MAGIC`]) until the sender closes it, it breaks,
    /// it stays silent for [`IO_TIMEOUT`], or `stop` turns true. A refused envelope (see
    /// [`RaftInbox::check`]) ends it with the reason written back to the sender.
    async fn receive(&self, conn: impl PeerIo, mut stop: tokio::sync::watch::Receiver<bool>) {
        let (rd, mut wr) = tokio::io::split(conn);
        let mut rd = tokio::io::BufReader::with_capacity(64 << 10, rd);
        let ended = tokio::select! {
            r = self.read_frames(&mut rd) => r,
            _ = stop.wait_for(|stopped| *stopped) => return,
        };
        if let Err(reason) = ended {
            tracing::debug!(reason = %reason, "raft stream from a peer ended");
            let mut frame = (reason.len() as u32).to_be_bytes().to_vec();
            frame.extend_from_slice(reason.as_bytes());
            // Then read on until the sender closes: closing with unread bytes would reset the
            // connection, and the sender could lose the reason.
            let _ = tokio::time::timeout(IO_TIMEOUT, async {
                wr.write_all(&frame).await?;
                wr.shutdown().await?;
                tokio::io::copy(&mut rd, &mut tokio::io::sink()).await
            })
            .await;
        }
    }

    /// Reads and delivers frames until the sender closes the stream (`Ok`) or it fails.
    async fn read_frames(
        &self,
        rd: &mut (impl AsyncRead + Unpin),
    ) -> std::result::Result<(), String> {
        let mut magic = [0; RAFT_MAGIC.len()];
        rd.read_exact(&mut magic).await.map_err(|e| e.to_string())?;
        if &magic != RAFT_MAGIC {
            return Err("not a raft stream".to_owned());
        }
        let mut buf = Vec::new();
        loop {
            let len = match tokio::time::timeout(IO_TIMEOUT, rd.read_u32()).await {
                Ok(Ok(len)) => len as usize,
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Ok(Err(e)) => return Err(e.to_string()),
                Err(_) => return Err(format!("nothing received for {IO_TIMEOUT:?}")),
            };
            if len == 0 {
                continue;
            }
            if len > MAX_RECV_BYTES {
                return Err(format!(
                    "an envelope of {len} bytes is larger than the limit of {MAX_RECV_BYTES}"
                ));
            }
            buf.resize(len, 0);
            rd.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
            let env = RaftEnvelope::decode(buf.as_slice())
                .map_err(|e| format!("undecodable raft envelope: {e}"))?;
            self.deliver(env).map_err(|s| s.message().to_owned())?;
        }
    }
}

/// An accepted peer connection that is either a raft stream or gRPC.
trait PeerConn: PeerIo + 'static {
    /// Whether the connection is a raft stream.
    fn is_raft(&self) -> impl std::future::Future<Output = bool> + Send;
}

impl PeerConn for tokio::net::TcpStream {
    /// Peeks (without consuming) until the first bytes match [`RAFT_MAGIC`] or cannot.
    async fn is_raft(&self) -> bool {
        let mut head = [0; RAFT_MAGIC.len()];
        let peeked = tokio::time::timeout(IO_TIMEOUT, async {
            loop {
                let n = self.peek(&mut head).await?;
                if n == 0 || head[..n] != RAFT_MAGIC[..n] {
                    return Ok::<_, std::io::Error>(false);
                }
                if n == head.len() {
                    return Ok(true);
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
        matches!(peeked, Ok(Ok(true)))
    }
}

impl PeerConn for crate::tls::PeerTlsStream {
    async fn is_raft(&self) -> bool {
        crate::tls::PeerTlsStream::is_raft(self)
    }
}

/// Hands each connection of `incoming` to a raft stream task or (in order of classification)
/// to `grpc`, until `grpc`'s receiver is gone.
async fn route<C: PeerConn>(
    incoming: impl futures::Stream<Item = std::io::Result<C>> + Send,
    grpc: mpsc::Sender<std::io::Result<C>>,
    inbox: RaftInbox,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    use futures::StreamExt;
    tokio::pin!(incoming);
    loop {
        let next = tokio::select! {
            c = incoming.next() => c,
            _ = grpc.closed() => return,
        };
        match next {
            None => return,
            Some(Err(e)) => {
                if grpc.send(Err(e)).await.is_err() {
                    return;
                }
            }
            Some(Ok(conn)) => {
                let (grpc, inbox, stop) = (grpc.clone(), inbox.clone(), stop.clone());
                tokio::spawn(async move {
                    if conn.is_raft().await {
                        inbox.receive(conn, stop).await;
                    } else {
                        let _ = grpc.send(Ok(conn)).await;
                    }
                });
            }
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    /// Raft messages over gRPC. This member's transport sends them on raft streams instead (see
    /// [`serve_peers`]); the call stays for members of earlier versions.
    async fn stream(
        &self,
        req: Request<Streaming<RaftEnvelope>>,
    ) -> std::result::Result<Response<StreamAck>, Status> {
        let mut stream = req.into_inner();
        while let Some(env) = stream.message().await? {
            self.inbox.deliver(env)?;
        }
        Ok(Response::new(StreamAck {}))
    }

    async fn snapshot(
        &self,
        req: Request<Streaming<SnapshotChunk>>,
    ) -> std::result::Result<Response<SnapshotAck>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("empty snapshot stream"))?;
        let env = first
            .header
            .as_ref()
            .ok_or_else(|| Status::invalid_argument("the first snapshot chunk has no header"))?;
        self.inbox.check(env)?;
        let m = match env.messages.as_slice() {
            [b] => Message::parse_from_bytes(b)
                .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))?,
            _ => {
                return Err(Status::invalid_argument(
                    "a snapshot header carries exactly one raft message",
                ));
            }
        };
        if m.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument(
                "the snapshot header is not a MsgSnapshot",
            ));
        }
        let index = m.get_snapshot().get_metadata().index;
        let path = received_snapshot_path(&self.inbox.backend, index);
        let tmp = path.with_extension("tmp");
        let started = Instant::now();
        tracing::info!(
            remote_peer_id = format!("{:x}", env.from),
            snapshot_index = index,
            bytes = first.total_bytes,
            "receiving database snapshot"
        );
        let total = first.total_bytes;
        let received = async {
            use tokio::io::AsyncWriteExt;
            let mut f = tokio::fs::File::create(&tmp).await?;
            let mut got = first.data.len() as u64;
            f.write_all(&first.data).await?;
            while let Some(chunk) = stream.message().await.map_err(std::io::Error::other)? {
                got += chunk.data.len() as u64;
                f.write_all(&chunk.data).await?;
            }
            if got != total {
                return Err(std::io::Error::other(format!(
                    "the stream ended after {got} of {total} bytes"
                )));
            }
            f.sync_all().await?;
            tokio::fs::rename(&tmp, &path).await
        }
        .await;
        if let Err(e) = received {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(Status::unavailable(format!(
                "cannot receive the snapshot: {e}"
            )));
        }
        tracing::info!(
            remote_peer_id = format!("{:x}", env.from),
            snapshot_index = index,
            bytes = total,
            took = ?started.elapsed(),
            "received and saved database snapshot"
        );
        if self.inbox.raft.send(Msg::Step(m)).is_err() {
            return Err(Error::Stopped.into());
        }
        Ok(Response::new(SnapshotAck {}))
    }

    async fn members(
        &self,
        _: Request<MembersRequest>,
    ) -> std::result::Result<Response<MembersResponse>, Status> {
        Ok(Response::new(MembersResponse {
            cluster_id: self.inbox.cluster,
            members: crate::membership::list(&self.inbox.backend)?,
        }))
    }

    async fn lease_renew(
        &self,
        req: Request<LeaseKeepAliveRequest>,
    ) -> std::result::Result<Response<LeaseKeepAliveResponse>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(self.leader.renew_as_leader(id).await?))
    }

    async fn lease_time_to_live(
        &self,
        req: Request<LeaseTimeToLiveRequest>,
    ) -> std::result::Result<Response<LeaseTimeToLiveResponse>, Status> {
        let req = req.into_inner();
        Ok(Response::new(
            self.leader.time_to_live_as_leader(req).await?,
        ))
    }

    async fn member_promote(
        &self,
        req: Request<MemberPromoteRequest>,
    ) -> std::result::Result<Response<MemberPromoteResponse>, Status> {
        let id = req.into_inner().id;
        Ok(Response::new(self.leader.promote_as_leader(id).await?))
    }
}

/// Asks the members at `peer_urls` (in turn, until one answers) for the cluster id and members.
pub async fn fetch_members(peer_urls: &[String], tls: Option<&Tls>) -> Result<(u64, Vec<Member>)> {
    let mut errors = Vec::new();
    for url in peer_urls {
        let endpoint = match Endpoint::from_shared(crate::tls::endpoint_url(url)) {
            Ok(e) => e
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5)),
            Err(e) => {
                errors.push(format!("{url}: {e}"));
                continue;
            }
        };
        let channel = match connect_endpoint(&endpoint, url, tls).await {
            Ok(c) => c,
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        match PeerClient::new(channel).members(MembersRequest {}).await {
            Ok(r) => {
                let r = r.into_inner();
                return Ok((r.cluster_id, r.members));
            }
            Err(s) => errors.push(format!("{url}: {}", s.message())),
        }
    }
    Err(Error::DataDir(format!(
        "cannot fetch the cluster's members from any peer in --initial-cluster ({}); a member \
         joining with --initial-cluster-state=existing needs a running member to ask",
        errors.join("; ")
    )))
}

/// Serves the peer service on `listener` (over `tls` for an `https` peer URL) until `shutdown`
/// resolves: raft streams (told apart by `RAFT_MAGIC`, or on TLS by
/// [`crate::tls::RAFT_ALPN`]) on tasks of their own, everything else as gRPC.
pub async fn serve_peers(
    listener: TcpListener,
    service: PeerService,
    tls: Option<Tls>,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<()> {
    let addr = listener.local_addr().ok();
    let inbox = service.inbox.clone();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let shutdown = async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    };
    let router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .add_service(
            PeerServer::new(service)
                .max_decoding_message_size(MAX_RECV_BYTES)
                .max_encoding_message_size(usize::MAX),
        );
    let served = match tls {
        Some(tls) => {
            let incoming = crate::tls::peer_incoming(listener, tls);
            serve_routed(router, incoming, inbox, stop, shutdown).await
        }
        None => {
            let incoming = TcpListenerStream::new(listener);
            serve_routed(router, incoming, inbox, stop, shutdown).await
        }
    };
    served.map_err(|e| Error::Raft(format!("peer listener {addr:?} failed: {e}")))
}

/// Serves `router` on the connections of `incoming` that [`route`] does not keep as raft
/// streams, until `shutdown` resolves.
async fn serve_routed<C>(
    router: tonic::transport::server::Router,
    incoming: impl futures::Stream<Item = std::io::Result<C>> + Send + 'static,
    inbox: RaftInbox,
    stop: tokio::sync::watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) -> std::result::Result<(), tonic::transport::Error>
where
    C: PeerConn + tonic::transport::server::Connected,
    C::ConnectInfo: Clone + Send + Sync + 'static,
{
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(route(incoming, tx, inbox, stop));
    router
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member that never leads: forwarded requests are refused.
    struct NeverLeads;

    #[tonic::async_trait]
    impl LeaderCalls for NeverLeads {
        async fn renew_as_leader(&self, _: i64) -> Result<LeaseKeepAliveResponse> {
            Err(Error::NotLeader)
        }
        async fn time_to_live_as_leader(
            &self,
            _: LeaseTimeToLiveRequest,
        ) -> Result<LeaseTimeToLiveResponse> {
            Err(Error::NotLeader)
        }
        async fn promote_as_leader(&self, _: u64) -> Result<MemberPromoteResponse> {
            Err(Error::NotLeader)
        }
    }

    /// The indexes of the next `n` messages stepped into `rx` (`None`: none came in time).
    async fn stepped(
        rx: std::sync::mpsc::Receiver<Msg>,
        n: usize,
    ) -> (Vec<Option<u64>>, std::sync::mpsc::Receiver<Msg>) {
        tokio::task::spawn_blocking(move || {
            let got = (0..n)
                .map(|_| match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(Msg::Step(m)) => Some(m.index),
                    _ => None,
                })
                .collect();
            (got, rx)
        })
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raft_streams_and_grpc_share_the_peer_listener() {
        let dir = tempfile::tempdir().unwrap();
        let backend = Arc::new(Backend::open(dir.path()).unwrap());
        let (raft_tx, raft_rx) = std::sync::mpsc::channel();
        let service = PeerService::new(1, 7, raft_tx, backend, Arc::new(NeverLeads));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_peers(listener, service, None, async {
            let _ = stopped.await;
        }));

        // Member 2's transport: messages arrive in order, over a raft stream.
        let transport = Transport::new(2, 7, None, tokio::runtime::Handle::current());
        transport.add_peer(1, vec![url.clone()]);
        let message = |index| Message {
            from: 2,
            to: 1,
            index,
            ..Default::default()
        };
        transport.send((1..=3).map(message).collect());
        let (got, raft_rx) = stepped(raft_rx, 3).await;
        assert_eq!(got, vec![Some(1), Some(2), Some(3)]);
        assert!(transport.active_since(1).is_some());
        // With the stream up and idle, the sender writes to its socket itself.
        transport.send(vec![message(10), message(11)]);
        let (got, raft_rx) = stepped(raft_rx, 2).await;
        assert_eq!(got, vec![Some(10), Some(11)]);

        // gRPC on the same listener.
        let members = PeerClient::connect(url.clone())
            .await
            .unwrap()
            .members(MembersRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(members.cluster_id, 7);

        // Raft messages over gRPC, as members of earlier versions send them.
        let env = RaftEnvelope {
            cluster_id: 7,
            from: 2,
            to: 1,
            messages: vec![message(4).write_to_bytes().unwrap()],
        };
        PeerClient::connect(url.clone())
            .await
            .unwrap()
            .stream(tokio_stream::iter(vec![env]))
            .await
            .unwrap();
        let (got, raft_rx) = stepped(raft_rx, 1).await;
        assert_eq!(got, vec![Some(4)]);

        // An envelope from another cluster is refused with the reason; nothing is delivered.
        let RaftConn::Plain(mut conn) = connect_raft(&url, None).await.unwrap() else {
            panic!("an http URL gave a TLS stream");
        };
        let mut frame = Vec::new();
        RaftEnvelope {
            cluster_id: 8,
            from: 2,
            to: 1,
            messages: vec![message(5).write_to_bytes().unwrap()],
        }
        .encode_frame(&mut frame);
        conn.write_all(&frame).await.unwrap();
        let reason = read_refusal(&mut conn).await;
        assert!(reason.contains("cluster ID mismatch"), "{reason}");
        assert!(raft_rx.try_recv().is_err());

        // A connection that is neither gRPC nor a raft stream is closed.
        let mut junk = tokio::net::TcpStream::connect(listener_addr(&url))
            .await
            .unwrap();
        junk.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(10), junk.read_to_end(&mut rest)).await;
        assert!(read.is_ok(), "the listener kept a junk connection open");

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    fn listener_addr(url: &str) -> String {
        url.trim_start_matches("http://").to_owned()
    }
}
