//! Escape, replacement and whiteout cases for [`Unpacker`], with layers built in memory.
//! Every case also checks that nothing outside the rootfs changed.

use super::*;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;

#[derive(Clone, Copy)]
enum E<'a> {
    File(&'a str, &'a [u8]),
    Dir(&'a str),
    Sym(&'a str, &'a str),
    Link(&'a str, &'a str),
    /// A regular file or directory (`kind`) with a given mode.
    Mode(&'a str, tar::EntryType, u32),
    /// A FIFO, character or block device (major 1, minor 3: /dev/null).
    Node(&'a str, tar::EntryType),
    /// An entry whose header name is `header` but whose PAX `path` (and `linkpath`,
    /// when given) say otherwise; `kind` is the entry type.
    Pax(&'a str, &'a [u8], tar::EntryType, Option<&'a [u8]>),
    /// A GNU long-name (`L`) entry, then an entry of `kind` named "short", with a GNU
    /// long-link (`K`) entry first when a target is given.
    Gnu(&'a [u8], tar::EntryType, Option<&'a [u8]>),
    /// A regular file with PAX records (key, value).
    PaxRecords(&'a str, &'a [(&'a str, &'a [u8])]),
}

fn header(
    path: &[u8],
    kind: tar::EntryType,
    size: u64,
    mode: u32,
    link: Option<&[u8]>,
) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(1_000_000);
    h.set_uid(0);
    h.set_gid(0);
    let n = path.len().min(100);
    h.as_old_mut().name[..n].copy_from_slice(&path[..n]);
    if let Some(t) = link {
        let n = t.len().min(100);
        h.as_old_mut().linkname[..n].copy_from_slice(&t[..n]);
    }
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    h
}

/// One PAX record: "<len> <key>=<value>\n", the length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

fn append_pax(b: &mut tar::Builder<Vec<u8>>, records: &[(&str, &[u8])]) {
    let data: Vec<u8> = records.iter().flat_map(|(k, v)| pax_record(k, v)).collect();
    let h = header(
        b"PaxHeaders/x",
        tar::EntryType::XHeader,
        data.len() as u64,
        0o644,
        None,
    );
    b.append(&h, data.as_slice()).unwrap();
}

/// A tar layer; names are written raw into the header so `..` and `/` reach the unpacker.
fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (path, data, kind, mode, link): (&[u8], &[u8], _, u32, Option<&[u8]>) = match *e {
            E::File(p, d) => (p.as_bytes(), d, tar::EntryType::Regular, 0o644, None),
            E::Dir(p) => (p.as_bytes(), b"", tar::EntryType::Directory, 0o755, None),
            E::Sym(p, t) => (
                p.as_bytes(),
                b"",
                tar::EntryType::Symlink,
                0o777,
                Some(t.as_bytes()),
            ),
            E::Link(p, t) => (
                p.as_bytes(),
                b"",
                tar::EntryType::Link,
                0o644,
                Some(t.as_bytes()),
            ),
            E::Mode(p, kind, mode) => {
                let data: &[u8] = if kind == tar::EntryType::Regular {
                    b"m"
                } else {
                    b""
                };
                (p.as_bytes(), data, kind, mode, None)
            }
            E::Node(p, kind) => (p.as_bytes(), b"", kind, 0o666, None),
            E::Pax(h, pax_path, kind, pax_link) => {
                let mut records: Vec<(&str, &[u8])> = vec![("path", pax_path)];
                if let Some(l) = pax_link {
                    records.push(("linkpath", l));
                }
                append_pax(&mut b, &records);
                let data: &[u8] = if kind == tar::EntryType::Regular {
                    b"pax"
                } else {
                    b""
                };
                (
                    h.as_bytes(),
                    data,
                    kind,
                    0o644,
                    pax_link.map(|_| &b"placeholder"[..]),
                )
            }
            E::Gnu(long, kind, long_link) => {
                let mut name = long.to_vec();
                name.push(0);
                let mut h = header(
                    b"././@LongLink",
                    tar::EntryType::GNULongName,
                    name.len() as u64,
                    0o644,
                    None,
                );
                h.set_cksum();
                b.append(&h, name.as_slice()).unwrap();
                if let Some(t) = long_link {
                    let mut t = t.to_vec();
                    t.push(0);
                    let h = header(
                        b"././@LongLink",
                        tar::EntryType::GNULongLink,
                        t.len() as u64,
                        0o644,
                        None,
                    );
                    b.append(&h, t.as_slice()).unwrap();
                }
                let data: &[u8] = if kind == tar::EntryType::Regular {
                    b"gnu"
                } else {
                    b""
                };
                (
                    &b"short"[..],
                    data,
                    kind,
                    0o644,
                    long_link.map(|_| &b"placeholder"[..]),
                )
            }
            E::PaxRecords(p, records) => {
                append_pax(&mut b, records);
                (p.as_bytes(), b"x", tar::EntryType::Regular, 0o644, None)
            }
        };
        let h = header(path, kind, data.len() as u64, mode, link);
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

struct Fixture {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    root: PathBuf,
    outside: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().to_path_buf();
        let root = base.join("root");
        let outside = base.join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), "keep").unwrap();
        Fixture {
            _tmp: tmp,
            base,
            root,
            outside,
        }
    }

    fn unpack(&self, layers: &[Vec<u8>], limits: Limits) -> Result<(), Error> {
        let mut u = Unpacker::new(&self.root, limits)?;
        for l in layers {
            u.apply_layer(l.as_slice())?;
        }
        Ok(())
    }

    /// The absolute path of the directory outside the rootfs, for symlink targets.
    fn out(&self) -> String {
        self.outside.to_string_lossy().into_owned()
    }

    fn assert_outside_untouched(&self) {
        let mut top: Vec<_> = fs::read_dir(&self.base)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        top.sort();
        assert_eq!(top, ["outside", "root"]);
        let names: Vec<_> = fs::read_dir(&self.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["secret"]);
        assert_eq!(
            fs::read_to_string(self.outside.join("secret")).unwrap(),
            "keep"
        );
        let meta = fs::symlink_metadata(self.outside.join("secret")).unwrap();
        assert_eq!(meta.nlink(), 1, "secret was hardlinked into the rootfs");
    }
}

enum Want {
    Ok,
    Err(&'static str),
}

struct Case {
    name: &'static str,
    layers: Vec<Vec<u8>>,
    want: Want,
    /// A regular file the unpack must have produced inside the rootfs, and its content.
    check: Option<(&'static str, &'static str)>,
    /// A path inside the rootfs and the permission bits it must have.
    mode: Option<(&'static str, u32)>,
    /// A path that must not exist inside the rootfs afterwards.
    absent: Option<&'static str>,
}

/// The cases, with `out` the absolute path of the fixture's directory outside the rootfs.
fn escape_cases(out: &str) -> Vec<Case> {
    let out_secret = format!("{out}/secret");
    let out = out.to_string();
    let long_name = "n".repeat(256);
    let max_name = "n".repeat(255);
    let long_path = "d/".repeat(2100) + "f";
    let rel_out = format!("../../../../../../../..{out}");
    type Row = (
        &'static str,
        Vec<Vec<u8>>,
        Want,
        Option<(&'static str, &'static str)>,
    );
    let cases: Vec<Row> = vec![
        (
            "dotdot file",
            vec![layer(&[E::File("../x", b"x")])],
            Want::Err("path contains \"..\""),
            None,
        ),
        (
            "dotdot in the middle",
            vec![layer(&[E::File("a/../../x", b"x")])],
            Want::Err("path contains \"..\""),
            None,
        ),
        (
            "absolute path lands inside",
            vec![layer(&[E::File("/abs/f", b"in")])],
            Want::Ok,
            Some(("abs/f", "in")),
        ),
        (
            "absolute symlink then file through it",
            vec![layer(&[E::Sym("evil", &out), E::File("evil/pwned", b"x")])],
            Want::Err("a parent is a dangling symlink"),
            None,
        ),
        (
            "relative symlink then file through it",
            vec![layer(&[
                E::Sym("evil", "../outside"),
                E::File("evil/pwned", b"x"),
            ])],
            Want::Err("a parent is a dangling symlink"),
            None,
        ),
        (
            "symlink chain out is clamped to the rootfs",
            vec![layer(&[
                E::Sym("a", "b"),
                E::Sym("b", "../../../.."),
                E::File("a/pwned", b"c"),
            ])],
            Want::Ok,
            Some(("pwned", "c")),
        ),
        (
            "symlink to / in an earlier layer",
            vec![
                layer(&[E::Sym("lnk", "/")]),
                layer(&[E::File("lnk/etc/x", b"y")]),
            ],
            Want::Ok,
            Some(("etc/x", "y")),
        ),
        (
            "hardlink with dotdot",
            vec![layer(&[E::Link("h", "../outside/secret")])],
            Want::Err("path contains \"..\""),
            None,
        ),
        (
            "hardlink to an absolute host path",
            vec![layer(&[E::Link("h", &out_secret)])],
            Want::Err("hardlink target not found"),
            None,
        ),
        (
            "hardlink outside via symlink parent",
            vec![layer(&[E::Sym("evil", &out), E::Link("h", "evil/secret")])],
            Want::Err("hardlink target not found"),
            None,
        ),
        (
            "whiteout naming dotdot",
            vec![layer(&[E::File("../.wh.outside", b"")])],
            Want::Err("path contains \"..\""),
            None,
        ),
        (
            "whiteout of dot-dot name",
            vec![layer(&[E::File(".wh...", b"")])],
            Want::Err("whiteout names no file"),
            None,
        ),
        (
            "whiteout through a symlink parent",
            vec![
                layer(&[E::Sym("evil", &out)]),
                layer(&[E::File("evil/.wh.secret", b"")]),
            ],
            Want::Ok,
            None,
        ),
        (
            "duplicate entry: symlink then file replaces the symlink",
            vec![layer(&[
                E::File("x", b"one"),
                E::Sym("x", &out_secret),
                E::File("x", b"two"),
            ])],
            Want::Ok,
            Some(("x", "two")),
        ),
        (
            "dir replaced by file in a later layer",
            vec![
                layer(&[E::Dir("d"), E::File("d/f", b"1")]),
                layer(&[E::File("d", b"file")]),
            ],
            Want::Ok,
            Some(("d", "file")),
        ),
        (
            "duplicate entry: dir then file in the same layer",
            vec![layer(&[E::Dir("d"), E::File("d", b"file")])],
            Want::Ok,
            Some(("d", "file")),
        ),
        (
            "file under a file",
            vec![layer(&[E::File("f", b"1"), E::File("f/g", b"2")])],
            Want::Err("a parent is not a directory"),
            None,
        ),
        (
            "PAX path header says ../x",
            vec![layer(&[E::Pax(
                "innocent",
                b"../x",
                tar::EntryType::Regular,
                None,
            )])],
            Want::Err("path contains \"..\""),
            None,
        ),
        (
            "PAX path is absolute: lands inside",
            vec![layer(&[E::Pax(
                "innocent",
                format!("{out}/pax").as_bytes(),
                tar::EntryType::Regular,
                None,
            )])],
            Want::Ok,
            None,
        ),
        (
            "PAX linkpath of a hardlink climbs out",
            vec![layer(&[E::Pax(
                "h",
                b"h",
                tar::EntryType::Link,
                Some(rel_out.as_bytes()),
            )])],
            Want::Err("path contains \"..\""),
            None,
        ),
        (
            "PAX path with a NUL byte",
            vec![layer(&[E::Pax(
                "innocent",
                b"a\0/../../x",
                tar::EntryType::Regular,
                None,
            )])],
            Want::Err("path contains a NUL byte"),
            None,
        ),
        (
            "ustar name with a NUL byte ends at the NUL",
            vec![layer(&[E::File("nul\0/../../x", b"n")])],
            Want::Ok,
            Some(("nul", "n")),
        ),
        (
            "GNU long name with dotdot",
            vec![layer(&[E::Gnu(
                format!("{}/../../../x", "a".repeat(120)).as_bytes(),
                tar::EntryType::Regular,
                None,
            )])],
            Want::Err("path contains \"..\""),
            None,
        ),
        (
            "GNU long link to an absolute host path",
            vec![layer(&[E::Gnu(
                format!("{}/h", "a".repeat(120)).as_bytes(),
                tar::EntryType::Link,
                Some(out_secret.as_bytes()),
            )])],
            Want::Err("hardlink target not found"),
            None,
        ),
        (
            "GNU long symlink target to the host: stored, resolved inside later",
            vec![layer(&[
                E::Gnu(
                    b"lnk",
                    tar::EntryType::Symlink,
                    Some(format!("{out}/{}", "s".repeat(120)).as_bytes()),
                ),
                E::File("lnk/x", b"x"),
            ])],
            Want::Err("a parent is a dangling symlink"),
            None,
        ),
        (
            "component of 256 bytes",
            vec![layer(&[E::Pax(
                "innocent",
                format!("d/{long_name}").as_bytes(),
                tar::EntryType::Regular,
                None,
            )])],
            Want::Err("a path component is longer than 255 bytes"),
            None,
        ),
        (
            "component of 255 bytes is fine",
            vec![layer(&[E::Pax(
                "innocent",
                max_name.as_bytes(),
                tar::EntryType::Regular,
                None,
            )])],
            Want::Ok,
            None,
        ),
        (
            "path of 4201 bytes",
            vec![layer(&[E::Pax(
                "innocent",
                long_path.as_bytes(),
                tar::EntryType::Regular,
                None,
            )])],
            Want::Err("path longer than 4096 bytes"),
            None,
        ),
        (
            "symlink target of 4201 bytes",
            vec![layer(&[E::Pax(
                "s",
                b"s",
                tar::EntryType::Symlink,
                Some(long_path.as_bytes()),
            )])],
            Want::Err("path longer than 4096 bytes"),
            None,
        ),
        (
            "dot and empty names are the rootfs itself",
            vec![layer(&[
                E::Dir("."),
                E::Dir(""),
                E::Dir("./"),
                E::File("./a/./b//c", b"c"),
            ])],
            Want::Ok,
            Some(("a/b/c", "c")),
        ),
        (
            "symlink loop then a file through it",
            vec![layer(&[
                E::Sym("a", "b"),
                E::Sym("b", "a"),
                E::File("a/x", b"x"),
            ])],
            Want::Err("open parent"),
            None,
        ),
        (
            "symlink chain through an absolute host path",
            vec![layer(&[
                E::Sym("a", "/b"),
                E::Sym("b", &out),
                E::File("a/secret", b"pwned"),
            ])],
            Want::Err("a parent is a dangling symlink"),
            None,
        ),
        (
            "symlink replaces a directory, a later layer writes into it",
            vec![
                layer(&[E::Dir("etc"), E::File("etc/f", b"1")]),
                layer(&[E::Sym("etc", &out)]),
                layer(&[E::File("etc/secret", b"pwned")]),
            ],
            Want::Err("a parent is a dangling symlink"),
            None,
        ),
        (
            "symlink replaces a directory in the same layer",
            vec![layer(&[
                E::Dir("d"),
                E::Sym("d", "../../.."),
                E::File("d/x", b"clamped"),
            ])],
            Want::Ok,
            Some(("x", "clamped")),
        ),
        (
            "dir replaced by a symlink in a later layer keeps nothing below",
            vec![
                layer(&[E::Dir("d"), E::File("d/f", b"1")]),
                layer(&[E::Sym("d", "e"), E::File("e", b"e")]),
            ],
            Want::Ok,
            Some(("e", "e")),
        ),
        (
            "hardlink to itself",
            vec![layer(&[E::File("h", b"1"), E::Link("h", "h")])],
            Want::Err("hardlink to itself"),
            None,
        ),
        (
            "hardlink to a directory",
            vec![layer(&[E::Dir("d"), E::Link("h", "d")])],
            Want::Err("hardlink to a directory"),
            None,
        ),
        (
            "hardlink to a symlink to the host",
            vec![layer(&[E::Sym("s", &out_secret), E::Link("h", "s")])],
            Want::Ok,
            None,
        ),
        (
            "hardlink to a missing file",
            vec![layer(&[E::Link("h", "nope")])],
            Want::Err("hardlink target not found"),
            None,
        ),
        (
            "file over a hardlink does not write through it",
            vec![
                layer(&[E::File("etc/passwd", b"root")]),
                layer(&[E::Link("h", "etc/passwd"), E::File("h", b"pwned")]),
            ],
            Want::Ok,
            Some(("etc/passwd", "root")),
        ),
        (
            "whiteout with an absolute path of the host",
            vec![layer(&[E::File(&format!("{out}/.wh.secret"), b"")])],
            Want::Ok,
            None,
        ),
        (
            "whiteout through a symlink to /",
            vec![
                layer(&[E::File("f", b"f"), E::Sym("lnk", "/")]),
                layer(&[E::File("lnk/.wh.f", b"")]),
            ],
            Want::Ok,
            None,
        ),
        (
            "opaque whiteout before its directory entry",
            vec![
                layer(&[E::File("d/old", b"o")]),
                layer(&[
                    E::File("d/.wh..wh..opq", b""),
                    E::Dir("d"),
                    E::File("d/new", b"n"),
                ]),
            ],
            Want::Ok,
            Some(("d/new", "n")),
        ),
        (
            "opaque whiteout twice",
            vec![
                layer(&[E::File("d/old", b"o")]),
                layer(&[
                    E::File("d/new", b"n"),
                    E::File("d/.wh..wh..opq", b""),
                    E::File("d/.wh..wh..opq", b""),
                ]),
            ],
            Want::Ok,
            Some(("d/new", "n")),
        ),
        (
            "opaque whiteout of a missing directory",
            vec![layer(&[
                E::File("nowhere/.wh..wh..opq", b""),
                E::File("f", b"f"),
            ])],
            Want::Ok,
            Some(("f", "f")),
        ),
        (
            "opaque whiteout through a symlink to the host",
            vec![
                layer(&[E::Sym("evil", &out)]),
                layer(&[E::File("evil/.wh..wh..opq", b"")]),
            ],
            Want::Ok,
            None,
        ),
        (
            "opaque whiteout at the rootfs top",
            vec![
                layer(&[E::File("old", b"o"), E::Dir("olddir")]),
                layer(&[E::File(".wh..wh..opq", b""), E::File("new", b"n")]),
            ],
            Want::Ok,
            Some(("new", "n")),
        ),
        (
            "whiteout of a name with nothing after .wh.",
            vec![layer(&[E::File("d/.wh.", b"")])],
            Want::Err("whiteout names no file"),
            None,
        ),
        (
            "whiteout as a directory entry",
            vec![layer(&[E::File("x", b"x")]), layer(&[E::Dir(".wh.x")])],
            Want::Ok,
            None,
        ),
        (
            "duplicate file entries: the last wins",
            vec![layer(&[
                E::File("f", b"1"),
                E::File("f", b"2"),
                E::File("f", b"3"),
            ])],
            Want::Ok,
            Some(("f", "3")),
        ),
        (
            "file replaced by a directory in a later layer",
            vec![
                layer(&[E::File("d", b"file")]),
                layer(&[E::Dir("d"), E::File("d/f", b"in")]),
            ],
            Want::Ok,
            Some(("d/f", "in")),
        ),
        (
            "directory of mode 0000 receives its children",
            vec![layer(&[
                E::Mode("locked", tar::EntryType::Directory, 0),
                E::File("locked/f", b"f"),
            ])],
            Want::Ok,
            None,
        ),
        (
            "setuid file keeps its mode",
            vec![layer(&[E::Mode("bin/su", tar::EntryType::Regular, 0o4755)])],
            Want::Ok,
            Some(("bin/su", "m")),
        ),
        (
            "FIFO entry",
            vec![layer(&[E::Node("run/fifo", tar::EntryType::Fifo)])],
            Want::Ok,
            None,
        ),
        (
            "character device entry: made or skipped",
            vec![layer(&[
                E::Node("dev/null", tar::EntryType::Char),
                E::File("after", b"a"),
            ])],
            Want::Ok,
            Some(("after", "a")),
        ),
        (
            "device node over a host symlink is made inside",
            vec![layer(&[
                E::Sym("dev", &out),
                E::Node("dev/secret", tar::EntryType::Fifo),
            ])],
            Want::Err("a parent is a dangling symlink"),
            None,
        ),
        (
            "unsupported entry type (GNU sparse)",
            vec![layer(&[E::Node("sparse", tar::EntryType::GNUSparse)])],
            Want::Err("sparse entry type listed but not GNU header"),
            None,
        ),
    ];
    let extra = |name: &str| -> (Option<(&'static str, u32)>, Option<&'static str>) {
        match name {
            "directory of mode 0000 receives its children" => (Some(("locked", 0)), None),
            "setuid file keeps its mode" => (Some(("bin/su", 0o4755)), None),
            "FIFO entry" => (Some(("run/fifo", 0o666)), None),
            "opaque whiteout before its directory entry" | "opaque whiteout twice" => {
                (None, Some("d/old"))
            }
            "opaque whiteout at the rootfs top" => (None, Some("olddir")),
            "whiteout through a symlink to /" => (None, Some("f")),
            "whiteout as a directory entry" => (None, Some("x")),
            "dir replaced by a symlink in a later layer keeps nothing below" => (None, Some("d/f")),
            _ => (None, None),
        }
    };
    cases
        .into_iter()
        .map(|(name, layers, want, check)| {
            let (mode, absent) = extra(name);
            Case {
                name,
                layers,
                want,
                check,
                mode,
                absent,
            }
        })
        .collect()
}

#[test]
fn escapes_are_refused_or_kept_inside() {
    let n = escape_cases("/x").len();
    assert!(n >= 40, "{n} cases");
    for i in 0..n {
        let f = Fixture::new();
        let Case {
            name,
            layers,
            want,
            check,
            mode,
            absent,
        } = escape_cases(&f.out()).remove(i);
        let got = f.unpack(&layers, Limits::default());
        match (&want, &got) {
            (Want::Ok, Ok(())) => {}
            (Want::Err(w), Err(e)) => assert!(e.to_string().contains(w), "{name}: got {e}"),
            (Want::Ok, Err(e)) => panic!("{name}: unexpected error {e}"),
            (Want::Err(w), Ok(())) => panic!("{name}: want error {w}, got success"),
        }
        if let Some((path, content)) = check {
            let p = f.root.join(path);
            assert!(
                !fs::symlink_metadata(&p).unwrap().file_type().is_symlink(),
                "{name}"
            );
            assert_eq!(fs::read_to_string(&p).unwrap(), content, "{name}");
        }
        if let Some((path, want)) = mode {
            let m = fs::symlink_metadata(f.root.join(path)).unwrap();
            assert_eq!(m.permissions().mode() & 0o7777, want, "{name}");
        }
        if let Some(path) = absent {
            assert!(
                fs::symlink_metadata(f.root.join(path)).is_err(),
                "{name}: {path} exists"
            );
        }
        f.assert_outside_untouched();
    }
}

#[test]
fn hardlink_to_symlink_links_the_symlink_itself() {
    let f = Fixture::new();
    let out_secret = format!("{}/secret", f.out());
    let l = layer(&[E::Sym("s", &out_secret), E::Link("h", "s")]);
    f.unpack(&[l], Limits::default()).unwrap();
    let meta = fs::symlink_metadata(f.root.join("h")).unwrap();
    assert!(meta.file_type().is_symlink());
    f.assert_outside_untouched();
}

#[test]
fn hardlink_inside_shares_the_inode() {
    let f = Fixture::new();
    let l = layer(&[
        E::File("bin/busybox", b"bb"),
        E::Link("bin/sh", "/bin/busybox"),
    ]);
    f.unpack(&[l], Limits::default()).unwrap();
    let a = fs::metadata(f.root.join("bin/busybox")).unwrap();
    let b = fs::metadata(f.root.join("bin/sh")).unwrap();
    assert_eq!(a.ino(), b.ino());
}

#[test]
fn whiteouts_hide_lower_layers_only() {
    let f = Fixture::new();
    let lower = layer(&[
        E::File("a/1", b"1"),
        E::File("a/2", b"2"),
        E::File("b", b"b"),
        E::File("o/old", b"old"),
        E::File("o/sub/x", b"x"),
    ]);
    let upper = layer(&[
        E::File("a/.wh.1", b""),
        E::File(".wh.b", b""),
        E::File("o/new-before", b"n"),
        E::File("o/.wh..wh..opq", b""),
        E::File("o/new-after", b"n"),
        E::File("c", b"c"),
        E::File(".wh.c", b""),
        E::File(".wh.missing", b""),
    ]);
    f.unpack(&[lower, upper], Limits::default()).unwrap();
    let ls = |d: &str| {
        let mut v: Vec<String> = fs::read_dir(f.root.join(d))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(ls("a"), ["2"]);
    assert_eq!(ls("o"), ["new-after", "new-before"]);
    assert_eq!(
        ls("."),
        ["a", "c", "o"],
        "b is whited out; c is of the same layer"
    );
    f.assert_outside_untouched();
}

#[test]
fn limits_stop_unpacking_with_a_clear_error() {
    let f = Fixture::new();
    let l = layer(&[E::File("a", b"1"), E::File("b", b"2"), E::File("c", b"3")]);
    let err = f
        .unpack(
            &[l],
            Limits {
                max_bytes: 1 << 20,
                max_entries: 2,
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert_eq!(err.to_string(), "more than 2 entries: refusing to unpack");

    let f = Fixture::new();
    let l = layer(&[E::File("big", b"0123456789a")]);
    let err = f
        .unpack(
            &[l],
            Limits {
                max_bytes: 10,
                max_entries: 100,
                ..Limits::default()
            },
        )
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "more than 10 bytes uncompressed: refusing to unpack"
    );
}

#[test]
fn keeps_mode_mtime_and_owner() {
    let f = Fixture::new();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(2);
    h.set_mode(0o4755);
    h.set_mtime(1234);
    h.set_uid(1000);
    h.set_gid(1001);
    b.append_data(&mut h, "usr/bin/tool", &b"hi"[..]).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    h.set_mode(0o1777);
    h.set_mtime(42);
    h.set_uid(0);
    h.set_gid(0);
    b.append_data(&mut h, "tmp", &b""[..]).unwrap();
    f.unpack(&[b.into_inner().unwrap()], Limits::default())
        .unwrap();

    let m = fs::metadata(f.root.join("usr/bin/tool")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o4755);
    assert_eq!(m.mtime(), 1234);
    if rustix::process::geteuid().is_root() {
        assert_eq!((m.uid(), m.gid()), (1000, 1001));
    }
    let d = fs::metadata(f.root.join("tmp")).unwrap();
    assert_eq!(d.permissions().mode() & 0o7777, 0o1777);
    assert_eq!(d.mtime(), 42);
}

#[test]
fn opaque_whiteout_after_same_layer_entries_clears_their_lower_siblings() {
    let f = Fixture::new();
    let lower = layer(&[E::File("d/sub/old", b"o"), E::File("d/gone", b"g")]);
    let upper = layer(&[E::File("d/sub/new", b"n"), E::File("d/.wh..wh..opq", b"")]);
    f.unpack(&[lower, upper], Limits::default()).unwrap();
    assert_eq!(fs::read(f.root.join("d/sub/new")).unwrap(), b"n");
    assert!(
        !f.root.join("d/sub/old").exists(),
        "lower child of an opaque dir kept"
    );
    assert!(!f.root.join("d/gone").exists());
}

#[test]
fn directory_listed_twice_takes_the_last_metadata() {
    let f = Fixture::new();
    let l = layer(&[
        E::Mode("d", tar::EntryType::Directory, 0o700),
        E::File("d/f", b"f"),
        E::Mode("d", tar::EntryType::Directory, 0o751),
    ]);
    f.unpack(&[l], Limits::default()).unwrap();
    let m = fs::metadata(f.root.join("d")).unwrap();
    assert_eq!(m.permissions().mode() & 0o7777, 0o751);
    assert_eq!(m.mtime(), 1_000_000);
    assert_eq!(fs::read(f.root.join("d/f")).unwrap(), b"f");
}

mod streams;
