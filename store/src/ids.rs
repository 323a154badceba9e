//! Member and cluster ids, derived exactly as etcd derives them, so a concord cluster started
//! with the same flags as an etcd cluster reports the same ids.
//!
//! Member id: the first 8 bytes (big-endian) of SHA-1 over the member's sorted peer URLs
//! concatenated, followed by the cluster token (and, for members added at runtime, the Unix
//! time). Cluster id: the first 8 bytes of SHA-1 over the sorted member ids, each 8 bytes
//! big-endian.

use sha1::{Digest, Sha1};

fn first_u64(bytes: &[u8]) -> u64 {
    let digest = Sha1::digest(bytes);
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(b)
}

/// Formats a URL as Go's `url.URL.String()` does for etcd's peer URLs (no trailing slash).
pub fn url_string(u: &url::Url) -> String {
    let mut s = format!("{}://", u.scheme());
    if let Some(h) = u.host_str() {
        s.push_str(h);
    }
    if let Some(p) = u.port() {
        s.push_str(&format!(":{p}"));
    }
    if u.path() != "/" {
        s.push_str(u.path());
    }
    s
}

/// etcd's `computeMemberId`.
pub fn member_id(peer_urls: &[String], token: &str, unix_time: Option<i64>) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut b = urls.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    if let Some(t) = unix_time {
        b.extend_from_slice(t.to_string().as_bytes());
    }
    first_u64(&b)
}

/// etcd's `RaftCluster.genID`.
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort_unstable();
    let b: Vec<u8> = ids.iter().flat_map(|id| id.to_be_bytes()).collect();
    first_u64(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_etcd_member_has_the_well_known_ids() {
        // `etcd` with no flags reports member 8e9e05c52164694d in cluster cdf818194e3a8c32.
        let m = member_id(&["http://localhost:2380".into()], "etcd-cluster", None);
        assert_eq!(format!("{m:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[m])), "cdf818194e3a8c32");
    }

    #[test]
    fn url_string_matches_go() {
        let u = url::Url::parse("http://127.0.0.1:2380").unwrap();
        assert_eq!(url_string(&u), "http://127.0.0.1:2380");
    }
}
