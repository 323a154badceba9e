//! `etcdserverpb.KV`: request validation with etcd's exact errors, then the server.
//!
//! The checks here are etcd's `api/v3rpc/key.go`: empty keys, ignore_value/ignore_lease misuse,
//! sort options, txn size (`--max-txn-ops`) and overlapping writes in a txn. They run before
//! anything is proposed, so bad input never reaches the raft log. Then the caller's
//! credentials are resolved and travel with the request: Range is checked by `server` after
//! its read barrier, writes and Txn (compares and every op) by the applier.

use std::collections::HashSet;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::auth::with_credentials;
use crate::error::{Error, Result};
use crate::mvcc::KeyInterval;
use crate::proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, RequestOp, TxnRequest, TxnResponse, kv_server::Kv,
    range_request, request_op,
};
use crate::server::EtcdServer;

/// The KV service of one member.
pub struct KvService {
    server: Arc<EtcdServer>,
}

impl KvService {
    pub fn new(server: Arc<EtcdServer>) -> Self {
        KvService { server }
    }
}

fn check_range(r: &RangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(Error::InvalidSortOption);
    }
    Ok(())
}

fn check_put(r: &PutRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(Error::ValueProvided);
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(Error::LeaseProvided);
    }
    Ok(())
}

fn check_delete(r: &DeleteRangeRequest) -> Result<()> {
    if r.key.is_empty() {
        return Err(Error::EmptyKey);
    }
    Ok(())
}

/// etcd's `checkTxnRequest`: sizes, then every op recursively.
pub fn check_txn(r: &TxnRequest, max_ops: usize) -> Result<()> {
    let ops = r.compare.len().max(r.success.len()).max(r.failure.len());
    if ops > max_ops {
        return Err(Error::TooManyOps);
    }
    if r.compare.iter().any(|c| c.key.is_empty()) {
        return Err(Error::EmptyKey);
    }
    for op in r.success.iter().chain(&r.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(q)) => check_range(q)?,
            Some(request_op::Request::RequestPut(q)) => check_put(q)?,
            Some(request_op::Request::RequestDeleteRange(q)) => check_delete(q)?,
            Some(request_op::Request::RequestTxn(q)) => check_txn(q, max_ops)?,
            None => return Err(Error::KeyNotFound),
        }
    }
    Ok(())
}

/// Keys put and ranges deleted by one branch (and the txns nested in it).
struct Writes<'a> {
    puts: HashSet<&'a [u8]>,
    dels: Vec<KeyInterval<'a>>,
}

impl Writes<'_> {
    fn deletes(&self, k: &[u8]) -> bool {
        // etcd's interval tree takes a "\0" end literally, so a from-key delete matches nothing.
        self.dels.iter().any(|d| match *d {
            KeyInterval::From(_) => false,
            ref d => d.contains(k),
        })
    }
}

/// etcd's `checkIntervals`: no key put twice, and no key both put and deleted, within what one
/// execution of the txn can touch.
fn check_intervals(reqs: &[RequestOp]) -> Result<Writes<'_>> {
    let mut w = Writes {
        puts: HashSet::new(),
        dels: Vec::new(),
    };
    for op in reqs {
        if let Some(request_op::Request::RequestDeleteRange(d)) = &op.request {
            w.dels.push(KeyInterval::new(&d.key, &d.range_end));
        }
    }
    for op in reqs {
        let Some(request_op::Request::RequestTxn(t)) = &op.request else {
            continue;
        };
        let then = check_intervals(&t.success)?;
        let other = check_intervals(&t.failure)?;
        for k in &then.puts {
            if w.puts.contains(k) || w.deletes(k) {
                return Err(Error::DuplicateKey);
            }
        }
        w.puts.extend(then.puts.iter().copied());
        for k in &other.puts {
            // Success and failure exclude each other: a key in both is fine.
            if (w.puts.contains(k) && !then.puts.contains(k)) || w.deletes(k) {
                return Err(Error::DuplicateKey);
            }
            w.puts.insert(k);
        }
        w.dels.extend(then.dels);
        w.dels.extend(other.dels);
    }
    for op in reqs {
        let Some(request_op::Request::RequestPut(p)) = &op.request else {
            continue;
        };
        let k = p.key.as_slice();
        if w.puts.contains(k) || w.deletes(k) {
            return Err(Error::DuplicateKey);
        }
        w.puts.insert(k);
    }
    Ok(w)
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        check_range(req.get_ref())?;
        let info = self.server.auth_info_of(&req).await?;
        let resp = with_credentials(info, self.server.range(req.into_inner())).await?;
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        check_put(req.get_ref())?;
        let info = self.server.auth_info_of(&req).await?;
        let resp = with_credentials(info, self.server.put(req.into_inner())).await?;
        Ok(Response::new(resp))
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        check_delete(req.get_ref())?;
        let info = self.server.auth_info_of(&req).await?;
        let resp = with_credentials(info, self.server.delete_range(req.into_inner())).await?;
        Ok(Response::new(resp))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        check_txn(req.get_ref(), self.server.config().max_txn_ops)?;
        check_intervals(&req.get_ref().success)?;
        check_intervals(&req.get_ref().failure)?;
        let info = self.server.auth_info_of(&req).await?;
        let resp = with_credentials(info, self.server.txn(req.into_inner())).await?;
        Ok(Response::new(resp))
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        // etcd checks no permission for a compaction; the credentials still travel with it.
        let info = self.server.auth_info_of(&req).await?;
        let resp = with_credentials(info, self.server.compact(req.into_inner())).await?;
        Ok(Response::new(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: k.into(),
                    range_end: end.into(),
                    ..Default::default()
                },
            )),
        }
    }

    fn txn(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestTxn(TxnRequest {
                compare: vec![],
                success,
                failure,
            })),
        }
    }

    struct TestCase {
        name: &'static str,
        ops: Vec<RequestOp>,
        duplicate: bool,
    }

    #[test]
    fn overlapping_writes_are_duplicate_keys() {
        let cases = vec![
            TestCase {
                name: "distinct puts",
                ops: vec![put("a"), put("b")],
                duplicate: false,
            },
            TestCase {
                name: "same put twice",
                ops: vec![put("a"), put("a")],
                duplicate: true,
            },
            TestCase {
                name: "put inside deleted range",
                ops: vec![del("a", "c"), put("b")],
                duplicate: true,
            },
            TestCase {
                name: "put outside deleted range",
                ops: vec![del("a", "c"), put("c")],
                duplicate: false,
            },
            TestCase {
                name: "nested then/else may share",
                ops: vec![txn(vec![put("a")], vec![put("a")])],
                duplicate: false,
            },
            TestCase {
                name: "nested put clashes with outer",
                ops: vec![put("a"), txn(vec![put("a")], vec![])],
                duplicate: true,
            },
            TestCase {
                name: "nested delete clashes with outer put",
                ops: vec![txn(vec![del("a", "")], vec![]), put("a")],
                duplicate: true,
            },
        ];
        for c in cases {
            let got = check_intervals(&c.ops);
            assert_eq!(
                matches!(got, Err(Error::DuplicateKey)),
                c.duplicate,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn txn_limits_and_empty_keys() {
        let many = TxnRequest {
            compare: vec![],
            success: (0..129).map(|i| put(&format!("k{i}"))).collect(),
            failure: vec![],
        };
        assert!(matches!(check_txn(&many, 128), Err(Error::TooManyOps)));
        let empty = TxnRequest {
            compare: vec![],
            success: vec![put("")],
            failure: vec![],
        };
        assert!(matches!(check_txn(&empty, 128), Err(Error::EmptyKey)));
        let nil_op = TxnRequest {
            compare: vec![],
            success: vec![RequestOp { request: None }],
            failure: vec![],
        };
        assert!(matches!(check_txn(&nil_op, 128), Err(Error::KeyNotFound)));
    }
}
