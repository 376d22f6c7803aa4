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
}

/// A tar layer; names are written raw into the header so `..` and `/` reach the unpacker.
fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_old();
        let (path, data, kind, link): (&str, &[u8], _, Option<&str>) = match *e {
            E::File(p, d) => (p, d, tar::EntryType::Regular, None),
            E::Dir(p) => (p, b"", tar::EntryType::Directory, None),
            E::Sym(p, t) => (p, b"", tar::EntryType::Symlink, Some(t)),
            E::Link(p, t) => (p, b"", tar::EntryType::Link, Some(t)),
        };
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(if kind == tar::EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(1_000_000);
        h.set_uid(0);
        h.set_gid(0);
        h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
        if let Some(t) = link {
            h.as_old_mut().linkname[..t.len()].copy_from_slice(t.as_bytes());
        }
        h.set_cksum();
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
}

/// The cases, with `out` the absolute path of the fixture's directory outside the rootfs.
fn escape_cases(out: &str) -> Vec<Case> {
    let out_secret = format!("{out}/secret");
    let out = out.to_string();
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
    ];
    cases
        .into_iter()
        .map(|(name, layers, want, check)| Case {
            name,
            layers,
            want,
            check,
        })
        .collect()
}

#[test]
fn escapes_are_refused_or_kept_inside() {
    let n = escape_cases("/x").len();
    assert!(n >= 10);
    for i in 0..n {
        let f = Fixture::new();
        let Case {
            name,
            layers,
            want,
            check,
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
