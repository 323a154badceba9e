//! Network faults for tests: a member started with `CONCORD_PEER_FAULTS=<file>` treats the
//! peers whose peer URLs are listed in that file (whitespace-separated, e.g.
//! `http://127.0.0.5:2380`) as cut off. The transport drops every raft message to them (as a
//! dead network would) and refuses to forward lease requests to them. Writing the file on every
//! member of a cluster partitions it; emptying the files heals it. The file is re-read at most
//! every [`RECHECK`].
//!
//! Without the variable (every production start) this is one `None` check per send.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The environment variable naming the fault file.
pub const ENV: &str = "CONCORD_PEER_FAULTS";
/// How often the fault file is re-read.
const RECHECK: Duration = Duration::from_millis(100);

/// The peer URLs this member is cut off from, kept in step with the fault file.
pub struct PeerFaults {
    path: PathBuf,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    checked: Option<Instant>,
    cut: HashSet<String>,
}

impl PeerFaults {
    /// The faults named by [`ENV`], if it is set.
    pub fn from_env() -> Option<PeerFaults> {
        let path = std::env::var_os(ENV)?;
        tracing::warn!(file = %PathBuf::from(&path).display(), "peer fault injection is enabled ({ENV}); this is for tests only");
        Some(PeerFaults {
            path: path.into(),
            state: Mutex::default(),
        })
    }

    /// Whether a member reached at `urls` is cut off from this one now.
    pub fn is_cut(&self, urls: &[String]) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let now = Instant::now();
        if st.checked.is_none_or(|t| now.duration_since(t) >= RECHECK) {
            st.checked = Some(now);
            let cut: HashSet<String> = std::fs::read_to_string(&self.path)
                .unwrap_or_default()
                .split_whitespace()
                .map(|u| u.trim_end_matches('/').to_owned())
                .collect();
            if cut != st.cut {
                tracing::warn!(cut_off = ?cut, "peer faults changed");
                st.cut = cut;
            }
        }
        urls.iter()
            .any(|u| st.cut.contains(u.trim_end_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("faults");
        let f = PeerFaults {
            path: path.clone(),
            state: Mutex::default(),
        };
        let a = vec!["http://127.0.0.2:2380".to_owned()];
        assert!(!f.is_cut(&a), "no file: nothing is cut");
        std::fs::write(&path, "http://127.0.0.2:2380/\nhttp://127.0.0.3:2380").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(20));
        assert!(f.is_cut(&a));
        assert!(!f.is_cut(&["http://127.0.0.4:2380".to_owned()]));
        std::fs::write(&path, "").unwrap();
        std::thread::sleep(RECHECK + Duration::from_millis(20));
        assert!(!f.is_cut(&a), "emptied file heals");
    }
}
