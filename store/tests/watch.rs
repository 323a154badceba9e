//! Watch over gRPC against an in-process member: creation, events in order with prev_kv,
//! filters, catch-up from history, compaction, cancel and progress requests.

mod common;

use std::time::Duration;

use common::{Member, member, member_with};
use concord_store::proto::etcdserverpb::{
    CompactionRequest, DeleteRangeRequest, PutRequest, WatchCancelRequest, WatchCreateRequest,
    WatchProgressRequest, WatchRequest, WatchResponse, kv_client::KvClient,
    watch_client::WatchClient, watch_create_request::FilterType, watch_request::RequestUnion,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::transport::Channel;

struct Stream {
    tx: mpsc::Sender<WatchRequest>,
    rx: Streaming<WatchResponse>,
}

impl Stream {
    async fn open(m: &Member) -> Stream {
        let (tx, rx) = mpsc::channel(16);
        let mut client = WatchClient::new(m.channel.clone());
        let rx = client
            .watch(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, r: RequestUnion) {
        self.tx
            .send(WatchRequest {
                request_union: Some(r),
            })
            .await
            .unwrap();
    }

    async fn create(&mut self, c: WatchCreateRequest) -> WatchResponse {
        self.send(RequestUnion::CreateRequest(c)).await;
        let r = self.next().await;
        assert!(r.created, "{r:?}");
        r
    }

    async fn next(&mut self) -> WatchResponse {
        tokio::time::timeout(Duration::from_secs(5), self.rx.message())
            .await
            .expect("a watch response within 5s")
            .unwrap()
            .expect("stream open")
    }
}

async fn put(kv: &mut KvClient<Channel>, k: &str, v: &str) -> i64 {
    let r = kv
        .put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
        .await
        .unwrap();
    r.into_inner().header.unwrap().revision
}

fn summary(r: &WatchResponse) -> Vec<(i32, String, String, i64, Option<String>)> {
    r.events
        .iter()
        .map(|e| {
            let kv = e.kv.clone().unwrap();
            (
                e.r#type,
                String::from_utf8(kv.key).unwrap(),
                String::from_utf8(kv.value).unwrap(),
                kv.mod_revision,
                e.prev_kv
                    .as_ref()
                    .map(|p| String::from_utf8(p.value.clone()).unwrap()),
            )
        })
        .collect()
}

#[tokio::test]
async fn events_arrive_in_order_with_prev_kv_and_filters() {
    let m = member().await;
    let mut kv = KvClient::new(m.channel.clone());
    put(&mut kv, "a", "0").await; // rev 2
    let mut s = Stream::open(&m).await;
    let created = s
        .create(WatchCreateRequest {
            key: "a".into(),
            range_end: "b".into(),
            prev_kv: true,
            ..Default::default()
        })
        .await;
    assert_eq!((created.watch_id, created.header.unwrap().revision), (0, 2));
    let nodel = s
        .create(WatchCreateRequest {
            key: "a".into(),
            filters: vec![FilterType::Nodelete as i32],
            ..Default::default()
        })
        .await;
    assert_eq!(nodel.watch_id, 1, "ids are assigned from 0 per stream");
    put(&mut kv, "a", "1").await; // 3
    put(&mut kv, "zzz", "x").await; // 4, outside both
    kv.delete_range(DeleteRangeRequest {
        key: "a".into(),
        ..Default::default()
    })
    .await
    .unwrap(); // 5
    let mut by_watcher: std::collections::BTreeMap<i64, Vec<_>> = Default::default();
    while by_watcher.values().map(Vec::len).sum::<usize>() < 3 {
        let r = s.next().await;
        by_watcher
            .entry(r.watch_id)
            .or_default()
            .extend(summary(&r));
    }
    assert_eq!(
        by_watcher[&0],
        vec![
            (0, "a".into(), "1".into(), 3, Some("0".into())),
            (1, "a".into(), "".into(), 5, Some("1".into()))
        ]
    );
    assert_eq!(by_watcher[&1], vec![(0, "a".into(), "1".into(), 3, None)]);
}

#[tokio::test]
async fn catch_up_from_history_then_live() {
    let m = member().await;
    let mut kv = KvClient::new(m.channel.clone());
    for i in 0..5 {
        put(&mut kv, "k", &i.to_string()).await; // revs 2..=6
    }
    let mut s = Stream::open(&m).await;
    s.create(WatchCreateRequest {
        key: "k".into(),
        start_revision: 3,
        ..Default::default()
    })
    .await;
    let mut seen = Vec::new();
    while seen.len() < 4 {
        seen.extend(summary(&s.next().await).into_iter().map(|e| e.3));
    }
    assert_eq!(seen, vec![3, 4, 5, 6]);
    put(&mut kv, "k", "live").await;
    assert_eq!(summary(&s.next().await)[0].3, 7);
}

#[tokio::test]
async fn compacted_start_revision_cancels_with_the_compact_revision() {
    let m = member().await;
    let mut kv = KvClient::new(m.channel.clone());
    for i in 0..4 {
        put(&mut kv, "k", &i.to_string()).await; // revs 2..=5
    }
    kv.compact(CompactionRequest {
        revision: 4,
        physical: true,
    })
    .await
    .unwrap();
    let mut s = Stream::open(&m).await;
    s.create(WatchCreateRequest {
        key: "k".into(),
        start_revision: 2,
        ..Default::default()
    })
    .await;
    let r = s.next().await;
    assert!(r.canceled, "{r:?}");
    assert_eq!(r.compact_revision, 4);
    // Starting at the compacted revision itself still works.
    s.create(WatchCreateRequest {
        key: "k".into(),
        start_revision: 4,
        ..Default::default()
    })
    .await;
    let r = s.next().await;
    assert_eq!(
        summary(&r).iter().map(|e| e.3).collect::<Vec<_>>(),
        vec![4, 5]
    );
}

#[tokio::test]
async fn cancel_duplicate_ids_and_progress() {
    let m = member().await;
    let mut kv = KvClient::new(m.channel.clone());
    let mut s = Stream::open(&m).await;
    s.create(WatchCreateRequest {
        key: "x".into(),
        watch_id: 7,
        ..Default::default()
    })
    .await;
    s.send(RequestUnion::CreateRequest(WatchCreateRequest {
        key: "y".into(),
        watch_id: 7,
        ..Default::default()
    }))
    .await;
    let dup = s.next().await;
    assert!(dup.created && dup.canceled, "{dup:?}");
    assert_eq!(
        dup.cancel_reason,
        "mvcc: duplicate watch ID provided on the WatchStream"
    );
    let rev = put(&mut kv, "x", "1").await;
    assert_eq!(summary(&s.next().await)[0].3, rev);
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let p = s.next().await;
    assert_eq!((p.watch_id, p.header.unwrap().revision), (-1, rev));
    s.send(RequestUnion::CancelRequest(WatchCancelRequest {
        watch_id: 7,
    }))
    .await;
    let c = s.next().await;
    assert!(c.canceled && c.watch_id == 7, "{c:?}");
    put(&mut kv, "x", "2").await;
    s.send(RequestUnion::ProgressRequest(WatchProgressRequest {}))
        .await;
    let p = s.next().await;
    assert_eq!(
        p.watch_id, -1,
        "no events after cancel, only the progress response: {p:?}"
    );
}

#[tokio::test]
async fn progress_notify_follows_the_configured_interval() {
    let m = member_with(|c| c.watch_progress_notify_interval = Duration::from_millis(200)).await;
    let mut kv = KvClient::new(m.channel.clone());
    let rev = put(&mut kv, "p", "1").await;
    let mut s = Stream::open(&m).await;
    let created = s
        .create(WatchCreateRequest {
            key: "p".into(),
            progress_notify: true,
            ..Default::default()
        })
        .await;
    let p = s.next().await;
    assert!(p.events.is_empty() && !p.canceled, "{p:?}");
    assert_eq!(p.watch_id, created.watch_id);
    assert_eq!(p.header.unwrap().revision, rev);
}
