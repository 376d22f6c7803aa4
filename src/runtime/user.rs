//! Resolution of an image's `User` into the numeric uid, gid and additional gids of the OCI
//! `process.user`, the way runc and containerd do it.
//!
//! Owns: parsing `/etc/passwd` and `/etc/group` text, and the lookup rules for the image config
//! `User` forms `""`, `name`, `uid`, `name:group`, `uid:gid`, `uid:groupname`, `name:gid`.
//! Never does: I/O. The caller reads `<rootfs>/etc/passwd` and `<rootfs>/etc/group` (either may be
//! missing: pass `None`) and hands the text in, so the rules are testable without a rootfs.
//!
//! Rules (runc `user.GetExecUser`, containerd `WithUser`/`WithAdditionalGIDs`):
//! - `""` means root, 0:0.
//! - A numeric uid need not exist in `/etc/passwd`; its gid is then 0 unless one is given. When it
//!   does exist, the entry's gid is the default and its name selects additional groups.
//! - A user or group *name* that cannot be found is an error naming it.
//! - Additional gids: the groups in `/etc/group` whose member list names the user, in file order,
//!   then `extra_gids` (the pod's `supplementalGroups`), without duplicates. The primary gid is not
//!   added implicitly.
//! - Malformed lines in `/etc/passwd`/`/etc/group` are skipped, as libc and runc do.

use std::fmt;

use super::spec::User;

/// One parsed `/etc/passwd` line: `name:password:uid:gid:gecos:home:shell`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

/// One parsed `/etc/group` line: `name:password:gid:member,member`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    pub name: String,
    pub gid: u32,
    pub members: Vec<String>,
}

/// Why an image `User` cannot be resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// The spec has an empty side (`":0"`, `"app:"`) or more than one `:`.
    Malformed { spec: String },
    /// A numeric uid or gid does not fit in 32 bits.
    IdOutOfRange { spec: String, id: String },
    /// A user name is not in `/etc/passwd` (or the image has no `/etc/passwd`).
    UnknownUser { spec: String, name: String },
    /// A group name is not in `/etc/group` (or the image has no `/etc/group`).
    UnknownGroup { spec: String, name: String },
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::Malformed { spec } => write!(
                f,
                "user {spec:?}: malformed: want \"\", \"user\" or \"user:group\" (names or numbers)"
            ),
            UserError::IdOutOfRange { spec, id } => {
                write!(f, "user {spec:?}: id {id} is out of range (max 4294967295)")
            }
            UserError::UnknownUser { spec, name } => {
                write!(f, "user {spec:?}: no user named {name:?} in /etc/passwd")
            }
            UserError::UnknownGroup { spec, name } => {
                write!(f, "user {spec:?}: no group named {name:?} in /etc/group")
            }
        }
    }
}

impl std::error::Error for UserError {}

/// Parses `/etc/passwd` text; comments, blank and malformed lines are skipped.
pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 || f[0].is_empty() {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f.get(5).copied().unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Parses `/etc/group` text; comments, blank and malformed lines are skipped.
pub fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 3 || f[0].is_empty() {
                return None;
            }
            let members = f
                .get(3)
                .copied()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty())
                .map(str::to_string)
                .collect();
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members,
            })
        })
        .collect()
}

/// A side of a `user:group` spec: a number, or a name to look up.
enum Id<'a> {
    Numeric(u32),
    Name(&'a str),
}

fn parse_id<'a>(spec: &str, s: &'a str) -> Result<Id<'a>, UserError> {
    if s.is_empty() {
        return Err(UserError::Malformed {
            spec: spec.to_string(),
        });
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse()
            .map(Id::Numeric)
            .map_err(|_| UserError::IdOutOfRange {
                spec: spec.to_string(),
                id: s.to_string(),
            });
    }
    Ok(Id::Name(s))
}

/// Resolves an image config `User` against the image's `/etc/passwd` and `/etc/group` text.
pub fn resolve_user(
    spec: &str,
    passwd: Option<&str>,
    group: Option<&str>,
    extra_gids: &[u32],
) -> Result<User, UserError> {
    let users = passwd.map(parse_passwd).unwrap_or_default();
    let groups = group.map(parse_group).unwrap_or_default();

    let (user_part, group_part) = match spec.split_once(':') {
        _ if spec.is_empty() => ("0", None),
        Some((_, g)) if g.contains(':') => {
            return Err(UserError::Malformed {
                spec: spec.to_string(),
            });
        }
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };

    // The passwd entry, when there is one, supplies the default gid and the name that
    // `/etc/group` member lists refer to.
    let (uid, entry) = match parse_id(spec, user_part)? {
        Id::Numeric(uid) => (uid, users.iter().find(|u| u.uid == uid)),
        Id::Name(name) => match users.iter().find(|u| u.name == name) {
            Some(u) => (u.uid, Some(u)),
            None => {
                return Err(UserError::UnknownUser {
                    spec: spec.to_string(),
                    name: name.to_string(),
                });
            }
        },
    };

    let gid = match group_part.map(|g| parse_id(spec, g)).transpose()? {
        Some(Id::Numeric(gid)) => gid,
        Some(Id::Name(name)) => match groups.iter().find(|g| g.name == name) {
            Some(g) => g.gid,
            None => {
                return Err(UserError::UnknownGroup {
                    spec: spec.to_string(),
                    name: name.to_string(),
                });
            }
        },
        None => entry.map_or(0, |u| u.gid),
    };

    let mut additional_gids: Vec<u32> = Vec::new();
    let member_of = entry.map(|u| u.name.as_str());
    let from_group_file = groups
        .iter()
        .filter(|g| member_of.is_some_and(|name| g.members.iter().any(|m| m == name)))
        .map(|g| g.gid);
    for g in from_group_file.chain(extra_gids.iter().copied()) {
        if !additional_gids.contains(&g) {
            additional_gids.push(g);
        }
    }

    Ok(User {
        uid,
        gid,
        additional_gids,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment

daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1000:App:/home/app:/bin/sh
broken line without colons
bad:x:notanumber:1:::
nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin
";

    const GROUP: &str = "\
root:x:0:
daemon:x:1:
wheel:x:10:root,app
audio:x:29: app , other
app:x:1000:
video:x:44:other
nogroup:x:65534:
";

    fn user(uid: u32, gid: u32, additional_gids: &[u32]) -> User {
        User {
            uid,
            gid,
            additional_gids: additional_gids.to_vec(),
        }
    }

    #[test]
    fn resolves_like_runc() {
        let p = Some(PASSWD);
        let g = Some(GROUP);
        type Case<'a> = (&'a str, Option<&'a str>, Option<&'a str>, &'a [u32], User);
        #[rustfmt::skip]
        let cases: &[Case] = &[
            // spec, passwd, group, extra gids, want
            ("", p, g, &[], user(0, 0, &[10])),
            ("", None, None, &[], user(0, 0, &[])),
            ("app", p, g, &[], user(1000, 1000, &[10, 29])),
            ("1000", p, g, &[], user(1000, 1000, &[10, 29])),
            ("4242", p, g, &[], user(4242, 0, &[])),
            ("4242", None, None, &[], user(4242, 0, &[])),
            ("4242:7", None, None, &[], user(4242, 7, &[])),
            ("app:video", p, g, &[], user(1000, 44, &[10, 29])),
            ("app:5", p, g, &[], user(1000, 5, &[10, 29])),
            ("1000:audio", p, g, &[], user(1000, 29, &[10, 29])),
            ("nobody", p, g, &[], user(65534, 65534, &[])),
            (
                "nobody",
                p,
                g,
                &[3000, 3000, 4000],
                user(65534, 65534, &[3000, 4000]),
            ),
            ("app", p, g, &[29, 5000], user(1000, 1000, &[10, 29, 5000])),
            ("4294967295", None, None, &[], user(u32::MAX, 0, &[])),
        ];
        for (spec, passwd, group, extra, want) in cases {
            let got = resolve_user(spec, *passwd, *group, extra);
            assert_eq!(got.as_ref(), Ok(want), "spec {spec:?}");
        }
    }

    #[test]
    fn rejects_unknown_names_and_bad_specs() {
        let cases: &[(&str, Option<&str>, Option<&str>, &str)] = &[
            (
                "ghost",
                Some(PASSWD),
                Some(GROUP),
                "user \"ghost\": no user named \"ghost\" in /etc/passwd",
            ),
            (
                "app",
                None,
                None,
                "user \"app\": no user named \"app\" in /etc/passwd",
            ),
            (
                "app:ghosts",
                Some(PASSWD),
                Some(GROUP),
                "user \"app:ghosts\": no group named \"ghosts\" in /etc/group",
            ),
            (
                "0:wheel",
                Some(PASSWD),
                None,
                "user \"0:wheel\": no group named \"wheel\" in /etc/group",
            ),
            (
                "4294967296",
                None,
                None,
                "user \"4294967296\": id 4294967296 is out of range (max 4294967295)",
            ),
            (
                "0:99999999999",
                None,
                None,
                "user \"0:99999999999\": id 99999999999 is out of range (max 4294967295)",
            ),
            (
                ":0",
                None,
                None,
                "user \":0\": malformed: want \"\", \"user\" or \"user:group\" (names or numbers)",
            ),
            (
                "app:",
                Some(PASSWD),
                None,
                "user \"app:\": malformed: want \"\", \"user\" or \"user:group\" (names or numbers)",
            ),
            (
                "1:2:3",
                None,
                None,
                "user \"1:2:3\": malformed: want \"\", \"user\" or \"user:group\" (names or numbers)",
            ),
        ];
        for (spec, passwd, group, want) in cases {
            match resolve_user(spec, *passwd, *group, &[]) {
                Ok(u) => panic!("spec {spec:?}: want error {want:?}, got {u:?}"),
                Err(e) => assert_eq!(e.to_string(), *want, "spec {spec:?}"),
            }
        }
    }

    #[test]
    fn parses_passwd_and_group_skipping_malformed_lines() {
        let users = parse_passwd(PASSWD);
        let names: Vec<&str> = users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["root", "daemon", "app", "nobody"]);
        assert_eq!(
            users[2],
            PasswdEntry {
                name: "app".into(),
                uid: 1000,
                gid: 1000,
                home: "/home/app".into()
            }
        );

        let groups = parse_group(GROUP);
        assert_eq!(groups.len(), 7);
        assert_eq!(
            groups[3],
            GroupEntry {
                name: "audio".into(),
                gid: 29,
                members: vec!["app".into(), "other".into()]
            }
        );
        assert!(groups[0].members.is_empty());
        // A group line without the member field is still a group.
        assert_eq!(parse_group("g:x:5").first().map(|g| g.gid), Some(5));
    }
}
