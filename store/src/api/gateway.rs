//! The gRPC-JSON gateway on the client port: etcd 3.5's `/v3/...` HTTP routes (`POST` with a
//! JSON body; the old `/v3beta/...` too), so the `curl` examples of etcd's documentation work
//! unchanged.
//!
//! Every route names one gRPC method. The JSON body is transcoded into the method's request
//! message with the protobuf descriptors of our `.proto` files (`prost-reflect`), the call goes to
//! this member's own gRPC services in-process (no network hop, the same code path as a gRPC
//! client), and the response is transcoded back. The JSON is etcd's (grpc-gateway's `JSONPb`
//! with original field names): proto field names (`cluster_id`, `create_revision`, `dbSize`,
//! `TTL`), 64-bit integers as strings, bytes as base64, enums by name, default values left out.
//! Requests may use proto or lowerCamel names, and numbers or strings for 64-bit integers.
//!
//! Errors answer with grpc-gateway's HTTP status for the gRPC code and the body
//! `{"code": <gRPC code>, "message": "<etcd's message>"}`. Streaming methods (`/v3/watch`,
//! `/v3/lease/keepalive`, `/v3/maintenance/snapshot`, `/v3/election/observe`) answer with
//! newline-delimited JSON objects `{"result": <response>}`, and `{"error": {...}}` if the stream
//! fails; for the client-streaming ones, the request body may carry several JSON objects one
//! after another, and the call stays open after the body ends, until the HTTP client goes away.
//! Services concord does not implement (Auth) answer as their gRPC methods do: Unimplemented.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::{Buf, Bytes, BytesMut};
use futures::{Stream, StreamExt};
use http_body_util::BodyExt;
use prost::Message;
use prost_reflect::{
    DescriptorPool, DeserializeOptions, DynamicMessage, MessageDescriptor, MethodDescriptor,
    SerializeOptions,
};
use tonic::Code;
use tower_service::Service;

/// `(HTTP path, gRPC service, method)` of every route etcd 3.5's gateway serves.
const ROUTES: &[(&str, &str, &str)] = &[
    ("/v3/kv/range", "etcdserverpb.KV", "Range"),
    ("/v3/kv/put", "etcdserverpb.KV", "Put"),
    ("/v3/kv/deleterange", "etcdserverpb.KV", "DeleteRange"),
    ("/v3/kv/txn", "etcdserverpb.KV", "Txn"),
    ("/v3/kv/compaction", "etcdserverpb.KV", "Compact"),
    ("/v3/watch", "etcdserverpb.Watch", "Watch"),
    ("/v3/lease/grant", "etcdserverpb.Lease", "LeaseGrant"),
    ("/v3/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    ("/v3/kv/lease/revoke", "etcdserverpb.Lease", "LeaseRevoke"),
    (
        "/v3/lease/keepalive",
        "etcdserverpb.Lease",
        "LeaseKeepAlive",
    ),
    (
        "/v3/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    (
        "/v3/kv/lease/timetolive",
        "etcdserverpb.Lease",
        "LeaseTimeToLive",
    ),
    ("/v3/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    ("/v3/kv/lease/leases", "etcdserverpb.Lease", "LeaseLeases"),
    (
        "/v3/cluster/member/add",
        "etcdserverpb.Cluster",
        "MemberAdd",
    ),
    (
        "/v3/cluster/member/remove",
        "etcdserverpb.Cluster",
        "MemberRemove",
    ),
    (
        "/v3/cluster/member/update",
        "etcdserverpb.Cluster",
        "MemberUpdate",
    ),
    (
        "/v3/cluster/member/list",
        "etcdserverpb.Cluster",
        "MemberList",
    ),
    (
        "/v3/cluster/member/promote",
        "etcdserverpb.Cluster",
        "MemberPromote",
    ),
    ("/v3/maintenance/alarm", "etcdserverpb.Maintenance", "Alarm"),
    (
        "/v3/maintenance/status",
        "etcdserverpb.Maintenance",
        "Status",
    ),
    (
        "/v3/maintenance/defragment",
        "etcdserverpb.Maintenance",
        "Defragment",
    ),
    ("/v3/maintenance/hash", "etcdserverpb.Maintenance", "Hash"),
    (
        "/v3/maintenance/hashkv",
        "etcdserverpb.Maintenance",
        "HashKV",
    ),
    (
        "/v3/maintenance/snapshot",
        "etcdserverpb.Maintenance",
        "Snapshot",
    ),
    (
        "/v3/maintenance/transfer-leadership",
        "etcdserverpb.Maintenance",
        "MoveLeader",
    ),
    (
        "/v3/maintenance/downgrade",
        "etcdserverpb.Maintenance",
        "Downgrade",
    ),
    ("/v3/auth/enable", "etcdserverpb.Auth", "AuthEnable"),
    ("/v3/auth/disable", "etcdserverpb.Auth", "AuthDisable"),
    ("/v3/auth/status", "etcdserverpb.Auth", "AuthStatus"),
    ("/v3/auth/authenticate", "etcdserverpb.Auth", "Authenticate"),
    ("/v3/auth/user/add", "etcdserverpb.Auth", "UserAdd"),
    ("/v3/auth/user/get", "etcdserverpb.Auth", "UserGet"),
    ("/v3/auth/user/list", "etcdserverpb.Auth", "UserList"),
    ("/v3/auth/user/delete", "etcdserverpb.Auth", "UserDelete"),
    (
        "/v3/auth/user/changepw",
        "etcdserverpb.Auth",
        "UserChangePassword",
    ),
    ("/v3/auth/user/grant", "etcdserverpb.Auth", "UserGrantRole"),
    (
        "/v3/auth/user/revoke",
        "etcdserverpb.Auth",
        "UserRevokeRole",
    ),
    ("/v3/auth/role/add", "etcdserverpb.Auth", "RoleAdd"),
    ("/v3/auth/role/get", "etcdserverpb.Auth", "RoleGet"),
    ("/v3/auth/role/list", "etcdserverpb.Auth", "RoleList"),
    ("/v3/auth/role/delete", "etcdserverpb.Auth", "RoleDelete"),
    (
        "/v3/auth/role/grant",
        "etcdserverpb.Auth",
        "RoleGrantPermission",
    ),
    (
        "/v3/auth/role/revoke",
        "etcdserverpb.Auth",
        "RoleRevokePermission",
    ),
    ("/v3/lock/lock", "v3lockpb.Lock", "Lock"),
    ("/v3/lock/unlock", "v3lockpb.Lock", "Unlock"),
    ("/v3/election/campaign", "v3electionpb.Election", "Campaign"),
    ("/v3/election/proclaim", "v3electionpb.Election", "Proclaim"),
    ("/v3/election/leader", "v3electionpb.Election", "Leader"),
    ("/v3/election/observe", "v3electionpb.Election", "Observe"),
    ("/v3/election/resign", "v3electionpb.Election", "Resign"),
];

struct Gateway {
    grpc: tonic::service::Routes,
    /// Largest request body read for a unary call.
    max_body: usize,
}

#[derive(Clone)]
struct Route {
    gateway: Arc<Gateway>,
    method: MethodDescriptor,
}

/// The gateway's routes, calling the gRPC services in `grpc`.
pub fn router(grpc: tonic::service::Routes, max_body: usize) -> axum::Router {
    let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET)
        .expect("the descriptors compiled into the binary decode");
    let gateway = Arc::new(Gateway { grpc, max_body });
    let mut router = axum::Router::new();
    for (path, service, method) in ROUTES {
        // Routes of services whose protos we do not carry are left out (404).
        let Some(method) = pool
            .get_service_by_name(service)
            .and_then(|s| s.methods().find(|m| m.name() == *method))
        else {
            continue;
        };
        let route = Route {
            gateway: gateway.clone(),
            method,
        };
        // etcd's access controller rewrites `/v3beta/` to `/v3/` ("for backward
        // compatibilities"): both serve the same call.
        let beta = path.replacen("/v3/", "/v3beta/", 1);
        router = router
            .route(path, any(handle).with_state(route.clone()))
            .route(&beta, any(handle).with_state(route));
    }
    router
}

/// grpc-gateway's HTTP status for a gRPC code (`runtime.HTTPStatusFromCode`).
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::REQUEST_TIMEOUT,
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(code: Code, message: &str) -> Response {
    let body = serde_json::json!({"code": code as i32, "message": message}).to_string();
    (
        http_status(code),
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

fn json_options() -> SerializeOptions {
    SerializeOptions::new()
        .use_proto_field_name(true)
        .skip_default_fields(true)
        .stringify_64_bit_integers(true)
}

/// A gRPC message (protobuf bytes) as etcd's gateway JSON, fields in field-number order.
fn to_json(desc: &MessageDescriptor, bytes: &[u8]) -> Result<String, String> {
    let msg = DynamicMessage::decode(desc.clone(), bytes).map_err(|e| e.to_string())?;
    let mut ser = serde_json::Serializer::new(Vec::new());
    msg.serialize_with_options(&mut ser, &json_options())
        .map_err(|e| e.to_string())?;
    String::from_utf8(ser.into_inner()).map_err(|e| e.to_string())
}

/// A JSON request as a length-prefixed gRPC message.
fn to_frame(desc: &MessageDescriptor, json: serde_json::Value) -> Result<Bytes, String> {
    let msg =
        DynamicMessage::deserialize_with_options(desc.clone(), json, &DeserializeOptions::new())
            .map_err(|e| e.to_string())?;
    let payload = msg.encode_to_vec();
    let mut frame = BytesMut::with_capacity(5 + payload.len());
    frame.extend_from_slice(&[0]);
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    Ok(frame.freeze())
}

/// Splits complete length-prefixed gRPC messages off the front of `buf`.
fn take_messages(buf: &mut BytesMut) -> Vec<Bytes> {
    let mut out = Vec::new();
    while buf.len() >= 5 {
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if buf.len() < 5 + len {
            break;
        }
        buf.advance(5);
        out.push(buf.split_to(len).freeze());
    }
    out
}

/// `grpc-status` and the percent-decoded `grpc-message` of a header or trailer map.
fn grpc_status(h: &HeaderMap) -> Option<(Code, String)> {
    let code = h.get("grpc-status")?.to_str().ok()?.parse::<i32>().ok()?;
    let raw = h
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mut msg = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&raw[i + 1..i + 3], 16)
        {
            msg.push(v);
            i += 3;
            continue;
        }
        msg.push(b[i]);
        i += 1;
    }
    Some((Code::from(code), String::from_utf8_lossy(&msg).into_owned()))
}

type Frames = Pin<Box<dyn Stream<Item = Result<Bytes, std::io::Error>> + Send>>;

/// The JSON objects of a streaming request body, one gRPC message each; after the body ends the
/// stream stays open (the call ends when the HTTP client goes away), as etcd's gateway.
fn request_stream(body: Body, desc: MessageDescriptor) -> Frames {
    let data = body.into_data_stream();
    let state = (data, BytesMut::new(), false);
    let frames = futures::stream::unfold(state, move |(mut data, mut buf, mut done)| {
        let desc = desc.clone();
        async move {
            loop {
                // A complete JSON value at the front of the buffer?
                let mut it =
                    serde_json::Deserializer::from_slice(&buf).into_iter::<serde_json::Value>();
                match it.next() {
                    Some(Ok(v)) => {
                        let used = it.byte_offset();
                        buf.advance(used);
                        let item = to_frame(&desc, v).map_err(std::io::Error::other);
                        return Some((item, (data, buf, done)));
                    }
                    Some(Err(e)) if !e.is_eof() => {
                        return Some((
                            Err(std::io::Error::other(e.to_string())),
                            (data, BytesMut::new(), true),
                        ));
                    }
                    _ => {}
                }
                if done {
                    // Keep the call open until the client goes away.
                    futures::future::pending::<()>().await;
                }
                match data.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    _ => done = true,
                }
            }
        }
    });
    Box::pin(frames)
}

async fn handle(State(route): State<Route>, req: Request) -> Response {
    if req.method() != Method::POST {
        return error(Code::Unimplemented, "Method Not Allowed");
    }
    let method = &route.method;
    let input = method.input();
    let output = method.output();
    // The caller's credentials travel with the call: the `Authorization` header (etcd's
    // gateway passes it on as the `authorization` metadata) and the client certificate's name.
    let token = req.headers().get(header::AUTHORIZATION).cloned();
    let common_name = req
        .extensions()
        .get::<crate::tls::ClientCertCommonName>()
        .cloned();
    let body = if method.is_client_streaming() {
        Body::from_stream(request_stream(req.into_body(), input))
    } else {
        let bytes = match http_body_util::Limited::new(req.into_body(), route.gateway.max_body)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => return error(Code::InvalidArgument, &e.to_string()),
        };
        let json = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::json!({})
        } else {
            match serde_json::from_slice::<serde_json::Value>(&bytes) {
                Ok(v) => v,
                Err(e) => return error(Code::InvalidArgument, &e.to_string()),
            }
        };
        match to_frame(&input, json) {
            Ok(frame) => Body::from(frame),
            Err(e) => return error(Code::InvalidArgument, &e),
        }
    };
    let path = format!("/{}/{}", method.parent_service().full_name(), method.name());
    let mut grpc_req = http::Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::CONTENT_TYPE, "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("a valid request");
    if let Some(token) = token {
        grpc_req
            .headers_mut()
            .insert(crate::auth::TOKEN_HEADER, token);
    }
    if let Some(cn) = common_name {
        grpc_req.extensions_mut().insert(cn);
    }
    let mut svc = route.gateway.grpc.clone();
    let resp = match svc.call(grpc_req).await {
        Ok(r) => r,
        Err(e) => match e {},
    };
    let (parts, body) = resp.into_parts();
    if let Some((code, msg)) = grpc_status(&parts.headers)
        && code != Code::Ok
    {
        return error(code, &msg);
    }
    if method.is_server_streaming() {
        return stream_response(body, output);
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut status = None;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => return error(Code::Internal, &e.to_string()),
        };
        if let Some(t) = frame.trailers_ref() {
            status = grpc_status(t);
        } else if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
    match status {
        Some((Code::Ok, _)) | None => {}
        Some((code, msg)) => return error(code, &msg),
    }
    let Some(msg) = take_messages(&mut buf).into_iter().next() else {
        return error(Code::Internal, "no response message");
    };
    match to_json(&output, &msg) {
        Ok(v) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            v,
        )
            .into_response(),
        Err(e) => error(Code::Internal, &e),
    }
}

/// A server-streaming answer as newline-delimited `{"result": ...}` objects.
fn stream_response(body: tonic::body::Body, output: MessageDescriptor) -> Response {
    let state = (body, BytesMut::new(), false);
    let lines = futures::stream::unfold(state, move |(mut body, mut buf, mut ended)| {
        let output = output.clone();
        async move {
            loop {
                if ended {
                    return None;
                }
                if let Some(msg) = take_messages(&mut buf).into_iter().next() {
                    let line = match to_json(&output, &msg) {
                        Ok(v) => format!("{{\"result\":{v}}}"),
                        Err(e) => serde_json::json!({"error": {"code": Code::Internal as i32, "message": e}})
                            .to_string(),
                    };
                    return Some((
                        Ok::<_, Infallible>(Bytes::from(format!("{line}\n"))),
                        (body, buf, ended),
                    ));
                }
                match body.frame().await {
                    Some(Ok(frame)) => {
                        if let Some(t) = frame.trailers_ref() {
                            ended = true;
                            if let Some((code, msg)) = grpc_status(t)
                                && code != Code::Ok
                            {
                                let line = serde_json::json!({"error": {
                                    "grpc_code": code as i32,
                                    "http_code": http_status(code).as_u16(),
                                    "message": msg,
                                    "http_status": http_status(code)
                                        .canonical_reason()
                                        .unwrap_or(""),
                                }});
                                return Some((
                                    Ok(Bytes::from(format!("{line}\n"))),
                                    (body, buf, ended),
                                ));
                            }
                        } else if let Ok(data) = frame.into_data() {
                            buf.extend_from_slice(&data);
                        }
                    }
                    _ => ended = true,
                }
            }
        }
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(lines),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn every_route_names_a_known_method() {
        let pool = DescriptorPool::decode(crate::proto::FILE_DESCRIPTOR_SET).unwrap();
        for (path, service, method) in ROUTES {
            let found = pool
                .get_service_by_name(service)
                .is_some_and(|s| s.methods().any(|m| m.name() == *method));
            assert!(found, "{path}: {service}/{method} not in the descriptors");
        }
    }

    #[test]
    fn grpc_messages_are_percent_decoded() {
        let mut h = HeaderMap::new();
        h.insert("grpc-status", HeaderValue::from_static("3"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("etcdserver: key is not provided%21"),
        );
        assert_eq!(
            grpc_status(&h),
            Some((
                Code::InvalidArgument,
                "etcdserver: key is not provided!".into()
            ))
        );
    }
}
