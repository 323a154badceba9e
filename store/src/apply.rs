//! Apply: turns one committed client request into a state change and its response.
//!
//! This is etcd's applier (`server/etcdserver/apply.go`) over our MVCC: Range with sorting and
//! revision filters, Put, DeleteRange, Txn (compares evaluated on the state before the txn,
//! nested txns included) and Compaction. It is deterministic: the same entry on the same state
//! gives the same result on every member, so it must never read clocks, randomness or
//! member-local settings. It never opens or commits transactions; the raft loop does.

use std::cmp::Ordering;

use prost::Message;
use redb::{ReadableTable, ReadableTableMetadata};

use crate::error::{Error, Result};
use crate::lease;
use crate::mvcc::{KeyInterval, KvRead, TxnWrite, WriteTables, resolve_rev};
use crate::proto::concordpb::{InternalRequest, internal_request::Request};
use crate::proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, alarm_request::AlarmAction,
};
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, Compare, DeleteRangeRequest, DeleteRangeResponse,
    LeaseCheckpointResponse, LeaseGrantResponse, LeaseRevokeResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
    compare, range_request, request_op, response_op,
};
use crate::proto::mvccpb::KeyValue;

/// The response to an applied request, before the api layer fills the header's ids.
#[derive(Debug, Clone)]
pub enum Applied {
    Put(PutResponse),
    DeleteRange(DeleteRangeResponse),
    Txn(TxnResponse),
    Compaction(CompactionResponse),
    LeaseGrant(LeaseGrantResponse),
    LeaseRevoke(LeaseRevokeResponse),
    LeaseCheckpoint(LeaseCheckpointResponse),
    Alarm(AlarmResponse),
    /// An auth management request or Authenticate (see `auth::apply`).
    Auth(crate::auth::AuthApplied),
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Applies one raft entry's payload. Returns the proposal id (0 if the payload is not a
/// client request) and the outcome; a failed request leaves the state untouched.
pub fn apply_entry(tables: &mut WriteTables<'_>, data: &[u8]) -> (u64, Result<Applied>) {
    let mut req = match InternalRequest::decode(data).map_err(Error::from) {
        Ok(r) => r,
        Err(e) => return (0, Err(e)),
    };
    // A client request made with credentials: checked against the auth store (etcd's
    // authApplierV3) before anything else.
    let who = req.credentials.take();
    if let Some(r) = &req.request
        && let Err(e) = check_alarms(tables, r)
    {
        return (req.id, Err(e));
    }
    if let (Some(who), Some(r)) = (&who, &req.request)
        && let Err(e) = crate::auth::apply::check_entry(tables, who, r)
    {
        return (req.id, Err(e));
    }
    // Anything but a key-value write may change tables that are read in committed state only.
    if !matches!(
        req.request,
        Some(Request::Put(_) | Request::DeleteRange(_) | Request::Txn(_))
    ) {
        tables.needs_commit = true;
    }
    let out = match req.request {
        Some(Request::Put(p)) => put(tables, &p).map(Applied::Put),
        Some(Request::DeleteRange(d)) => {
            let mut w = tables.begin();
            delete_range(&mut w, &d).and_then(|mut r| {
                r.header = header(w.finish()?);
                Ok(Applied::DeleteRange(r))
            })
        }
        Some(Request::Txn(t)) => txn(tables, &t).map(Applied::Txn),
        Some(Request::Compaction(c)) => compaction(tables, &c).map(Applied::Compaction),
        Some(Request::LeaseGrant(g)) => lease::grant(tables, g.id, g.ttl).map(|()| {
            Applied::LeaseGrant(LeaseGrantResponse {
                header: header(tables.revs().current),
                id: g.id,
                ttl: g.ttl,
                error: String::new(),
            })
        }),
        Some(Request::LeaseRevoke(r)) => lease::revoke(tables, r.id).map(|rev| {
            Applied::LeaseRevoke(LeaseRevokeResponse {
                header: header(rev),
            })
        }),
        Some(Request::LeaseCheckpoint(c)) => c
            .checkpoints
            .iter()
            .try_for_each(|cp| lease::checkpoint(tables, cp.id, cp.remaining_ttl, c.persist))
            .map(|()| {
                Applied::LeaseCheckpoint(LeaseCheckpointResponse {
                    header: header(tables.revs().current),
                })
            }),
        Some(Request::Alarm(a)) => alarm(tables, &a).map(Applied::Alarm),
        // The raft loop hands membership requests to `membership`; one reaching here is a bug.
        Some(Request::MemberAttrSet(_) | Request::MemberUpdate(_)) => Err(Error::Raft(
            "membership request reached the key-value applier".into(),
        )),
        Some(r) if crate::auth::apply::is_auth_request(&r) => crate::auth::apply::apply(tables, &r)
            .map(|mut a| {
                a.store_revision = tables.revs().current;
                Applied::Auth(a)
            }),
        Some(_) => Err(Error::Raft("unexpected request kind".into())),
        None => Err(Error::Raft("empty internal request".into())),
    };
    (req.id, out)
}

/// Whether a txn puts anything in either branch's top level (etcd's quota cost is
/// non-zero: `costTxn` looks at top-level puts only).
pub fn txn_costs_space(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| matches!(op.request, Some(request_op::Request::RequestPut(_))))
}

/// The raised alarms, in (member id, alarm) order.
pub fn alarms(tables: &WriteTables<'_>) -> Result<Vec<AlarmMember>> {
    let mut out = Vec::new();
    for item in tables.alarms.iter()? {
        let (k, _) = item?;
        let (member_id, alarm) = k.value();
        out.push(AlarmMember { member_id, alarm });
    }
    Ok(out)
}

/// etcd's capped appliers: while NOSPACE stands, puts, txns with puts and lease grants fail
/// with `database space exceeded`; while CORRUPT stands, every write fails.
fn check_alarms(tables: &WriteTables<'_>, r: &Request) -> Result<()> {
    if tables.alarms.is_empty()? {
        return Ok(());
    }
    let raised = alarms(tables)?;
    let has = |t: AlarmType| raised.iter().any(|a| a.alarm == t as i32);
    if has(AlarmType::Corrupt) {
        match r {
            Request::Put(_)
            | Request::DeleteRange(_)
            | Request::Txn(_)
            | Request::Compaction(_)
            | Request::LeaseGrant(_)
            | Request::LeaseRevoke(_) => return Err(Error::Corrupt),
            _ => {}
        }
    }
    if has(AlarmType::Nospace) {
        match r {
            Request::Put(_) | Request::LeaseGrant(_) => return Err(Error::NoSpace),
            Request::Txn(t) if txn_costs_space(t) => return Err(Error::NoSpace),
            _ => {}
        }
    }
    Ok(())
}

/// etcd's `applierV3backend.Alarm` for ACTIVATE and DEACTIVATE: the response lists the alarm
/// changed, or nothing if there was nothing to change. GET is served from local state.
fn alarm(tables: &mut WriteTables<'_>, a: &AlarmRequest) -> Result<AlarmResponse> {
    let mut resp = AlarmResponse {
        header: header(tables.revs().current),
        alarms: vec![],
    };
    let member = AlarmMember {
        member_id: a.member_id,
        alarm: a.alarm,
    };
    match AlarmAction::try_from(a.action) {
        Ok(AlarmAction::Activate) => {
            if a.alarm == AlarmType::None as i32 {
                return Ok(resp);
            }
            // An alarm raised twice is answered with the standing one, as etcd does.
            tables.alarms.insert((a.member_id, a.alarm), ())?;
            resp.alarms.push(member);
        }
        Ok(AlarmAction::Deactivate) => {
            if tables.alarms.remove((a.member_id, a.alarm))?.is_some() {
                resp.alarms.push(member);
            }
        }
        Ok(AlarmAction::Get) => resp.alarms = alarms(tables)?,
        Err(_) => {}
    }
    Ok(resp)
}

/// etcd's Range: fetch, filter by mod/create revision, sort, truncate to `limit`.
pub fn range(view: &impl KvRead, r: &RangeRequest) -> Result<RangeResponse> {
    use range_request::{SortOrder, SortTarget};
    let revs = view.revs();
    let rev = resolve_rev(r.revision, revs)?;
    let order = SortOrder::try_from(r.sort_order).unwrap_or(SortOrder::None);
    let target = SortTarget::try_from(r.sort_target).unwrap_or(SortTarget::Key);
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // As etcd: fetch everything when sorting or filtering (judged on the order as sent), else
    // one more than the limit so `more` can be told.
    let fetch = if order != SortOrder::None || filtered || r.limit <= 0 {
        0
    } else {
        r.limit as usize + 1
    };
    let interval = KeyInterval::new(&r.key, &r.range_end);
    let rr = view.range_at(&interval, rev, fetch, r.count_only)?;
    let mut kvs = rr.kvs;
    kvs.retain(|kv| {
        !(r.max_mod_revision != 0 && kv.mod_revision > r.max_mod_revision
            || r.min_mod_revision != 0 && kv.mod_revision < r.min_mod_revision
            || r.max_create_revision != 0 && kv.create_revision > r.max_create_revision
            || r.min_create_revision != 0 && kv.create_revision < r.min_create_revision)
    });
    let order = match (target, order) {
        (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
        (t, SortOrder::None) if t != SortTarget::Key => SortOrder::Ascend,
        (_, o) => o,
    };
    if order != SortOrder::None {
        let cmp = |a: &KeyValue, b: &KeyValue| -> Ordering {
            match target {
                SortTarget::Key => a.key.cmp(&b.key),
                SortTarget::Version => a.version.cmp(&b.version),
                SortTarget::Create => a.create_revision.cmp(&b.create_revision),
                SortTarget::Mod => a.mod_revision.cmp(&b.mod_revision),
                SortTarget::Value => a.value.cmp(&b.value),
            }
        };
        if order == SortOrder::Descend {
            kvs.sort_by(|a, b| cmp(b, a));
        } else {
            kvs.sort_by(cmp);
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    Ok(RangeResponse {
        header: header(revs.current),
        kvs,
        more,
        count: rr.count as i64,
    })
}

fn put(tables: &mut WriteTables<'_>, p: &PutRequest) -> Result<PutResponse> {
    if p.lease != 0 && !lease::exists(tables, p.lease)? {
        return Err(Error::LeaseNotFound);
    }
    let mut w = tables.begin();
    let mut resp = put_in(&mut w, p)?;
    resp.header = header(w.finish()?);
    Ok(resp)
}

fn put_in(w: &mut TxnWrite<'_, '_>, p: &PutRequest) -> Result<PutResponse> {
    // One lookup of the key serves the ignore_* options, prev_kv and the new version.
    let prev = w.get(&p.key)?;
    if (p.ignore_value || p.ignore_lease) && prev.is_none() {
        return Err(Error::KeyNotFound);
    }
    let value = match (&prev, p.ignore_value) {
        (Some(kv), true) => kv.value.clone(),
        _ => p.value.clone(),
    };
    let lease = match (&prev, p.ignore_lease) {
        (Some(kv), true) => kv.lease,
        _ => p.lease,
    };
    let prev_kv = if p.prev_kv { prev.clone() } else { None };
    w.put_over(&p.key, value, lease, prev)?;
    Ok(PutResponse {
        header: header(w.rev()),
        prev_kv,
    })
}

fn delete_range(w: &mut TxnWrite<'_, '_>, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
    let deleted = w.delete_range(&KeyInterval::new(&d.key, &d.range_end))?;
    Ok(DeleteRangeResponse {
        header: header(w.rev()),
        deleted: deleted.len() as i64,
        prev_kvs: if d.prev_kv { deleted } else { Vec::new() },
    })
}

fn compaction(tables: &mut WriteTables<'_>, c: &CompactionRequest) -> Result<CompactionResponse> {
    let revs = tables.revs();
    if c.revision > revs.compact && c.revision <= revs.current {
        // etcd hashes the history up to the new compaction revision while compacting, and
        // answers HashKV at that revision with it (see `hash`).
        let prev = if revs.compact == 0 { -1 } else { revs.compact };
        let h = crate::hash::history_hash(&tables.revs_table, &tables.index, prev, c.revision)?;
        tables
            .compaction_hashes
            .open_mut()?
            .insert(c.revision as u64, (h, prev))?;
        let hashes = tables.compaction_hashes.open_mut()?;
        while hashes.len()? > crate::backend::COMPACTION_HASHES_KEPT as u64 {
            hashes.pop_first()?;
        }
    }
    tables.compact(c.revision)?;
    Ok(CompactionResponse {
        header: header(tables.revs().current),
    })
}

/// Whether a txn (nested ones included) contains no writes.
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(request_op::Request::RequestPut(_))
            | Some(request_op::Request::RequestDeleteRange(_)) => false,
            Some(request_op::Request::RequestTxn(inner)) => txn_is_read_only(inner),
            _ => true,
        })
}

fn compare_kv(c: &Compare, kv: &KeyValue) -> bool {
    use compare::{CompareResult, CompareTarget, TargetUnion};
    let ord = match (CompareTarget::try_from(c.target), &c.target_union) {
        (Ok(CompareTarget::Value), tu) => {
            let v: &[u8] = match tu {
                Some(TargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        (Ok(CompareTarget::Create), tu) => kv.create_revision.cmp(&match tu {
            Some(TargetUnion::CreateRevision(r)) => *r,
            _ => 0,
        }),
        (Ok(CompareTarget::Mod), tu) => kv.mod_revision.cmp(&match tu {
            Some(TargetUnion::ModRevision(r)) => *r,
            _ => 0,
        }),
        (Ok(CompareTarget::Version), tu) => kv.version.cmp(&match tu {
            Some(TargetUnion::Version(r)) => *r,
            _ => 0,
        }),
        (Ok(CompareTarget::Lease), tu) => kv.lease.cmp(&match tu {
            Some(TargetUnion::Lease(r)) => *r,
            _ => 0,
        }),
        (Err(_), _) => return true,
    };
    match CompareResult::try_from(c.result) {
        Ok(CompareResult::Equal) => ord == Ordering::Equal,
        Ok(CompareResult::NotEqual) => ord != Ordering::Equal,
        Ok(CompareResult::Greater) => ord == Ordering::Greater,
        Ok(CompareResult::Less) => ord == Ordering::Less,
        Err(_) => true,
    }
}

fn compare_holds(view: &impl KvRead, c: &Compare) -> Result<bool> {
    // etcd turns a "\0" range end into "every key from here" for compares too.
    let interval = KeyInterval::new(&c.key, &c.range_end);
    let rr = view.range_at(&interval, view.revs().current, 0, false)?;
    if rr.kvs.is_empty() {
        // A missing key compares as an empty key-value, except on value: no value can match.
        return Ok(
            compare::CompareTarget::try_from(c.target) != Ok(compare::CompareTarget::Value)
                && compare_kv(c, &KeyValue::default()),
        );
    }
    Ok(rr.kvs.iter().all(|kv| compare_kv(c, kv)))
}

/// Evaluates every compare along the branch each txn will take, before anything is written.
fn compare_to_path(view: &impl KvRead, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
    let mut ok = true;
    for c in &t.compare {
        if !compare_holds(view, c)? {
            ok = false;
            break;
        }
    }
    path.push(ok);
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            compare_to_path(view, inner, path)?;
        }
    }
    Ok(())
}

/// etcd's pre-execution checks along the chosen path: leases and ignore flags of puts (write
/// txns only), then range revisions, so a failing txn changes nothing.
fn check_path(
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
    check: &dyn Fn(&RequestOp) -> Result<()>,
) -> Result<()> {
    let ok = path[*at];
    *at += 1;
    for op in if ok { &t.success } else { &t.failure } {
        if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
            check_path(inner, path, at, check)?;
        } else {
            check(op)?;
        }
    }
    Ok(())
}

fn txn(tables: &mut WriteTables<'_>, t: &TxnRequest) -> Result<TxnResponse> {
    let mut w = tables.begin();
    let mut path = Vec::new();
    compare_to_path(&w, t, &mut path)?;
    let revs = w.revs();
    if !txn_is_read_only(t) {
        let check_put = |op: &RequestOp| -> Result<()> {
            if let Some(request_op::Request::RequestPut(p)) = &op.request {
                if (p.ignore_value || p.ignore_lease) && w.get(&p.key)?.is_none() {
                    return Err(Error::KeyNotFound);
                }
                if p.lease != 0 && !w.lease_exists(p.lease)? {
                    return Err(Error::LeaseNotFound);
                }
            }
            Ok(())
        };
        check_path(t, &path, &mut 0, &check_put)?;
    }
    let check_range = |op: &RequestOp| -> Result<()> {
        if let Some(request_op::Request::RequestRange(r)) = &op.request {
            if r.revision > revs.current {
                return Err(Error::FutureRev);
            }
            if r.revision != 0 && r.revision < revs.compact {
                return Err(Error::Compacted);
            }
        }
        Ok(())
    };
    check_path(t, &path, &mut 0, &check_range)?;
    let mut resp = exec_txn(&mut w, t, &path, &mut 0)?;
    resp.header = header(w.finish()?);
    Ok(resp)
}

fn exec_txn(
    w: &mut TxnWrite<'_, '_>,
    t: &TxnRequest,
    path: &[bool],
    at: &mut usize,
) -> Result<TxnResponse> {
    let succeeded = path[*at];
    *at += 1;
    let ops = if succeeded { &t.success } else { &t.failure };
    let mut responses = Vec::with_capacity(ops.len());
    for op in ops {
        let response = match &op.request {
            Some(request_op::Request::RequestRange(r)) => {
                response_op::Response::ResponseRange(range(&*w, r)?)
            }
            Some(request_op::Request::RequestPut(p)) => {
                response_op::Response::ResponsePut(put_in(w, p)?)
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                response_op::Response::ResponseDeleteRange(delete_range(w, d)?)
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                let mut r = exec_txn(w, inner, path, at)?;
                r.header = header(w.rev());
                response_op::Response::ResponseTxn(r)
            }
            None => continue,
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use crate::mvcc::ReadView;
    use crate::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};

    fn apply(b: &Backend, req: Request) -> Result<Applied> {
        let data = InternalRequest {
            id: 7,
            request: Some(req),
            credentials: None,
        }
        .encode_to_vec();
        let wtx = b.db().begin_write().unwrap();
        let (id, out) = {
            let mut t = WriteTables::open(&wtx, b.index()).unwrap();
            apply_entry(&mut t, &data)
        };
        assert_eq!(id, 7);
        wtx.commit().unwrap();
        out
    }

    fn put_req(k: &str, v: &str) -> Request {
        Request::Put(PutRequest {
            key: k.into(),
            value: v.into(),
            ..Default::default()
        })
    }

    fn get(b: &Backend, r: RangeRequest) -> Result<RangeResponse> {
        range(&ReadView::open(b).unwrap(), &r)
    }

    fn op_put(k: &str, v: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                value: v.into(),
                ..Default::default()
            })),
        }
    }

    fn cmp(k: &str, target: CompareTarget, result: CompareResult, tu: TargetUnion) -> Compare {
        Compare {
            key: k.into(),
            target: target as i32,
            result: result as i32,
            target_union: Some(tu),
            range_end: vec![],
        }
    }

    #[test]
    fn put_revisions_and_prev_kv() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        let Applied::Put(r) = apply(&b, put_req("foo", "bar")).unwrap() else {
            panic!()
        };
        assert_eq!(r.header.unwrap().revision, 2);
        let req = Request::Put(PutRequest {
            key: "foo".into(),
            value: "baz".into(),
            prev_kv: true,
            ..Default::default()
        });
        let Applied::Put(r) = apply(&b, req).unwrap() else {
            panic!()
        };
        assert_eq!(r.prev_kv.unwrap().value, b"bar");
        let got = get(
            &b,
            RangeRequest {
                key: "foo".into(),
                ..Default::default()
            },
        )
        .unwrap();
        let kv = &got.kvs[0];
        assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 3, 2));
        // ignore_value on a missing key, unknown lease: errors, nothing written.
        let req = Request::Put(PutRequest {
            key: "nope".into(),
            ignore_value: true,
            ..Default::default()
        });
        assert!(matches!(apply(&b, req), Err(Error::KeyNotFound)));
        let req = Request::Put(PutRequest {
            key: "x".into(),
            lease: 5,
            ..Default::default()
        });
        assert!(matches!(apply(&b, req), Err(Error::LeaseNotFound)));
        assert_eq!(
            get(
                &b,
                RangeRequest {
                    key: "foo".into(),
                    ..Default::default()
                }
            )
            .unwrap()
            .header
            .unwrap()
            .revision,
            3
        );
    }

    #[test]
    fn range_sorts_filters_and_limits_like_etcd() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        for (k, v) in [("a", "3"), ("b", "1"), ("c", "2"), ("b", "9")] {
            apply(&b, put_req(k, v)).unwrap();
        }
        let all = |f: fn(&mut RangeRequest)| {
            let mut r = RangeRequest {
                key: "a".into(),
                range_end: "z".into(),
                ..Default::default()
            };
            f(&mut r);
            let resp = get(&b, r).unwrap();
            (
                resp.kvs
                    .iter()
                    .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
                    .collect::<Vec<_>>()
                    .join(""),
                resp.more,
                resp.count,
            )
        };
        assert_eq!(all(|_| {}), ("abc".into(), false, 3));
        assert_eq!(all(|r| r.limit = 2), ("ab".into(), true, 3));
        assert_eq!(
            all(|r| r.sort_target = range_request::SortTarget::Value as i32),
            ("cab".into(), false, 3)
        );
        assert_eq!(
            all(|r| {
                r.sort_target = range_request::SortTarget::Mod as i32;
                r.sort_order = range_request::SortOrder::Descend as i32;
            }),
            ("bca".into(), false, 3)
        );
        assert_eq!(all(|r| r.min_mod_revision = 4), ("bc".into(), false, 3));
        assert_eq!(all(|r| r.max_create_revision = 3), ("ab".into(), false, 3));
        assert_eq!(all(|r| r.count_only = true), ("".into(), false, 3));
        assert_eq!(all(|r| r.revision = 3), ("ab".into(), false, 2));
        assert!(matches!(
            get(
                &b,
                RangeRequest {
                    key: "a".into(),
                    revision: 99,
                    ..Default::default()
                }
            ),
            Err(Error::FutureRev)
        ));
    }

    #[test]
    fn txn_compares_on_prior_state_and_nests() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        apply(&b, put_req("k", "v1")).unwrap(); // rev 2
        let inner = TxnRequest {
            // Evaluated before the outer put below: sees v1.
            compare: vec![cmp(
                "k",
                CompareTarget::Value,
                CompareResult::Equal,
                TargetUnion::Value("v1".into()),
            )],
            success: vec![op_put("inner", "yes")],
            failure: vec![op_put("inner", "no")],
        };
        let t = TxnRequest {
            compare: vec![
                cmp(
                    "k",
                    CompareTarget::Version,
                    CompareResult::Equal,
                    TargetUnion::Version(1),
                ),
                cmp(
                    "missing",
                    CompareTarget::Create,
                    CompareResult::Equal,
                    TargetUnion::CreateRevision(0),
                ),
            ],
            success: vec![
                op_put("k", "v2"),
                RequestOp {
                    request: Some(request_op::Request::RequestTxn(inner)),
                },
            ],
            failure: vec![],
        };
        let Applied::Txn(r) = apply(&b, Request::Txn(t)).unwrap() else {
            panic!()
        };
        assert!(r.succeeded);
        assert_eq!(r.header.unwrap().revision, 3);
        let got = get(
            &b,
            RangeRequest {
                key: "inner".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(got.kvs[0].value, b"yes");
        // A value compare on a missing key always fails.
        let t = TxnRequest {
            compare: vec![cmp(
                "missing",
                CompareTarget::Value,
                CompareResult::NotEqual,
                TargetUnion::Value("x".into()),
            )],
            success: vec![op_put("s", "1")],
            failure: vec![],
        };
        let Applied::Txn(r) = apply(&b, Request::Txn(t)).unwrap() else {
            panic!()
        };
        assert!(!r.succeeded);
        assert_eq!(
            r.header.unwrap().revision,
            3,
            "a txn without writes keeps the revision"
        );
    }

    #[test]
    fn txn_with_bad_range_revision_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let b = Backend::open(dir.path()).unwrap();
        apply(&b, put_req("k", "v1")).unwrap();
        let t = TxnRequest {
            compare: vec![],
            success: vec![
                op_put("k", "v2"),
                RequestOp {
                    request: Some(request_op::Request::RequestRange(RangeRequest {
                        key: "k".into(),
                        revision: 50,
                        ..Default::default()
                    })),
                },
            ],
            failure: vec![],
        };
        assert!(matches!(apply(&b, Request::Txn(t)), Err(Error::FutureRev)));
        let got = get(
            &b,
            RangeRequest {
                key: "k".into(),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(got.kvs[0].value, b"v1");
    }
}
