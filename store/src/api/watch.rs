//! `etcdserverpb.Watch`: one bidirectional stream carries many watchers.
//!
//! Each stream is served by one task that owns its watchers. After every change of the store
//! revision (announced by the watch hub), the task brings every watcher up to date, in
//! revision order, and only then reads the next client request; so a progress response
//! (`watch_id == -1`) is sent only after every event up to its revision, and responses of one
//! watcher are ordered, unique and gapless. Semantics follow etcd 3.5's
//! `api/v3rpc/watch.go` and `mvcc/watcher.go`: auto ids from 0, duplicate ids refused, start
//! revision 0 = from the next revision, a compacted start revision cancels the watcher with
//! `compact_revision`, NOPUT/NODELETE filters, prev_kv, fragments over `--max-request-bytes`.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::proto::etcdserverpb::{
    WatchCreateRequest, WatchRequest, WatchResponse, watch_create_request::FilterType,
    watch_request::RequestUnion, watch_server::Watch,
};
use crate::proto::mvccpb::{Event, event::EventType};
use crate::server::EtcdServer;
use crate::watch::KeyFilter;

/// Responses buffered per stream before the task waits for the client.
const STREAM_BUFFER: usize = 128;

/// The Watch service of one member.
pub struct WatchService {
    server: Arc<EtcdServer>,
}

impl WatchService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        WatchService { server }
    }
}

type ResponseStream = Pin<Box<dyn Stream<Item = Result<WatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Watch for WatchService {
    async fn watch(
        &self,
        req: Request<Streaming<WatchRequest>>,
    ) -> Result<Response<ResponseStream>, Status> {
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (metadata, extensions, inbound) = req.into_parts();
        let stream = WatchStream {
            server: self.server.clone(),
            tx,
            watchers: BTreeMap::new(),
            next_id: 0,
            metadata,
            extensions,
        };
        tokio::spawn(stream.run(inbound));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct Watcher {
    filter: KeyFilter,
    no_put: bool,
    no_delete: bool,
    prev_kv: bool,
    fragment: bool,
    progress_notify: bool,
    /// The next revision this watcher has not seen.
    next_rev: i64,
    /// Whether events went out since the last progress tick.
    sent_since_tick: bool,
}

impl Watcher {
    fn keep(&self, e: &Event) -> bool {
        let put = e.r#type == EventType::Put as i32;
        e.kv.as_ref().is_some_and(|kv| self.filter.matches(&kv.key))
            && !(put && self.no_put)
            && (put || !self.no_delete)
    }
}

struct WatchStream {
    server: Arc<EtcdServer>,
    tx: mpsc::Sender<Result<WatchResponse, Status>>,
    watchers: BTreeMap<i64, Watcher>,
    next_id: i64,
    /// The stream's metadata and extensions: its credentials, resolved at every create.
    metadata: tonic::metadata::MetadataMap,
    extensions: tonic::Extensions,
}

/// The stream's client went away; stop serving it.
struct Gone;

impl WatchStream {
    async fn run(mut self, mut inbound: Streaming<WatchRequest>) {
        let mut rev_rx = self.server.hub().subscribe();
        let every = self
            .server
            .config()
            .watch_progress_notify_interval
            .max(Duration::from_millis(10));
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        loop {
            let Ok(delivered) = self.deliver().await else {
                return;
            };
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(req)) => {
                        if self.handle(req, delivered).await.is_err() {
                            return;
                        }
                    }
                    _ => return,
                },
                changed = rev_rx.changed() => if changed.is_err() { return },
                _ = tick.tick() => if self.progress_tick(delivered).await.is_err() { return },
                _ = self.tx.closed() => return,
            }
        }
    }

    fn header(&self, rev: i64) -> Option<crate::proto::etcdserverpb::ResponseHeader> {
        Some(self.server.header(rev))
    }

    async fn send(&self, r: WatchResponse) -> Result<(), Gone> {
        self.tx.send(Ok(r)).await.map_err(|_| Gone)
    }

    /// Brings every watcher up to the hub's current revision; returns that revision.
    async fn deliver(&mut self) -> Result<i64, Gone> {
        let hub = self.server.hub().clone();
        let current = hub.current_rev();
        let ids: Vec<i64> = self.watchers.keys().copied().collect();
        for id in ids {
            while let Some(w) = self.watchers.get(&id) {
                if w.next_rev > current {
                    break;
                }
                match hub.read(w.next_rev, &|e| w.keep(e)) {
                    Ok((events, next)) => {
                        let (prev_kv, fragment) = (w.prev_kv, w.fragment);
                        if let Some(w) = self.watchers.get_mut(&id) {
                            w.next_rev = next;
                            w.sent_since_tick |= !events.is_empty();
                        }
                        if !events.is_empty() {
                            // etcd reads an event's previous version at send time, at
                            // `mod_revision - 1`; once that is compacted it sends none.
                            let compact = hub.compact_rev();
                            let events = events
                                .iter()
                                .map(|e| {
                                    let mut e = Event::clone(e);
                                    let before = e.kv.as_ref().map_or(0, |kv| kv.mod_revision - 1);
                                    if !prev_kv || before < compact {
                                        e.prev_kv = None;
                                    }
                                    e
                                })
                                .collect();
                            let r = WatchResponse {
                                header: self.header(current),
                                watch_id: id,
                                events,
                                ..Default::default()
                            };
                            self.send_fragments(r, fragment).await?;
                        }
                    }
                    Err(Error::Compacted) => {
                        let compact = self
                            .server
                            .read_view()
                            .map(|v| crate::mvcc::KvRead::revs(&v).compact)
                            .unwrap_or(0);
                        self.watchers.remove(&id);
                        let r = WatchResponse {
                            header: self.header(0),
                            watch_id: id,
                            canceled: true,
                            compact_revision: compact,
                            ..Default::default()
                        };
                        self.send(r).await?;
                    }
                    Err(e) => {
                        tracing::warn!(watch_id = id, error = %e, "watcher canceled: cannot read history");
                        self.watchers.remove(&id);
                        let r = WatchResponse {
                            header: self.header(current),
                            watch_id: id,
                            canceled: true,
                            cancel_reason: e.to_string(),
                            ..Default::default()
                        };
                        self.send(r).await?;
                    }
                }
            }
        }
        Ok(current)
    }

    /// etcd's `sendFragments`: split a response over `--max-request-bytes` plus the gRPC
    /// overhead allowance (etcd's limit for a watch stream) when the watcher asked for it.
    async fn send_fragments(&self, r: WatchResponse, fragment: bool) -> Result<(), Gone> {
        let limit = self.server.config().max_request_bytes + super::GRPC_OVERHEAD_BYTES;
        if !fragment || r.events.len() < 2 || r.encoded_len() < limit {
            return self.send(r).await;
        }
        let template = WatchResponse {
            events: Vec::new(),
            fragment: true,
            ..r.clone()
        };
        let mut chunk = template.clone();
        let total = r.events.len();
        for (i, e) in r.events.into_iter().enumerate() {
            chunk.events.push(e);
            if chunk.events.len() > 1 && chunk.encoded_len() >= limit {
                let last = chunk.events.pop();
                self.send(std::mem::replace(&mut chunk, template.clone()))
                    .await?;
                chunk.events.extend(last);
            }
            if i + 1 == total {
                chunk.fragment = false;
                self.send(chunk).await?;
                break;
            }
        }
        Ok(())
    }

    async fn handle(&mut self, req: WatchRequest, delivered: i64) -> Result<(), Gone> {
        match req.request_union {
            Some(RequestUnion::CreateRequest(c)) => self.create(c, delivered).await,
            Some(RequestUnion::CancelRequest(c)) => {
                if self.watchers.remove(&c.watch_id).is_some() {
                    let r = WatchResponse {
                        header: self.header(delivered),
                        watch_id: c.watch_id,
                        canceled: true,
                        ..Default::default()
                    };
                    self.send(r).await?;
                }
                Ok(())
            }
            Some(RequestUnion::ProgressRequest(_)) => {
                // Every watcher is up to date with `delivered`: it is a safe progress mark.
                let r = WatchResponse {
                    header: self.header(delivered),
                    watch_id: -1,
                    ..Default::default()
                };
                self.send(r).await
            }
            None => Ok(()),
        }
    }

    async fn create(&mut self, c: WatchCreateRequest, current: i64) -> Result<(), Gone> {
        let key = if c.key.is_empty() { vec![0] } else { c.key };
        let end = c.range_end;
        if let Err(e) = self.watch_permitted(&key, &end).await {
            // etcd's `isWatchPermitted` failure: created and canceled at once, no id.
            let r = WatchResponse {
                header: self.header(current),
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: crate::auth::watch_cancel_reason(&e),
                ..Default::default()
            };
            return self.send(r).await;
        }
        let mut err = None;
        if !end.is_empty() && end != [0] && key >= end {
            err = Some("mvcc: watcher range is empty");
        }
        let id = if c.watch_id == 0 {
            while self.watchers.contains_key(&self.next_id) {
                self.next_id += 1;
            }
            self.next_id += 1;
            self.next_id - 1
        } else {
            c.watch_id
        };
        if err.is_none() && self.watchers.contains_key(&id) {
            err = Some("mvcc: duplicate watch ID provided on the WatchStream");
        }
        if let Some(reason) = err {
            let id = if c.watch_id == 0 { -1 } else { id };
            let r = WatchResponse {
                header: self.header(current),
                watch_id: id,
                created: true,
                canceled: true,
                cancel_reason: reason.to_string(),
                ..Default::default()
            };
            return self.send(r).await;
        }
        let filters = |f: FilterType| c.filters.contains(&(f as i32));
        let watcher = Watcher {
            filter: KeyFilter::new(key, end),
            no_put: filters(FilterType::Noput),
            no_delete: filters(FilterType::Nodelete),
            prev_kv: c.prev_kv,
            fragment: c.fragment,
            progress_notify: c.progress_notify,
            next_rev: if c.start_revision <= 0 {
                current + 1
            } else {
                c.start_revision
            },
            sent_since_tick: false,
        };
        self.watchers.insert(id, watcher);
        let r = WatchResponse {
            header: self.header(current),
            watch_id: id,
            created: true,
            ..Default::default()
        };
        self.send(r).await
    }

    /// etcd's `isWatchPermitted`: read permission on the watched range, with the stream's
    /// credentials. Unlike etcd 3.5, which checks a from-key watch (`range_end` `"\0"`) as its
    /// first key only, the whole range from the key on must be readable.
    async fn watch_permitted(&self, key: &[u8], end: &[u8]) -> crate::error::Result<()> {
        let info = self
            .server
            .auth_info(&self.metadata, &self.extensions)
            .await?;
        let info = info.unwrap_or_default();
        self.server
            .auth_check(Some(&info), crate::auth::Access::Read, key, end)
    }

    async fn progress_tick(&mut self, delivered: i64) -> Result<(), Gone> {
        let mut due = Vec::new();
        for (id, w) in self.watchers.iter_mut() {
            if w.progress_notify && !w.sent_since_tick && w.next_rev > delivered {
                due.push(*id);
            }
            w.sent_since_tick = false;
        }
        for id in due {
            let r = WatchResponse {
                header: self.header(delivered),
                watch_id: id,
                ..Default::default()
            };
            self.send(r).await?;
        }
        Ok(())
    }
}
