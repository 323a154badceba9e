//! Key permissions: what a user may read and write, as etcd's `range_perm_cache.go` decides it.
//!
//! A user's permissions are the union of its roles' permissions, merged into sorted, disjoint
//! key intervals per kind (read, write; readwrite counts for both). A single-key request needs
//! its key inside one interval; a range request needs the whole range covered. A permission
//! with an empty range end covers one key; a range end of `"\0"` means every key from the start
//! key on. Pure functions of their inputs: the applier and the server's cache share them.

use crate::proto::authpb::{Permission, Role, User, permission::Type};

/// The upper end of an interval: a key (exclusive), or past every key.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum End {
    Key(Vec<u8>),
    Infinite,
}

/// A half-open key interval `[begin, end)`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Interval {
    begin: Vec<u8>,
    end: End,
}

/// The kind of access a request needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One user's merged permissions.
#[derive(Clone, Debug, Default)]
pub struct UserPerms {
    read: Vec<Interval>,
    write: Vec<Interval>,
}

/// `[key, key + "\0")`: the interval of exactly one key.
fn point(key: &[u8]) -> Interval {
    let mut end = key.to_vec();
    end.push(0);
    Interval {
        begin: key.to_vec(),
        end: End::Key(end),
    }
}

/// etcd's interval of a permission or request range: one key when `range_end` is empty, every
/// key from `key` on when it is `"\0"`, else `[key, range_end)`.
fn interval(key: &[u8], range_end: &[u8]) -> Interval {
    match range_end {
        [] => point(key),
        [0] => Interval {
            begin: key.to_vec(),
            end: End::Infinite,
        },
        end => Interval {
            begin: key.to_vec(),
            end: End::Key(end.to_vec()),
        },
    }
}

/// Sorts and merges overlapping or touching intervals.
fn merge(mut ivs: Vec<Interval>) -> Vec<Interval> {
    ivs.sort_by(|a, b| a.begin.cmp(&b.begin));
    let mut out: Vec<Interval> = Vec::with_capacity(ivs.len());
    for iv in ivs {
        if let Some(last) = out.last_mut() {
            let touches = match &last.end {
                End::Infinite => true,
                End::Key(e) => e.as_slice() >= iv.begin.as_slice(),
            };
            if touches {
                if iv.end > last.end {
                    last.end = iv.end;
                }
                continue;
            }
        }
        out.push(iv);
    }
    out
}

impl UserPerms {
    /// The merged permissions of `user`, whose roles are looked up with `role` (a role that
    /// no longer exists grants nothing).
    pub fn of(user: &User, mut role: impl FnMut(&str) -> Option<Role>) -> UserPerms {
        let mut read = Vec::new();
        let mut write = Vec::new();
        for name in &user.roles {
            let Some(r) = role(name) else { continue };
            for p in &r.key_permission {
                let iv = interval(&p.key, &p.range_end);
                match Type::try_from(p.perm_type) {
                    Ok(Type::Read) => read.push(iv),
                    Ok(Type::Write) => write.push(iv),
                    Ok(Type::Readwrite) => {
                        read.push(iv.clone());
                        write.push(iv);
                    }
                    Err(_) => {}
                }
            }
        }
        UserPerms {
            read: merge(read),
            write: merge(write),
        }
    }

    /// Whether `access` to `key` (one key when `range_end` is empty, else the range) is
    /// granted.
    pub fn allows(&self, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let set = match access {
            Access::Read => &self.read,
            Access::Write => &self.write,
        };
        let want = interval(key, range_end);
        if range_end.is_empty() {
            // etcd checks a single key as a point that must fall inside an interval.
            return set.iter().any(|iv| {
                iv.begin.as_slice() <= key
                    && match &iv.end {
                        End::Infinite => true,
                        End::Key(e) => key < e.as_slice(),
                    }
            });
        }
        set.iter()
            .any(|iv| iv.begin <= want.begin && iv.end >= want.end)
    }
}

/// etcd's `isValidPermissionRange`: a non-empty key, and a range end that is empty, `"\0"`,
/// or after the key.
pub fn valid_permission_range(p: &Permission) -> bool {
    if p.key.is_empty() {
        return false;
    }
    p.range_end.is_empty() || p.range_end == [0] || p.key < p.range_end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(t: Type, key: &str, end: &str) -> Permission {
        Permission {
            perm_type: t as i32,
            key: key.into(),
            range_end: end.into(),
        }
    }

    fn perms(ps: Vec<Permission>) -> UserPerms {
        let user = User {
            roles: vec!["r".into()],
            ..Default::default()
        };
        UserPerms::of(&user, |_| {
            Some(Role {
                name: b"r".to_vec(),
                key_permission: ps.clone(),
            })
        })
    }

    struct TestCase {
        access: Access,
        key: &'static str,
        end: &'static str,
        allowed: bool,
    }

    #[test]
    fn keys_ranges_prefixes_and_from_key() {
        let p = perms(vec![
            perm(Type::Read, "a", ""),
            perm(Type::Readwrite, "foo", "fop"),
            perm(Type::Write, "m", "p"),
            perm(Type::Write, "p", "q"),
            perm(Type::Read, "x", "\0"),
        ]);
        let cases = [
            TestCase {
                access: Access::Read,
                key: "a",
                end: "",
                allowed: true,
            },
            TestCase {
                access: Access::Write,
                key: "a",
                end: "",
                allowed: false,
            },
            TestCase {
                access: Access::Read,
                key: "ab",
                end: "",
                allowed: false,
            },
            TestCase {
                access: Access::Read,
                key: "a",
                end: "a\0",
                allowed: true,
            },
            TestCase {
                access: Access::Read,
                key: "a",
                end: "b",
                allowed: false,
            },
            TestCase {
                access: Access::Read,
                key: "foo/x",
                end: "",
                allowed: true,
            },
            TestCase {
                access: Access::Write,
                key: "foo",
                end: "fop",
                allowed: true,
            },
            TestCase {
                access: Access::Write,
                key: "foo",
                end: "foq",
                allowed: false,
            },
            // Touching intervals merge: [m, p) and [p, q) cover [m, q).
            TestCase {
                access: Access::Write,
                key: "m",
                end: "q",
                allowed: true,
            },
            TestCase {
                access: Access::Write,
                key: "n",
                end: "\0",
                allowed: false,
            },
            TestCase {
                access: Access::Read,
                key: "x",
                end: "\0",
                allowed: true,
            },
            TestCase {
                access: Access::Read,
                key: "zzz",
                end: "",
                allowed: true,
            },
            TestCase {
                access: Access::Read,
                key: "\0",
                end: "\0",
                allowed: false,
            },
        ];
        for c in cases {
            assert_eq!(
                p.allows(c.access, c.key.as_bytes(), c.end.as_bytes()),
                c.allowed,
                "{:?} {:?}..{:?}",
                c.access,
                c.key,
                c.end
            );
        }
    }

    #[test]
    fn permission_ranges_are_validated_as_etcd() {
        assert!(valid_permission_range(&perm(Type::Read, "a", "")));
        assert!(valid_permission_range(&perm(Type::Read, "a", "\0")));
        assert!(valid_permission_range(&perm(Type::Read, "a", "b")));
        assert!(!valid_permission_range(&perm(Type::Read, "b", "a")));
        assert!(!valid_permission_range(&perm(Type::Read, "a", "a")));
        assert!(!valid_permission_range(&perm(Type::Read, "", "")));
    }
}
