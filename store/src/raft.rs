//! The raft driver: one thread owns the `RawNode`, and every write reaches the state machine
//! through it, even on a one-member cluster.
//!
//! Callers talk to the loop through [`RaftHandle`]: proposals and ReadIndex requests go in as
//! [`Msg`]s, answers come back on per-request oneshots, and progress (applied index, term,
//! leader) is published on `watch` channels. One `on_ready` follows raft-rs's documented order:
//! messages, snapshot, committed entries, append, hard state, persisted messages, advance,
//! light ready, advance_apply.
//!
//! Durability: the entries of a Ready, its hard state and the committed entries it carries go
//! into ONE redb write transaction with immediate durability (one fsync per batch, shared by all
//! proposals that arrived meanwhile: group commit). Entries committed by the light ready are
//! applied in a second, non-durable transaction: they are already durable in the log, and the
//! applied index travels with their effects, so replay after a crash redoes exactly what was
//! lost. This module must never interpret requests; `apply` does.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::time::{Duration, Instant};

use ::raft::prelude::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType, HardState, Snapshot};
use ::raft::{RawNode, StateRole, storage::MemStorage};
use protobuf::Message as PbMessage;
use redb::{Durability, ReadableDatabase, ReadableTable, WriteTransaction};
use tokio::sync::{oneshot, watch};

use crate::apply::{Applied, apply_entry};
use crate::backend::{
    Backend, META, META_APPLIED_INDEX, RAFT_CONF_STATE, RAFT_HARD_STATE, RAFT_LOG,
    RAFT_SNAPSHOT_META, RAFT_STATE,
};
use crate::error::{Error, Result};
use crate::mvcc::{Revs, WriteTables};
use crate::proto::mvccpb::Event;
use crate::watch::WatchHub;

/// Entries kept in the log after a compaction, so slow followers can catch up from the log.
const CATCH_UP_ENTRIES: u64 = 5000;

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
}

/// A request to the raft loop.
pub enum Msg {
    /// Propose an encoded `InternalRequest` whose id is `id`; the reply comes once applied.
    Propose {
        id: u64,
        data: Vec<u8>,
        reply: oneshot::Sender<Result<Applied>>,
    },
    /// Ask for a ReadIndex; the reply is the index to wait for before reading.
    ReadIndex { reply: oneshot::Sender<Result<u64>> },
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
}

/// The way into a running raft loop. Cheap to clone.
#[derive(Clone)]
pub struct RaftHandle {
    tx: Sender<Msg>,
    status: watch::Receiver<RaftStatus>,
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

    /// Resolves when the raft loop has stopped (it only stops on a storage or raft failure, or
    /// when every handle is gone).
    pub async fn stopped(&self) {
        let mut rx = self.status.clone();
        while rx.changed().await.is_ok() {}
    }

    /// Waits until the applied index reaches `index`.
    pub async fn wait_applied(&self, index: u64) -> Result<()> {
        let mut rx = self.status.clone();
        rx.wait_for(|s| s.applied >= index)
            .await
            .map_err(|_| Error::Stopped)?;
        Ok(())
    }
}

/// Loads (or bootstraps) raft state from the backend and starts the loop on its own thread.
pub fn start(backend: Arc<Backend>, hub: Arc<WatchHub>, cfg: RaftConfig) -> Result<RaftHandle> {
    let (storage, applied) = load_storage(&backend, &cfg)?;
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
    let mut driver = Driver {
        node,
        backend,
        hub,
        rx,
        status: status_tx,
        cfg,
        proposals: HashMap::new(),
        read_waiters: Vec::new(),
        reads_in_flight: HashMap::new(),
        next_read_ctx: 1,
        applied,
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
    })
}

fn decode<M: PbMessage>(bytes: &[u8]) -> Result<M> {
    M::parse_from_bytes(bytes).map_err(|e| Error::Storage(format!("corrupt raft state: {e}")))
}

fn encode<M: PbMessage>(m: &M) -> Result<Vec<u8>> {
    m.write_to_bytes()
        .map_err(|e| Error::Storage(format!("cannot encode raft state: {e}")))
}

/// Rebuilds the in-memory raft log from redb; on a fresh data dir writes the bootstrap state.
fn load_storage(backend: &Backend, cfg: &RaftConfig) -> Result<(MemStorage, u64)> {
    let rtx = backend.db().begin_read()?;
    let state = rtx.open_table(RAFT_STATE)?;
    let applied = rtx
        .open_table(META)?
        .get(META_APPLIED_INDEX)?
        .map(|v| v.value())
        .unwrap_or(0);
    let Some(cs) = state.get(RAFT_CONF_STATE)? else {
        drop(state);
        drop(rtx);
        let cs = ConfState::from((cfg.initial_voters.clone(), vec![]));
        let storage = MemStorage::new_with_conf_state(cs.clone());
        // Start at term 1 as etcd does, so the first leader's term is 2.
        let hs = HardState {
            term: 1,
            ..Default::default()
        };
        storage.wl().set_hardstate(hs.clone());
        let wtx = backend.db().begin_write()?;
        {
            let mut t = wtx.open_table(RAFT_STATE)?;
            t.insert(RAFT_CONF_STATE, encode(&cs)?.as_slice())?;
            t.insert(RAFT_HARD_STATE, encode(&hs)?.as_slice())?;
        }
        wtx.commit()?;
        return Ok((storage, 0));
    };
    let cs: ConfState = decode(cs.value())?;
    let storage = MemStorage::new();
    if let Some(meta) = state.get(RAFT_SNAPSHOT_META)? {
        let mut snap = Snapshot::default();
        snap.set_metadata(decode(meta.value())?);
        snap.mut_metadata().set_conf_state(cs.clone());
        storage.wl().apply_snapshot(snap)?;
    }
    let entries = rtx
        .open_table(RAFT_LOG)?
        .iter()?
        .map(|item| {
            item.map_err(Error::from)
                .and_then(|(_, v)| decode::<Entry>(v.value()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut core = storage.wl();
    core.append(&entries)?;
    let mut hs: HardState = match state.get(RAFT_HARD_STATE)? {
        Some(v) => decode(v.value())?,
        None => HardState::default(),
    };
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
    Ok((storage, applied))
}

struct Driver {
    node: RawNode<MemStorage>,
    backend: Arc<Backend>,
    /// Receives the events of every committed apply transaction.
    hub: Arc<WatchHub>,
    rx: Receiver<Msg>,
    status: watch::Sender<RaftStatus>,
    cfg: RaftConfig,
    /// Proposals of this member waiting to be applied, by proposal id.
    proposals: HashMap<u64, oneshot::Sender<Result<Applied>>>,
    /// ReadIndex requests not yet sent to raft; they share the next read context.
    read_waiters: Vec<oneshot::Sender<Result<u64>>>,
    /// ReadIndex contexts sent to raft, with the requests waiting on each.
    reads_in_flight: HashMap<u64, Vec<oneshot::Sender<Result<u64>>>>,
    next_read_ctx: u64,
    applied: u64,
}

impl Driver {
    fn run(&mut self) -> Result<()> {
        let mut next_tick = Instant::now() + self.cfg.heartbeat;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    self.handle(m);
                    // Batch whatever else is queued into the same Ready.
                    for _ in 0..4096 {
                        match self.rx.try_recv() {
                            Ok(m) => self.handle(m),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return Ok(()),
            }
            if Instant::now() >= next_tick {
                self.node.tick();
                next_tick += self.cfg.heartbeat;
            }
            if !self.read_waiters.is_empty() {
                let ctx = self.next_read_ctx;
                self.next_read_ctx += 1;
                self.node.read_index(ctx.to_be_bytes().to_vec());
                self.reads_in_flight
                    .insert(ctx, std::mem::take(&mut self.read_waiters));
            }
            if self.node.has_ready() {
                self.on_ready()?;
            }
        }
    }

    fn handle(&mut self, m: Msg) {
        match m {
            Msg::Propose { id, data, reply } => {
                if self.node.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(Error::NoLeader));
                    return;
                }
                match self.node.propose(vec![], data) {
                    Ok(()) => {
                        self.proposals.insert(id, reply);
                    }
                    Err(raft::Error::ProposalDropped) => {
                        let _ = reply.send(Err(Error::NoLeader));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Msg::ReadIndex { reply } => {
                if self.node.raft.leader_id == raft::INVALID_ID {
                    let _ = reply.send(Err(Error::NoLeader));
                } else {
                    self.read_waiters.push(reply);
                }
            }
        }
    }

    fn on_ready(&mut self) -> Result<()> {
        let mut ready = self.node.ready();
        // 1. Messages to peers (none leave this process until the peer transport lands).
        let _ = ready.take_messages();
        // 2. Snapshot from a leader: only happens with peers.
        if !ready.snapshot().is_empty() {
            return Err(Error::Raft(
                "received a raft snapshot, but snapshot install is not implemented yet".into(),
            ));
        }
        for rs in ready.take_read_states() {
            let ctx = rs
                .request_ctx
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            for w in self.reads_in_flight.remove(&ctx).unwrap_or_default() {
                let _ = w.send(Ok(rs.index));
            }
        }
        // 3-5. Committed entries, new entries and hard state: one durable transaction.
        let mut replies = Vec::new();
        let wtx = self.backend.db().begin_write()?;
        let applied = self.apply_committed(&wtx, ready.take_committed_entries(), &mut replies)?;
        let entries = ready.take_entries();
        if let Some(first) = entries.first() {
            let mut log = wtx.open_table(RAFT_LOG)?;
            // A leader's entries may overwrite a conflicting tail: drop it first.
            log.retain_in(first.index.., |_, _| false)?;
            for e in &entries {
                log.insert(e.index, encode(e)?.as_slice())?;
            }
            self.node.mut_store().wl().append(&entries)?;
        }
        if let Some(hs) = ready.hs() {
            let mut hs = hs.clone();
            hs.commit = hs.commit.max(self.applied);
            wtx.open_table(RAFT_STATE)?
                .insert(RAFT_HARD_STATE, encode(&hs)?.as_slice())?;
            self.node.mut_store().wl().set_hardstate(hs);
        }
        wtx.commit()?;
        self.publish_events(applied);
        send_replies(replies);
        // 6. Messages that needed the append to be durable.
        let _ = ready.take_persisted_messages();
        let mut light = self.node.advance(ready);
        let _ = light.take_messages();
        let committed = light.take_committed_entries();
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().wl().mut_hard_state().commit = commit;
        }
        if !committed.is_empty() {
            let mut replies = Vec::new();
            let mut wtx = self.backend.db().begin_write()?;
            wtx.set_durability(Durability::None)
                .map_err(|e| Error::Storage(e.to_string()))?;
            let applied = self.apply_committed(&wtx, committed, &mut replies)?;
            let hs = self.node.store().rl().hard_state().clone();
            wtx.open_table(RAFT_STATE)?
                .insert(RAFT_HARD_STATE, encode(&hs)?.as_slice())?;
            wtx.commit()?;
            self.publish_events(applied);
            send_replies(replies);
        }
        self.node.advance_apply();
        self.maybe_compact_log()?;
        self.publish();
        Ok(())
    }

    /// Hands committed events to the watch hub.
    fn publish_events(&self, applied: Option<(Vec<Event>, Revs)>) {
        if let Some((events, revs)) = applied {
            self.hub.publish(events, revs);
        }
    }

    /// Applies `entries` inside `wtx`; returns the events they produced and the store revision
    /// after them (None when there was nothing to apply).
    #[must_use = "committed events must reach the watch hub"]
    fn apply_committed(
        &mut self,
        wtx: &WriteTransaction,
        entries: Vec<Entry>,
        replies: &mut Vec<(oneshot::Sender<Result<Applied>>, Result<Applied>)>,
    ) -> Result<Option<(Vec<Event>, Revs)>> {
        let Some(last) = entries.last().map(|e| e.index) else {
            return Ok(None);
        };
        let out = {
            let mut tables = WriteTables::open(wtx)?;
            for e in &entries {
                match e.get_entry_type() {
                    EntryType::EntryNormal if e.data.is_empty() => {}
                    EntryType::EntryNormal => {
                        let (id, out) = apply_entry(&mut tables, &e.data);
                        if let Err(Error::Storage(msg)) = &out {
                            return Err(Error::Storage(msg.clone()));
                        }
                        if let Some(reply) = self.proposals.remove(&id) {
                            replies.push((reply, out));
                        }
                    }
                    EntryType::EntryConfChange => {
                        let cc: ConfChange = decode(&e.data)?;
                        self.apply_conf_change(wtx, &cc)?;
                    }
                    EntryType::EntryConfChangeV2 => {
                        let cc: ConfChangeV2 = decode(&e.data)?;
                        self.apply_conf_change(wtx, &cc)?;
                    }
                }
            }
            (tables.take_events(), tables.revs())
        };
        wtx.open_table(META)?.insert(META_APPLIED_INDEX, last)?;
        self.applied = last;
        Ok(Some(out))
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

    /// Drops applied log entries once `--snapshot-count` of them pile up, keeping a tail.
    fn maybe_compact_log(&mut self) -> Result<()> {
        let first = ::raft::Storage::first_index(self.node.store())?;
        if self.applied < first + self.cfg.snapshot_count + CATCH_UP_ENTRIES {
            return Ok(());
        }
        let keep_from = self.applied - CATCH_UP_ENTRIES;
        let term = ::raft::Storage::term(self.node.store(), keep_from - 1)?;
        let meta = ::raft::prelude::SnapshotMetadata {
            index: keep_from - 1,
            term,
            ..Default::default()
        };
        let wtx = self.backend.db().begin_write()?;
        wtx.open_table(RAFT_LOG)?
            .retain_in(..keep_from, |_, _| false)?;
        wtx.open_table(RAFT_STATE)?
            .insert(RAFT_SNAPSHOT_META, encode(&meta)?.as_slice())?;
        wtx.commit()?;
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
        };
        self.status.send_if_modified(|s| {
            let changed = *s != status;
            *s = status;
            changed
        });
    }
}

fn send_replies(replies: Vec<(oneshot::Sender<Result<Applied>>, Result<Applied>)>) {
    for (tx, out) in replies {
        let _ = tx.send(out);
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
