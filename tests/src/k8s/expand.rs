//! Pure string rewrites the stand-in node applies to a container's command, args and env:
//! Kubernetes' `$(VAR)` expansion, mount-path to host-dir rewriting, and `0.0.0.0` to the pod's
//! own address (the stand-in for a pod network namespace). No I/O here.

use std::collections::HashMap;

/// Expands `$(NAME)` references in `input` the way the kubelet does for command, args and env
/// values: a defined `NAME` is replaced by its value, an undefined one is left as `$(NAME)`, `$$`
/// is an escaped `$` (so `$$(NAME)` yields the literal `$(NAME)`), and a `$` that starts no
/// reference (`$X`, a trailing `$`, an unclosed `$(`) is kept as written.
pub fn expand_vars(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        match after.chars().next() {
            None => {
                out.push('$');
                rest = after;
            }
            Some('$') => {
                out.push('$');
                rest = &after[1..];
            }
            Some('(') => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(v) => out.push_str(&v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            Some(c) => {
                out.push('$');
                out.push(c);
                rest = &after[c.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// Builds a container's environment in the kubelet's order: `base` first (e.g. from `envFrom`,
/// already resolved), then each `(name, value)` of `env` in order, each value expanded against the
/// variables defined before it. Later definitions replace earlier ones.
pub fn build_env(base: Vec<(String, String)>, env: Vec<(String, String)>) -> Vec<(String, String)> {
    let mut order: Vec<String> = Vec::new();
    let mut values: HashMap<String, String> = HashMap::new();
    let set =
        |values: &mut HashMap<String, String>, order: &mut Vec<String>, name: String, value| {
            if values.insert(name.clone(), value).is_none() {
                order.push(name);
            }
        };
    for (k, v) in base {
        set(&mut values, &mut order, k, v);
    }
    for (k, v) in env {
        let expanded = expand_vars(&v, |n| values.get(n).cloned());
        set(&mut values, &mut order, k, expanded);
    }
    order
        .into_iter()
        .map(|k| {
            let v = values[&k].clone();
            (k, v)
        })
        .collect()
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/')
}

/// Replaces every occurrence of a container `mount_path` in `s` by its `host_path`, where the
/// occurrence is a whole path prefix: not preceded by a path character, and followed by the end,
/// a `/` or a non-path character. Longer mount paths win over shorter ones they contain.
pub fn rewrite_mount_paths(s: &str, mounts: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = mounts
        .iter()
        .filter(|(m, _)| !m.is_empty() && m != "/")
        .collect();
    sorted.sort_by_key(|(m, _)| std::cmp::Reverse(m.len()));
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    'outer: while i < s.len() {
        let prev = s[..i].chars().next_back();
        if prev.is_none_or(|c| !is_path_char(c)) {
            for (mount, host) in &sorted {
                let mount = mount.trim_end_matches('/');
                if s[i..].starts_with(mount) {
                    let next = s[i + mount.len()..].chars().next();
                    if next.is_none_or(|c| c == '/' || !is_path_char(c)) {
                        out.push_str(host.trim_end_matches('/'));
                        i += mount.len();
                        continue 'outer;
                    }
                }
            }
        }
        let c = s[i..]
            .chars()
            .next()
            .expect("i is a char boundary below len");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Replaces the wildcard address `0.0.0.0` (as a whole address, not part of a longer number) by
/// `ip`: inside a pod, listening on all interfaces means listening on the pod's own address.
pub fn rewrite_any_address(s: &str, ip: &str) -> String {
    const ANY: &str = "0.0.0.0";
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i..].starts_with(ANY) {
            let prev = s[..i].chars().next_back();
            let next = s[i + ANY.len()..].chars().next();
            let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_digit() || c == '.'));
            if boundary(prev) && boundary(next) {
                out.push_str(ip);
                i += ANY.len();
                continue;
            }
        }
        let c = s[i..].chars().next().expect("char boundary");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestCase {
        input: &'static str,
        want: &'static str,
    }

    #[test]
    fn expands_like_the_kubelet() {
        let vars: HashMap<&str, &str> = [("POD", "m-0"), ("NS", "db"), ("EMPTY", "")].into();
        let lookup = |n: &str| vars.get(n).map(|v| v.to_string());
        let cases = [
            TestCase {
                input: "plain",
                want: "plain",
            },
            TestCase {
                input: "$(POD)",
                want: "m-0",
            },
            TestCase {
                input: "http://$(POD).x.$(NS).svc:2380",
                want: "http://m-0.x.db.svc:2380",
            },
            TestCase {
                input: "$(MISSING)",
                want: "$(MISSING)",
            },
            TestCase {
                input: "$$(POD)",
                want: "$(POD)",
            },
            TestCase {
                input: "$$$(POD)",
                want: "$m-0",
            },
            TestCase {
                input: "a$$b",
                want: "a$b",
            },
            TestCase {
                input: "$(EMPTY)x",
                want: "x",
            },
            TestCase {
                input: "cost $5",
                want: "cost $5",
            },
            TestCase {
                input: "end$",
                want: "end$",
            },
            TestCase {
                input: "$(POD",
                want: "$(POD",
            },
            TestCase {
                input: "$()",
                want: "$()",
            },
            TestCase {
                input: "é$(POD)é",
                want: "ém-0é",
            },
        ];
        for c in cases {
            assert_eq!(expand_vars(c.input, lookup), c.want, "input {:?}", c.input);
        }
    }

    #[test]
    fn env_values_see_only_earlier_variables() {
        let env = build_env(
            vec![("FROM_CM".into(), "cm".into())],
            vec![
                ("A".into(), "a-$(FROM_CM)".into()),
                ("B".into(), "$(A)-$(C)".into()),
                ("C".into(), "c".into()),
                ("A".into(), "again".into()),
            ],
        );
        assert_eq!(
            env,
            vec![
                ("FROM_CM".to_string(), "cm".to_string()),
                ("A".to_string(), "again".to_string()),
                ("B".to_string(), "a-cm-$(C)".to_string()),
                ("C".to_string(), "c".to_string()),
            ]
        );
    }

    #[test]
    fn rewrites_whole_mount_paths_only() {
        let mounts = vec![
            ("/var/lib/etcd".to_string(), "/tmp/n/pvc/data".to_string()),
            ("/var/lib/etcd/wal".to_string(), "/tmp/n/wal".to_string()),
            ("/etc/conf/".to_string(), "/tmp/n/conf".to_string()),
        ];
        let cases = [
            TestCase {
                input: "--data-dir=/var/lib/etcd",
                want: "--data-dir=/tmp/n/pvc/data",
            },
            TestCase {
                input: "/var/lib/etcd/member",
                want: "/tmp/n/pvc/data/member",
            },
            TestCase {
                input: "/var/lib/etcd/wal/0",
                want: "/tmp/n/wal/0",
            },
            TestCase {
                input: "/var/lib/etcdx",
                want: "/var/lib/etcdx",
            },
            TestCase {
                input: "/opt/var/lib/etcd",
                want: "/opt/var/lib/etcd",
            },
            TestCase {
                input: "a:/etc/conf/x.yaml",
                want: "a:/tmp/n/conf/x.yaml",
            },
            TestCase {
                input: "/etc/conf",
                want: "/tmp/n/conf",
            },
        ];
        for c in cases {
            assert_eq!(
                rewrite_mount_paths(c.input, &mounts),
                c.want,
                "input {:?}",
                c.input
            );
        }
    }

    #[test]
    fn rewrites_the_wildcard_address() {
        let cases = [
            TestCase {
                input: "http://0.0.0.0:2379",
                want: "http://127.1.2.3:2379",
            },
            TestCase {
                input: "0.0.0.0",
                want: "127.1.2.3",
            },
            TestCase {
                input: "10.0.0.0.1",
                want: "10.0.0.0.1",
            },
            TestCase {
                input: "a,http://0.0.0.0:1,b",
                want: "a,http://127.1.2.3:1,b",
            },
            TestCase {
                input: "100.0.0.0",
                want: "100.0.0.0",
            },
        ];
        for c in cases {
            assert_eq!(
                rewrite_any_address(c.input, "127.1.2.3"),
                c.want,
                "input {:?}",
                c.input
            );
        }
    }
}
