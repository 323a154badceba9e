//! The raft driver: one thread owns the `RawNode`, and every write reaches the state machine
//! through it, even on a one-member cluster.
//!
//! Callers talk to the loop through [`RaftHandle`]: proposals and ReadIndex requests go in as
//! [`Msg`]s, answers come back on per-request oneshots, and progress (applied index, term,
//! leader) is published on `watch` channels. One `on_ready` follows raft-rs's documented order:
//! messages, snapshot, committed entries, append, hard state, persisted messages, advance,
//! light ready, advance_apply. Messages for other members go to the peer transport
//! (`transport`) at the three points raft-rs documents: the Ready's messages before persisting,
//! its persisted messages after the durable commit, and the light ready's messages.
//!
//! With peers: a follower's proposal is forwarded to the leader by raft-rs and tracked here by
//! its proposal id, so the proposing member answers its client when the entry is applied
//! locally (or the server's request timeout fires if the entry was lost with a leader). A
//! request arriving while no leader is known waits up to [`RaftConfig::leader_wait`] for one,
//! then fails with `etcdserver: no leader`. ReadIndex contexts carry the member id (the leader
//! keys pending reads by context) and are re-sent every [`READ_INDEX_RETRY`] until answered,
//! since a new leader drops reads until it commits an entry of its term.
//!
//! Snapshots: the log is compacted every `--snapshot-count` applied entries, keeping
//! `--experimental-snapshot-catchup-entries`. A member that needs an entry before that gets a
//! snapshot: [`LogStore`] stages the applied state with the transport, which streams it; the
//! member's peer service saves it and steps the MsgSnapshot, and `on_ready` installs it with
//! the Ready's entries and hard state.
//!
//! Durability: the entries of a Ready and its hard state go into ONE append to the log (`wal`),
//! synced when raft needs it (one fsync per batch, shared by all proposals that arrived
//! meanwhile: group commit). The committed entries it carries and those that persisting
//! it commits (the light ready's) are applied to the state (`store.redb`) in a transaction that
//! stays open across Readies while they only change the key space: readers see those versions
//! through the backend's overlay (`overlay`, published after the log append). It is committed,
//! and synced, every `--backend-batch-interval` or `--backend-batch-limit` (etcd's backend
//! batching), and at once (not synced) when an entry changed anything read from the committed
//! tables alone (leases, auth, alarms, members, compaction) or a maintenance task asks
//! ([`Msg::Commit`]). The applied index and its term travel with the effects, so a restart
//! replays the log from whatever the state last made durable, and the log is never compacted
//! past that. Nothing that depends on an apply is answered or sent before the log append and
//! the commit or overlay publication are done. A snapshot's state is made durable before the
//! log forgets what it replaced; a restart that finds the log behind the state (a crash
//! between the two) restarts the log at the state.
//!
//! This module must never interpret requests; `apply` (key-value, leases) and `membership`
//! (members) do; the loop only routes each entry to one of them.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use ::raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, HardState, Message,
    Snapshot, SnapshotMetadata,
};
use ::raft::{
    GetEntriesContext, RaftState, RawNode, SnapshotStatus, StateRole, Storage, storage::MemStorage,
};
use protobuf::Message as PbMessage;
use redb::{Durability, ReadableDatabase, WriteTransaction};
use tokio::sync::{oneshot, watch};

use crate::apply::{Applied, apply_entry};
use crate::backend::{
    Backend, META, META_APPLIED_INDEX, META_APPLIED_TERM, RAFT_CONF_STATE, RAFT_STATE,
};
use crate::error::{Error, Result};
use crate::lease::{LeaseChange, Lessor};
use crate::membership;
use crate::mvcc::{Revs, WriteTables};
use crate::proto::mvccpb::Event;
use crate::transport::{StagedSnapshot, Transport, received_snapshot_path};
use crate::wal::{Recovered, Wal};
use crate::watch::WatchHub;

/// Entries kept in the log after a compaction when `--experimental-snapshot-catchup-entries`
/// is 0 (etcd's `DefaultSnapshotCatchUpEntries`).
pub const DEFAULT_CATCH_UP_ENTRIES: u64 = 5000;
/// The state is made durable at least this often while it changes (etcd's default
/// `--backend-batch-interval`; [`RaftConfig::state_sync_interval`]).
pub const DEFAULT_STATE_SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// ... or after this many applied entries (etcd's default `--backend-batch-limit`;
/// [`RaftConfig::state_sync_entries`]).
pub const DEFAULT_STATE_SYNC_ENTRIES: u64 = 10_000;
/// The state transaction commits (not durably) once this many Readies' versions wait for it
/// in the overlay, which readers search chunk by chunk.
const MAX_OVERLAY_CHUNKS: usize = 256;
/// A ReadIndex request not answered after this long is sent again (etcd: 500 ms).
pub const READ_INDEX_RETRY: Duration = Duration::from_millis(500);

/// Settings of the raft loop.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This member's raft id.
    pub id: u64,
    /// Voters of a brand-new cluster (ignored once the data dir has raft state).
    pub initial_voters: Vec<u64>,
    /// One raft tick (etcd's `--heartbeat-interval`).
    pub heartbeat: Duration,
    /// Election timeout (etcd's `--election-timeout`), a multiple of `heartbeat`.
    pub election_timeout: Duration,
    /// Applied entries between log compactions (etcd's `--snapshot-count`).
    pub snapshot_count: u64,
    /// Entries kept in the log after a compaction, so slow followers can catch up from the log
    /// rather than by snapshot (etcd's `--experimental-snapshot-catchup-entries`).
    pub catch_up_entries: u64,
    /// The applied state is made durable at least this often while it changes
    /// (`--backend-batch-interval`) ...
    pub state_sync_interval: Duration,
    /// ... or once this many entries were applied since it last was (`--backend-batch-limit`).
    pub state_sync_entries: u64,
}

impl RaftConfig {
    /// How long a request waits for a leader before `etcdserver: no leader`: long enough for
    /// one election after a leader loss.
    pub fn leader_wait(&self) -> Duration {
        2 * self.election_timeout
    }
}

/// A request to the raft loop.
pub enum Msg {
    /// Propose an encoded `InternalRequest` whose id is `id`; the reply comes once applied.
    Propose {
        id: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Applied>>,
    },
    /// Propose an encoded membership request (`InternalRequest` with a membership variant);
    /// the reply comes once applied.
    ProposeMember {
        id: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Propose a membership change (its context is the member, for `membership`); the reply
    /// comes once applied. The entry's context carries the proposal id.
    ProposeConfChange {
        id: u64,
        cc: ConfChange,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Ask for a ReadIndex; the reply is the index to wait for before reading.
    ReadIndex { reply: oneshot::Sender<Result<u64>> },
    /// A raft message from another member (from the peer transport).
    Step(Message),
    /// On the leader: hand leadership to voting member `to` (raft-rs's `transfer_leader`; it
    /// ignores a transfer to itself or to a learner). Callers watch the status for the result.
    TransferLeader { to: u64 },
    /// On the leader: how far each member's log matches the leader's (member id -> index).
    /// `None` on any other member.
    Progress {
        reply: oneshot::Sender<Option<HashMap<u64, u64>>>,
    },
    /// Commit the applied state now (not durably), so that readers of the committed tables
    /// alone (snapshots, hashes, defragmentation) see every applied entry.
    Commit { reply: oneshot::Sender<Result<()>> },
}

/// What a proposal puts in the log.
enum Payload {
    Normal(Vec<u8>),
    ConfChange(ConfChange),
}

/// Who waits for a proposal of this member.
enum Waiter {
    Kv(oneshot::Sender<Result<Applied>>),
    Member(oneshot::Sender<Result<()>>),
}

/// What applying an entry produced, for its waiter.
enum Outcome {
    Kv(Result<Applied>),
    Member(Result<()>),
}

impl Waiter {
    fn answer(self, out: Outcome) {
        match (self, out) {
            (Waiter::Kv(tx), Outcome::Kv(r)) => {
                let _ = tx.send(r);
            }
            (Waiter::Member(tx), Outcome::Member(r)) => {
                let _ = tx.send(r);
            }
            (w, _) => w.fail(Error::Raft(
                "applied entry does not match the proposal waiting for it".into(),
            )),
        }
    }

    fn fail(self, e: Error) {
        match self {
            Waiter::Kv(tx) => {
                let _ = tx.send(Err(e));
            }
            Waiter::Member(tx) => {
                let _ = tx.send(Err(e));
            }
        }
    }

    fn is_closed(&self) -> bool {
        match self {
            Waiter::Kv(tx) => tx.is_closed(),
            Waiter::Member(tx) => tx.is_closed(),
        }
    }
}

/// A request held back until a leader is known.
enum Held {
    Propose {
        id: u64,
        payload: Payload,
        waiter: Waiter,
    },
    Read(oneshot::Sender<Result<u64>>),
}

/// ReadIndex requests sent to raft under one context.
struct ReadBatch {
    sent: Instant,
    waiters: Vec<oneshot::Sender<Result<u64>>>,
}

/// The raft log in memory (rebuilt from redb at start), and the source of the snapshots raft
/// sends to members behind the compacted log: [`Storage::snapshot`] begins a read transaction
/// of the applied state, whose applied index, term and conf state make the snapshot's metadata,
/// and stages it with the transport, which streams it with the MsgSnapshot.
pub struct LogStore {
    mem: MemStorage,
    backend: Arc<Backend>,
    transport: Arc<Transport>,
}

impl std::ops::Deref for LogStore {
    type Target = MemStorage;
    fn deref(&self) -> &MemStorage {
        &self.mem
    }
}

impl LogStore {
    /// The metadata of a snapshot of the applied state as `rtx` sees it.
    fn snapshot_of(&self, rtx: &redb::ReadTransaction) -> Result<Snapshot> {
        let index = rtx
            .open_table(META)?
            .get(META_APPLIED_INDEX)?
            .map_or(0, |v| v.value());
        let cs: ConfState = match rtx.open_table(RAFT_STATE)?.get(RAFT_CONF_STATE)? {
            Some(v) => decode(v.value())?,
            None => return Err(Error::Storage("no conf state in the data dir".into())),
        };
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = self.mem.term(index)?;
        meta.set_conf_state(cs);
        Ok(snap)
    }
}

impl Storage for LogStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let unavailable = raft::Error::Store(raft::StorageError::SnapshotTemporarilyUnavailable);
        let staged = self
            .backend
            .db()
            .begin_read()
            .map_err(Error::from)
            .and_then(|rtx| {
                let snap = self.snapshot_of(&rtx)?;
                Ok((snap, rtx))
            });
        match staged {
            Ok((snap, rtx)) if snap.get_metadata().index >= request_index.max(1) => {
                tracing::info!(
                    remote_peer_id = format!("{to:x}"),
                    snapshot_index = snap.get_metadata().index,
                    "member is behind the compacted raft log; sending it a snapshot"
                );
                self.transport.stage_snapshot(
                    to,
                    StagedSnapshot {
                        rtx,
                        backend: self.backend.clone(),
                    },
                );
                Ok(snap)
            }
            Ok(_) => Err(unavailable),
            Err(e) => {
                tracing::warn!(
                    remote_peer_id = format!("{to:x}"),
                    error = %e,
                    "cannot take a snapshot for a member behind the compacted raft log"
                );
                Err(unavailable)
            }
        }
    }
}

/// What the loop publishes after every Ready.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RaftStatus {
    pub term: u64,
    pub leader: u64,
    pub commit: u64,
    pub applied: u64,
    pub last_index: u64,
    pub is_leader: bool,
    /// Whether this member is a learner in the applied configuration.
    pub is_learner: bool,
    /// This member's removal was applied; the loop has stopped or is stopping.
    pub removed: bool,
    /// This member is the leader and the only voter, and has committed an entry of its term:
    /// what raft would answer a ReadIndex with right now is `commit`, so a linearizable read
    /// need not ask it (see [`RaftHandle::read_index`]).
    pub sole_voter_leader: bool,
}

/// The way into a running raft loop. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Msg>,
    status: watch::Receiver<RaftStatus>,
    applied: watch::Receiver<u64>,
}

impl RaftHandle {
    /// Sends a request to the loop.
    pub fn send(&self, msg: Msg) -> Result<()> {
        self.tx.send(msg).map_err(|_| Error::Stopped)
    }

    /// The latest published status.
    pub fn status(&self) -> RaftStatus {
        *self.status.borrow()
    }

    /// A receiver of the loop's status, woken when its term, leader or roles change (not when
    /// only the indexes move: those change with every write, see [`RaftHandle::wait_applied`]).
    pub fn subscribe(&self) -> watch::Receiver<RaftStatus> {
        self.status.clone()
    }

    /// The index a linearizable read waits for before it reads: the commit index when this
    /// member is the leader and the only voter (raft-rs answers a lone leader's ReadIndex with
    /// it, without a round trip; no other member can commit anything this one has not, since
    /// adding a voter is itself applied here, and published, before any vote could go to it),
    /// else raft's ReadIndex answer.
    pub async fn read_index(&self) -> Result<u64> {
        let status = self.status();
        if status.sole_voter_leader {
            return Ok(status.commit);
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Msg::ReadIndex { reply: tx })?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// Commits what the loop applied, so the committed tables alone hold it (see
    /// [`Msg::Commit`]).
    pub async fn commit(&self) -> Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.send(Msg::Commit { reply: tx })?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// A sender into the loop, for the peer transport's incoming messages.
    pub fn sender(&self) -> Sender<Msg> {
        self.tx.clone()
    }

    /// Resolves when the raft loop has stopped (it only stops on a storage or raft failure, or
    /// when every handle is gone).
    pub async fn stopped(&self) {
        let mut rx = self.status.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Waits until this member sees `id` as the leader.
    pub async fn wait_leader(&self, id: u64) -> Result<()> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| s.leader == id)
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(())
    }

    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut rx = self.applied.clone();
        rx.wait_for(|a| *a >= index)
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(())
    }
}

/// Loads (or bootstraps) raft state from the backend and starts the loop on its own thread.
pub fn start(
    backend: Arc<Backend>,
    hub: Arc<WatchHub>,
    lessor: Arc<Lessor>,
    cfg: RaftConfig,
    transport: Arc<Transport>,
) -> Result<RaftHandle> {
    let (storage, applied, wal) = load_storage(&backend, &cfg)?;
    remove_received_snapshots(&backend, u64::MAX);
    let storage = LogStore {
        mem: storage,
        backend: backend.clone(),
        transport: transport.clone(),
    };
    let ticks =
        (cfg.election_timeout.as_millis() / cfg.heartbeat.as_millis().max(1)).max(2) as usize;
    let raft_cfg = raft::Config {
        id: cfg.id,
        election_tick: ticks,
        heartbeat_tick: 1,
        applied,
        pre_vote: true,
        check_quorum: true,
        max_size_per_msg: 1 << 20,
        max_inflight_msgs: 256,
        ..Default::default()
    };
    raft_cfg.validate()?;
    let logger = slog::Logger::root(TracingDrain, slog::o!("raft_id" => cfg.id));
    let mut node = RawNode::new(&raft_cfg, storage, &logger)?;
    let voters = node
        .raft
        .prs()
        .conf()
        .voters()
        .ids()
        .iter()
        .collect::<Vec<_>>();
    if voters == [cfg.id] {
        // A lone voter need not wait an election timeout to lead.
        node.campaign()?;
    }
    let (tx, rx) = channel();
    let (status_tx, status_rx) = watch::channel(RaftStatus {
        applied,
        ..Default::default()
    });
    let (applied_tx, applied_rx) = watch::channel(applied);
    let backend_revs = backend.overlay().view().revs;
    let mut driver = Driver {
        node,
        backend,
        hub,
        lessor,
        rx,
        status: status_tx,
        applied_tx,
        cfg,
        transport,
        proposals: HashMap::new(),
        held: VecDeque::new(),
        read_waiters: Vec::new(),
        reads_in_flight: HashMap::new(),
        next_read_ctx: 1,
        applied,
        last_sweep: Instant::now(),
        removed: false,
        batch: None,
        revs: backend_revs,
        durable_applied: applied,
        last_state_sync: Instant::now(),
        wal,
    };
    std::thread::Builder::new()
        .name("raft".into())
        .spawn(move || {
            if let Err(e) = driver.run() {
                tracing::error!(error = %e, "raft loop stopped; the member can no longer serve writes. Restart it; if this repeats, check the data dir's disk");
            }
        })
        .map_err(|e| Error::Raft(format!("cannot start raft thread: {e}")))?;
    Ok(RaftHandle {
        tx,
        status: status_rx,
        applied: applied_rx,
    })
}

fn decode<M: PbMessage>(bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| Error::Storage(format!("corrupt raft state: {e}")))
}

fn encode<M: PbMessage>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| Error::Storage(format!("cannot encode raft state: {e}")))
}

/// Rebuilds the in-memory raft log from the write-ahead log and the applied conf state from
/// `store.redb`; on a fresh data dir writes the bootstrap state. Returns it with the applied
/// index and the open log.
fn load_storage(backend: &Backend, cfg: &RaftConfig) -> Result<(MemStorage, u64, Wal)> {
    let (applied, applied_term, cs) = {
        let rtx = backend.db().begin_read()?;
        let meta = rtx.open_table(META)?;
        let get = |k: &str| -> Result<u64> { Ok(meta.get(k)?.map_or(0, |v| v.value())) };
        let cs = rtx
            .open_table(RAFT_STATE)?
            .get(RAFT_CONF_STATE)?
            .map(|v| v.value().to_vec());
        (get(META_APPLIED_INDEX)?, get(META_APPLIED_TERM)?, cs)
    };
    let (mut wal, recovered) = Wal::open(&backend.wal_dir())?;
    let Some(cs) = cs else {
        return bootstrap(backend, cfg, wal);
    };
    let cs: ConfState = decode(&cs)?;
    let Recovered {
        mut point,
        mut entries,
        hard_state: mut hs,
    } = recovered;
    let term_at = |i: u64| {
        if i == point.index {
            Some(point.term)
        } else {
            entries.iter().find(|e| e.index == i).map(|e| e.term)
        }
    };
    if term_at(applied) != Some(applied_term) {
        // The state is ahead of (or off) the log: a snapshot's install reached the state
        // (made durable first) but not the log before a crash. The log restarts at the state.
        tracing::warn!(
            applied,
            applied_term,
            "the raft log does not hold the applied state's last entry (a snapshot install was \
             interrupted); restarting the log at the applied state"
        );
        point = SnapshotMetadata {
            index: applied,
            term: applied_term,
            ..Default::default()
        };
        entries.clear();
        hs.term = hs.term.max(applied_term);
        wal.reset(&point)?;
    }
    let storage = MemStorage::new();
    if point.index > 0 {
        let mut snap = Snapshot::default();
        snap.set_metadata(point);
        snap.mut_metadata().set_conf_state(cs.clone());
        storage.wl().apply_snapshot(snap)?;
    }
    let mut core = storage.wl();
    core.append(&entries)?;
    // The applied index can run ahead of the last persisted commit (see module docs).
    hs.commit = hs.commit.max(applied);
    core.set_hardstate(hs);
    core.set_conf_state(cs);
    drop(core);
    tracing::info!(
        applied,
        entries = entries.len(),
        "loaded raft log from data dir"
    );
    Ok((storage, applied, wal))
}

/// A new cluster starts, as etcd's does, with one committed ConfChange(AddNode) entry per
/// initial voter (term 1, the member in its context), so a member that joins later learns the
/// initial configuration and members from the log. Here they are applied already: the conf
/// state and the members table (written by `embed`) say the same. The log is written first,
/// the state second: until the state's conf state exists, a restart bootstraps again.
fn bootstrap(backend: &Backend, cfg: &RaftConfig, mut wal: Wal) -> Result<(MemStorage, u64, Wal)> {
    let members = membership::list(backend)?;
    let entries = cfg
        .initial_voters
        .iter()
        .enumerate()
        .map(|(i, &id)| {
            let member = members.iter().find(|m| m.id == id);
            let cc = ConfChange {
                change_type: ConfChangeType::AddNode,
                node_id: id,
                context: member
                    .map(|m| prost::Message::encode_to_vec(m).into())
                    .unwrap_or_default(),
                ..Default::default()
            };
            Ok(Entry {
                entry_type: EntryType::EntryConfChange,
                term: 1,
                index: i as u64 + 1,
                data: encode(&cc)?.into(),
                ..Default::default()
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let last = entries.len() as u64;
    let cs = ConfState::from((cfg.initial_voters.clone(), vec![]));
    let storage = MemStorage::new_with_conf_state(cs.clone());
    // Term 1 as etcd's, so the first leader's term is 2.
    let hs = HardState {
        term: 1,
        commit: last,
        ..Default::default()
    };
    storage.wl().append(&entries)?;
    storage.wl().set_hardstate(hs.clone());
    wal.append(&entries, Some(&hs), true)?;
    let wtx = backend.db().begin_write()?;
    {
        wtx.open_table(RAFT_STATE)?
            .insert(RAFT_CONF_STATE, encode(&cs)?.as_slice())?;
        let mut meta = wtx.open_table(META)?;
        meta.insert(META_APPLIED_INDEX, last)?;
        meta.insert(META_APPLIED_TERM, if last > 0 { 1 } else { 0 })?;
    }
    wtx.commit()?;
    Ok((storage, last, wal))
}

struct Driver {
    node: RawNode<LogStore>,
    backend: Arc<Backend>,
    /// Receives the events of every committed apply transaction.
    hub: Arc<WatchHub>,
    /// Receives the lease grants and revokes of every committed apply transaction.
    lessor: Arc<Lessor>,
    rx: Receiver<Msg>,
    status: watch::Sender<RaftStatus>,
    /// The applied index, for [`RaftHandle::wait_applied`].
    applied_tx: watch::Sender<u64>,
    cfg: RaftConfig,
    /// Where messages for other members go.
    transport: Arc<Transport>,
    /// Proposals of this member waiting to be applied, by proposal id.
    proposals: HashMap<u64, Waiter>,
    /// Requests that arrived while no leader was known, oldest first, with their arrival time.
    held: VecDeque<(Instant, Held)>,
    /// ReadIndex requests not yet sent to raft; they share the next read context.
    read_waiters: Vec<oneshot::Sender<Result<u64>>>,
    /// ReadIndex contexts sent to raft, with the requests waiting on each.
    reads_in_flight: HashMap<u64, ReadBatch>,
    next_read_ctx: u64,
    applied: u64,
    /// When abandoned proposals and reads were last swept.
    last_sweep: Instant,
    /// This member's removal was applied: the loop stops after the current Ready.
    removed: bool,
    /// The state transaction entries are applied into, kept open across Readies while they
    /// change the key space only (readers see those through the backend's overlay), and
    /// committed every `state_sync_interval` or when an entry changed anything else.
    batch: Option<WriteTransaction>,
    /// Store revisions as of the last applied entry (published with the overlay).
    revs: Revs,
    /// The applied index as of the last durable state commit.
    durable_applied: u64,
    /// When the state was last committed durably.
    last_state_sync: Instant,
    /// The raft log and hard state on disk.
    wal: Wal,
}

impl Driver {
    fn run(&mut self) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.heartbeat;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    self.handle(m);
                    // When this thread shares a CPU with the gRPC workers, the message's wakeup
                    // preempts the worker that sent it, with the rest of what it read still
                    // undecoded. Yielding once lets it queue those too, so that one Ready (and
                    // one fsync) carries them all: with 256 clients putting on one CPU, 1,300
                    // wakeups per 100,000 puts instead of 42,000, and 50% more puts a second.
                    // On a CPU of its own the yield returns at once.
                    std::thread::yield_now();
                    // Batch whatever else is queued into the same Ready.
                    for _ in 0..4096 {
                        match self.rx.try_recv() {
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    // Stopping: what was applied becomes durable now rather than on replay.
                    if let Some(wtx) = self.batch.take() {
                        self.commit_state(wtx, true)?;
                    }
                    return Ok(());
                }
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.cfg.heartbeat;
                if next_tick < Instant::now() {
                    // Fell far behind (a long fsync): do not replay missed ticks in a burst.
                    next_tick = Instant::now() + self.cfg.heartbeat;
                }
                self.on_tick();
                self.sync_state()?;
            }
            for id in self.transport.take_unreachable() {
                self.node.report_unreachable(id);
            }
            for (id, delivered) in self.transport.take_snapshot_reports() {
                let status = if delivered {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.node.report_snapshot(id, status);
            }
            if self.transport.removed_by_peer() {
                self.removed = true;
                self.publish();
                tracing::warn!(
                    local_member_id = format!("{:x}", self.cfg.id),
                    "the member has been permanently removed from the cluster (a peer refused \
                     it); the data-dir used by this member must be removed before it joins again"
                );
                return Err(Error::Removed);
            }
            self.release_held();
            if !self.read_waiters.is_empty() {
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                self.node.read_index(self.read_ctx(ctx));
                let batch = ReadBatch {
                    sent: Instant::now(),
                    waiters: std::mem::take(&mut self.read_waiters),
                };
                self.reads_in_flight.insert(ctx, batch);
            }
            if self.node.has_ready() {
                self.on_ready()?;
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Propose { id, data, reply } => {
                self.propose(Instant::now(), id, Payload::Normal(data), Waiter::Kv(reply));
            }
            Msg::ProposeMember { id, data, reply } => {
                self.propose(
                    Instant::now(),
                    id,
                    Payload::Normal(data),
                    Waiter::Member(reply),
                );
            }
            Msg::ProposeConfChange { id, cc, reply } => {
                self.propose(
                    Instant::now(),
                    id,
                    Payload::ConfChange(cc),
                    Waiter::Member(reply),
                );
            }
            Msg::TransferLeader { to } => {
                if self.node.raft.state == StateRole::Leader {
                    self.node.transfer_leader(to);
                }
            }
            Msg::Progress { reply } => {
                let r = &self.node.raft;
                let progress = (r.state == StateRole::Leader)
                    .then(|| r.prs().iter().map(|(id, pr)| (*id, pr.matched)).collect());
                let _ = reply.send(progress);
            }
            Msg::ReadIndex { reply } => {
                if self.has_leader() {
                    self.read_waiters.push(reply);
                } else {
                    self.held.push_back((Instant::now(), Held::Read(reply)));
                }
            }
            Msg::Commit { reply } => {
                let out = match self.batch.take() {
                    Some(wtx) => self.commit_state(wtx, false),
                    None => Ok(()),
                };
                let _ = reply.send(out);
            }
            Msg::Step(m) => {
                let (from, kind) = (m.from, m.get_msg_type());
                if let Err(e) = self.node.step(m) {
                    tracing::debug!(from = format!("{from:x}"), ?kind, error = %e, "raft message ignored");
                }
            }
        }
    }

    fn has_leader(&self) -> bool {
        self.node.raft.leader_id != raft::INVALID_ID
    }

    /// Proposes now if a leader is known (raft-rs forwards a follower's proposal to it), else
    /// holds the proposal until one is, or until it has waited `leader_wait` since `since`.
    fn propose(&mut self, since: Instant, id: u64, payload: Payload, waiter: Waiter) {
        if !self.has_leader() {
            self.held.push_back((
                since,
                Held::Propose {
                    id,
                    payload,
                    waiter,
                },
            ));
            return;
        }
        let proposed = match payload {
            Payload::Normal(data) => self.node.propose(vec![], data),
            Payload::ConfChange(cc) => self.node.propose_conf_change(id.to_be_bytes().to_vec(), cc),
        };
        match proposed {
            Ok(()) => {
                self.proposals.insert(id, waiter);
            }
            Err(raft::Error::ProposalDropped) => waiter.fail(Error::NoLeader),
            Err(e) => waiter.fail(e.into()),
        }
    }

    /// Releases held requests once a leader is known; fails those that waited too long.
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        if self.has_leader() {
            for (since, h) in std::mem::take(&mut self.held) {
                match h {
                    Held::Propose {
                        id,
                        payload,
                        waiter,
                    } => self.propose(since, id, payload, waiter),
                    Held::Read(reply) => self.read_waiters.push(reply),
                }
            }
            return;
        }
        let wait = self.cfg.leader_wait();
        while let Some((since, _)) = self.held.front() {
            if since.elapsed() < wait {
                break;
            }
            match self.held.pop_front().map(|(_, h)| h) {
                Some(Held::Propose { waiter, .. }) => waiter.fail(Error::NoLeader),
                Some(Held::Read(reply)) => {
                    let _ = reply.send(Err(Error::NoLeader));
                }
                None => {}
            }
        }
    }

    /// A ReadIndex context unique in the cluster: the leader keys pending reads by it.
    fn read_ctx(&self, ctx: u64) -> Vec<u8> {
        let mut b = self.cfg.id.to_be_bytes().to_vec();
        b.extend_from_slice(&ctx.to_be_bytes());
        b
    }

    /// Once per tick: re-send unanswered ReadIndex requests, drop abandoned ones.
    fn on_tick(&mut self) {
        let now = Instant::now();
        if self.has_leader() {
            let due: Vec<u64> = self
                .reads_in_flight
                .iter()
                .filter(|(_, b)| now.duration_since(b.sent) >= READ_INDEX_RETRY)
                .map(|(ctx, _)| *ctx)
                .collect();
            for ctx in due {
                self.node.read_index(self.read_ctx(ctx));
                if let Some(b) = self.reads_in_flight.get_mut(&ctx) {
                    b.sent = now;
                }
            }
        }
        if now.duration_since(self.last_sweep) >= Duration::from_secs(1) {
            self.last_sweep = now;
            // Callers that gave up (request timeout) no longer wait.
            self.reads_in_flight.retain(|_, b| {
                b.waiters.retain(|w| !w.is_closed());
                !b.waiters.is_empty()
            });
            self.proposals.retain(|_, w| !w.is_closed());
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        let mut ready = self.node.ready();
        // 1. Messages to peers that need not wait for this Ready to be durable.
        self.transport.send(ready.take_messages());
        // 2. A snapshot from the leader: installed in the transaction below.
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        for rs in ready.take_read_states() {
            let own =
                rs.request_ctx.len() == 16 && rs.request_ctx[..8] == self.cfg.id.to_be_bytes();
            let ctx = rs
                .request_ctx
                .get(8..16)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes)
                .filter(|_| own)
                .unwrap_or(0);
            if let Some(batch) = self.reads_in_flight.remove(&ctx) {
                for w in batch.waiters {
                    let _ = w.send(Ok(rs.index));
                }
            }
        }
        // 3-5. New entries and the hard state are appended to the log (`wal`), synced when
        // raft needs it (new entries, term or vote: one fsync per batch, shared by all
        // proposals that arrived meanwhile). Committed entries, including those that persisting
        // this Ready commits (the light ready's: on a lone member, all of them), are applied to
        // the state (`store.redb`) in one transaction, made durable only now and then (see
        // `sync_state`). Nothing that depends on either (replies, persisted messages) leaves
        // this member before both are done; the log is written first, except that a snapshot's
        // state commits (durably) before the log forgets what it replaced.
        // The state transaction is begun only when there is something to write: a Ready that
        // carries only read states or messages costs no redb transaction.
        let mut replies = Vec::new();
        let must_sync = ready.must_sync();
        // The batch of earlier Readies, if still open (see `Driver::batch`).
        let mut state_tx = self.batch.take();
        let installed = match &snapshot {
            Some(snap) => {
                let wtx = self.state_tx(&mut state_tx)?;
                let installed = self.install_snapshot(wtx, snap)?;
                self.revs = Revs {
                    current: installed.current_rev as i64,
                    compact: installed.compact_rev as i64,
                };
                Some(installed)
            }
            None => None,
        };
        let mut applied =
            self.apply_committed(&mut state_tx, ready.take_committed_entries(), &mut replies)?;
        let entries = ready.take_entries();
        if !entries.is_empty() {
            self.node.mut_store().wl().append(&entries)?;
        }
        if let Some(hs) = ready.hs() {
            let mut hs = hs.clone();
            hs.commit = hs.commit.max(self.applied);
            self.node.mut_store().wl().set_hardstate(hs);
        }
        let hs_changed = ready.hs().is_some();
        // 6. Messages that need the append to be durable: sent after the writes below.
        let persisted = ready.take_persisted_messages();
        let mut light = self.node.advance_append(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().wl().mut_hard_state().commit = commit;
        }
        let mut applied_more =
            self.apply_committed(&mut state_tx, light.take_committed_entries(), &mut replies)?;
        let hs = (hs_changed || light.commit_index().is_some())
            .then(|| self.node.store().rl().hard_state().clone());
        if let Some(snap) = &snapshot {
            if let Some(wtx) = state_tx {
                self.commit_state(wtx, true)?;
            }
            self.wal.reset(snap.get_metadata())?;
            self.wal.append(&entries, hs.as_ref(), true)?;
        } else {
            self.wal.append(&entries, hs.as_ref(), must_sync)?;
            if let Some(wtx) = state_tx {
                let mut rows = Vec::new();
                let mut must_commit = false;
                for b in [&mut applied, &mut applied_more].into_iter().flatten() {
                    rows.append(&mut b.rows);
                    must_commit |= b.must_commit;
                }
                let durable = self.state_sync_due();
                if must_commit || durable {
                    self.commit_state(wtx, durable)?;
                } else {
                    // Readers see the versions through the overlay until the batch commits.
                    let chunks = if applied.is_some() || applied_more.is_some() {
                        self.backend.overlay().applied(self.revs, rows)
                    } else {
                        0
                    };
                    if chunks >= MAX_OVERLAY_CHUNKS {
                        self.commit_state(wtx, false)?;
                    } else {
                        self.batch = Some(wtx);
                    }
                }
            }
        }
        if let Some(installed) = installed {
            self.installed_snapshot(installed)?;
        }
        self.publish_events(applied);
        self.publish_events(applied_more);
        send_replies(replies);
        self.transport.send(persisted);
        self.transport.send(light.take_messages());
        self.node.advance_apply();
        self.maybe_compact_log()?;
        self.publish();
        if self.removed {
            tracing::warn!(
                local_member_id = format!("{:x}", self.cfg.id),
                "the member has been permanently removed from the cluster; the data-dir used by \
                 this member must be removed before it joins again"
            );
            return Err(Error::Removed);
        }
        Ok(())
    }

    /// Hands committed events to the watch hub and lease changes to the lessor.
    fn publish_events(&self, applied: Option<AppliedBatch>) {
        if let Some(b) = applied {
            self.lessor.apply(&b.leases, std::time::Instant::now());
            self.hub.publish(b.events, b.revs);
        }
    }

    /// Applies `entries` inside the Ready's state transaction (`slot`, begun here if need be);
    /// returns the events they produced and the store revision after them (None when there was
    /// nothing to apply).
    #[must_use = "committed events must reach the watch hub"]
    fn apply_committed(
        &mut self,
        slot: &mut Option<WriteTransaction>,
        entries: Vec<Entry>,
        replies: &mut Vec<(Waiter, Outcome)>,
    ) -> Result<Option<AppliedBatch>> {
        let Some((last, last_term)) = entries.last().map(|e| (e.index, e.term)) else {
            return Ok(None);
        };
        let wtx = self.state_tx(slot)?;
        // Membership and configuration changes are read in committed state only.
        let mut must_commit = false;
        let out = {
            let mut tables = WriteTables::open(wtx, self.backend.index())?;
            for e in &entries {
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => {}
                    EntryType::EntryNormal => {
                        let (id, out) = match membership::peek(&e.data) {
                            Some((id, req)) => {
                                must_commit = true;
                                let out = membership::apply(wtx, req);
                                if let Err(Error::Storage(msg)) = &out {
                                    return Err(Error::Storage(msg.clone()));
                                }
                                let out = out.map(|change| self.member_changed(change));
                                (id, Outcome::Member(out))
                            }
                            None => {
                                let (id, out) = apply_entry(&mut tables, &e.data);
                                if let Err(Error::Storage(msg)) = &out {
                                    return Err(Error::Storage(msg.clone()));
                                }
                                (id, Outcome::Kv(out))
                            }
                        };
                        if let Some(waiter) = self.proposals.remove(&id) {
                            replies.push((waiter, out));
                        }
                    }
                    EntryType::EntryConfChange => {
                        must_commit = true;
                        let cc: ConfChange = decode(&e.data)?;
                        self.apply_conf_change(wtx, &cc)?;
                        let change = membership::apply_conf_change(
                            wtx,
                            cc.get_change_type(),
                            cc.node_id,
                            &cc.context,
                        )?;
                        self.member_changed(change);
                        let id = e
                            .context
                            .as_ref()
                            .try_into()
                            .map(u64::from_be_bytes)
                            .unwrap_or(0);
                        if let Some(waiter) = self.proposals.remove(&id) {
                            replies.push((waiter, Outcome::Member(Ok(()))));
                        }
                    }
                    EntryType::EntryConfChangeV2 => {
                        must_commit = true;
                        let cc: ConfChangeV2 = decode(&e.data)?;
                        self.apply_conf_change(wtx, &cc)?;
                    }
                }
            }
            AppliedBatch {
                events: tables.take_events(),
                revs: tables.revs(),
                leases: std::mem::take(&mut tables.lease_changes),
                rows: tables.take_rows(),
                must_commit: must_commit || tables.must_commit(),
            }
        };
        self.revs = out.revs;
        let mut meta = wtx.open_table(META)?;
        meta.insert(META_APPLIED_INDEX, last)?;
        meta.insert(META_APPLIED_TERM, last_term)?;
        self.applied = last;
        Ok(Some(out))
    }

    /// Keeps the transport in step with an applied membership change.
    fn member_changed(&mut self, change: Option<membership::Change>) {
        match change {
            Some(membership::Change::Added(m) | membership::Change::Updated(m)) => {
                self.transport.add_peer(m.id, m.peer_ur_ls)
            }
            Some(membership::Change::Removed(id)) => {
                self.transport.remove_peer(id);
                if id == self.cfg.id {
                    self.removed = true;
                }
            }
            None => {}
        }
    }

    fn apply_conf_change(
        &mut self,
        wtx: &WriteTransaction,
        cc: &impl raft_proto::ConfChangeI,
    ) -> Result<()> {
        let cs = self.node.apply_conf_change(cc)?;
        wtx.open_table(RAFT_STATE)?
            .insert(RAFT_CONF_STATE, encode(&cs)?.as_slice())?;
        self.node.mut_store().wl().set_conf_state(cs);
        Ok(())
    }

    /// Replaces this member's state with the leader's snapshot `snap` in `wtx`: the replicated
    /// tables from the file the peer service saved and its conf state. (`on_ready` restarts the
    /// log after the snapshot once `wtx` is durable.) The in-memory log follows at once; [`Driver::installed_snapshot`] refreshes the
    /// rest after the commit.
    fn install_snapshot(
        &mut self,
        wtx: &WriteTransaction,
        snap: &Snapshot,
    ) -> Result<crate::snapshot::Installed> {
        let meta = snap.get_metadata();
        let path = received_snapshot_path(&self.backend, meta.index);
        let installed = crate::snapshot::install(&path, wtx, self.backend.index())?;
        wtx.open_table(META)?.insert(META_APPLIED_TERM, meta.term)?;
        if installed.applied != meta.index {
            return Err(Error::Storage(format!(
                "the received snapshot {} holds the state at raft index {}, not {} as its \
                 message says",
                path.display(),
                installed.applied,
                meta.index
            )));
        }
        wtx.open_table(RAFT_STATE)?
            .insert(RAFT_CONF_STATE, encode(meta.get_conf_state())?.as_slice())?;
        self.node.mut_store().wl().apply_snapshot(snap.clone())?;
        self.applied = meta.index;
        Ok(installed)
    }

    /// After a snapshot's install is committed: the lessor, the watch hub and the peer links
    /// start over from the new state, and the file goes.
    fn installed_snapshot(&mut self, installed: crate::snapshot::Installed) -> Result<()> {
        tracing::info!(
            applied_index = installed.applied,
            current_revision = installed.current_rev,
            "applied snapshot from the leader"
        );
        self.lessor.reload(&self.backend)?;
        self.hub.reset(Revs {
            current: installed.current_rev as i64,
            compact: installed.compact_rev as i64,
        });
        let members = membership::list(&self.backend)?;
        self.transport.retain_peers(members.iter().map(|m| m.id));
        for m in members {
            self.transport.add_peer(m.id, m.peer_ur_ls);
        }
        if membership::is_removed(&self.backend, self.cfg.id)? {
            self.removed = true;
        }
        remove_received_snapshots(&self.backend, installed.applied);
        Ok(())
    }

    /// Whether the next state commit should be durable: `state_sync_interval` passed or
    /// `state_sync_entries` applied since the last durable one (etcd's backend batch
    /// interval and limit).
    fn state_sync_due(&self) -> bool {
        self.last_state_sync.elapsed() >= self.cfg.state_sync_interval
            || self.applied - self.durable_applied >= self.cfg.state_sync_entries
    }

    /// The state transaction of the current Ready, begun on first use.
    fn state_tx<'a>(&self, slot: &'a mut Option<WriteTransaction>) -> Result<&'a WriteTransaction> {
        if slot.is_none() {
            *slot = Some(self.backend.db().begin_write()?);
        }
        Ok(slot.as_ref().expect("just set"))
    }

    /// Commits a state transaction, durably when `durable`.
    fn commit_state(&mut self, mut wtx: WriteTransaction, durable: bool) -> Result<()> {
        if !durable {
            wtx.set_durability(Durability::None)
                .map_err(|e| Error::Storage(e.to_string()))?;
        }
        wtx.commit()?;
        // Readers find every applied version in the committed tables now.
        self.backend.overlay().committed(self.revs);
        if durable {
            self.durable_applied = self.applied;
            self.last_state_sync = Instant::now();
        }
        Ok(())
    }

    /// Makes applied state durable once it has waited `state_sync_interval` with no write to
    /// carry it, so the log can be compacted behind it.
    fn sync_state(&mut self) -> Result<()> {
        if self.applied > self.durable_applied
            && self.last_state_sync.elapsed() >= self.cfg.state_sync_interval
        {
            let wtx = match self.batch.take() {
                Some(wtx) => wtx,
                None => self.backend.db().begin_write()?,
            };
            self.commit_state(wtx, true)?;
        }
        Ok(())
    }

    /// Drops applied log entries once `--snapshot-count` of them pile up, keeping a tail.
    fn maybe_compact_log(&mut self) -> Result<()> {
        let first = ::raft::Storage::first_index(self.node.store())?;
        let catch_up = self.cfg.catch_up_entries;
        if self.applied < first + self.cfg.snapshot_count + catch_up {
            return Ok(());
        }
        // Never past what the state has made durable: a restart replays the log from there.
        let keep_from = (self.applied - catch_up).min(self.durable_applied + 1);
        if keep_from <= first {
            return Ok(());
        }
        let term = ::raft::Storage::term(self.node.store(), keep_from - 1)?;
        let meta = ::raft::prelude::SnapshotMetadata {
            index: keep_from - 1,
            term,
            ..Default::default()
        };
        self.wal.compact(&meta)?;
        self.node.mut_store().wl().compact(keep_from)?;
        tracing::info!(compact_index = keep_from - 1, "compacted raft log");
        Ok(())
    }

    fn publish(&self) {
        let r = &self.node.raft;
        let status = RaftStatus {
            term: r.term,
            leader: r.leader_id,
            commit: r.raft_log.committed,
            applied: self.applied,
            last_index: r.raft_log.last_index(),
            is_leader: r.state == StateRole::Leader,
            is_learner: r.prs().conf().learners().contains(&self.cfg.id),
            removed: self.removed,
            sole_voter_leader: r.state == StateRole::Leader
                && r.prs().conf().voters().ids().len() == 1
                && r.raft_log.term(r.raft_log.committed).ok() == Some(r.term),
        };
        // The indexes change with every Ready: they are stored without waking the status's
        // watchers (the lessor, the server's stop wait, leader waits), and the applied index
        // wakes only those waiting for it.
        self.status.send_if_modified(|s| {
            let indexes = |st: &RaftStatus| RaftStatus {
                commit: 0,
                applied: 0,
                last_index: 0,
                ..*st
            };
            let changed = indexes(s) != indexes(&status);
            *s = status;
            changed
        });
        self.applied_tx.send_if_modified(|a| {
            let changed = *a != status.applied;
            *a = status.applied;
            changed
        });
    }
}

/// What one apply produced for the watch hub, the lessor and the overlay.
struct AppliedBatch {
    events: Vec<Event>,
    revs: Revs,
    leases: Vec<LeaseChange>,
    /// The versions written, as stored.
    rows: crate::overlay::Chunk,
    /// Something besides the key space changed: the transaction must commit now.
    must_commit: bool,
}

/// Deletes received snapshot files up to raft index `upto` (all of them at start: raft forgets
/// a snapshot it has not installed when the member stops).
fn remove_received_snapshots(backend: &Backend, upto: u64) {
    let Some(dir) = backend.path().parent() else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let index = name
            .strip_prefix("snap-")
            .and_then(|n| n.split('.').next())
            .and_then(|n| u64::from_str_radix(n, 16).ok());
        if index.is_some_and(|i| i <= upto) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

fn send_replies(replies: Vec<(Waiter, Outcome)>) {
    for (waiter, out) in replies {
        waiter.answer(out);
    }
}

/// Forwards raft-rs's slog records to `tracing`.
struct TracingDrain;

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}"),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}"),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}"),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}"),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> RaftConfig {
        RaftConfig {
            id: 1,
            initial_voters: vec![1],
            heartbeat: Duration::from_millis(100),
            election_timeout: Duration::from_millis(1000),
            snapshot_count: 100,
            catch_up_entries: 10,
            state_sync_interval: DEFAULT_STATE_SYNC_INTERVAL,
            state_sync_entries: DEFAULT_STATE_SYNC_ENTRIES,
        }
    }

    #[test]
    fn restart_finds_the_log_agreeing_with_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let (_, applied, wal) = load_storage(&b, &cfg()).unwrap();
        assert_eq!(applied, 1, "bootstrap applies the initial voter's entry");
        drop(wal);
        let (mem, applied, _) = load_storage(&b, &cfg()).unwrap();
        assert_eq!(applied, 1);
        assert_eq!(mem.last_index().unwrap(), 1);
        assert_eq!(mem.term(1).unwrap(), 1);
    }

    #[test]
    fn restart_after_an_interrupted_snapshot_install_restarts_the_log_at_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let (_, _, mut wal) = load_storage(&b, &cfg()).unwrap();
        // The state reached index 50 (term 3) by a snapshot; the log still holds its old tail.
        let tail: Vec<Entry> = (2..=10)
            .map(|index| Entry {
                term: 2,
                index,
                ..Default::default()
            })
            .collect();
        wal.append(&tail, None, true).unwrap();
        drop(wal);
        let wtx = b.db().begin_write().unwrap();
        {
            let mut meta = wtx.open_table(META).unwrap();
            meta.insert(META_APPLIED_INDEX, 50).unwrap();
            meta.insert(META_APPLIED_TERM, 3).unwrap();
        }
        wtx.commit().unwrap();

        let (mem, applied, wal) = load_storage(&b, &cfg()).unwrap();
        assert_eq!(applied, 50);
        assert_eq!(mem.first_index().unwrap(), 51);
        assert_eq!(mem.last_index().unwrap(), 50);
        assert_eq!(mem.term(50).unwrap(), 3);
        assert_eq!(mem.initial_state().unwrap().hard_state.commit, 50);
        drop(wal);
        // And it was written back: the next restart needs no repair.
        let (_, recovered) = Wal::open(&b.wal_dir()).unwrap();
        assert!(recovered.entries.is_empty());
        assert_eq!((recovered.point.index, recovered.point.term), (50, 3));
    }
}
