//! Unpacks one uncompressed OCI layer tar into the upper directory of a new overlay snapshot.
//!
//! Entries keep their contents, modes, numeric owners, `SCHILY.xattr.*` xattrs, mtimes,
//! hard links and device nodes. OCI whiteouts become overlayfs ones: `.wh.name` turns into a
//! 0/0 character device `name`, `.wh..wh..opq` into `trusted.overlay.opaque=y` on its
//! directory; other `.wh..wh.*` meta entries and any `trusted.overlay.*` xattr in the layer
//! are dropped, so a layer cannot forge overlay metadata.
//!
//! Nothing is ever created, changed or removed outside the root: names with `..` or a leading
//! `/` are refused, every parent directory is resolved with `openat2(RESOLVE_IN_ROOT)` (so a
//! symlink written by an earlier entry can only lead back inside the root), and the final
//! operation is done relative to that directory on the last name component without following
//! a symlink there.
//!
//! For speed the last resolved parent directory is kept open (tar entries come grouped by
//! directory), file data is copied through one 1 MiB buffer, and nothing is fsynced.
//! Runs in cairnd (the image side).

use std::cell::Cell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{
    self as rfs, AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid,
    XattrFlags,
};
use rustix::io::Errno;
use tar::EntryType;

use crate::error::{Error, Result};

/// Size of the buffer file data is copied through.
const COPY_BUFFER: usize = 1 << 20;
/// Deepest directory tree we remove when an entry replaces it.
const MAX_REMOVE_DEPTH: usize = 512;
/// OCI whiteout prefix: `.wh.name` deletes `name` of the lower layers.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// OCI prefix of whiteout meta files (`.wh..wh..opq`, aufs' `.wh..wh.plnk`, ...).
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// OCI opaque marker: hides all lower children of its directory.
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";
/// The overlayfs xattr marking an opaque directory (read back by [`crate::layered`]).
const OVERLAY_OPAQUE_XATTR: &str = crate::layered::OPAQUE_XATTR;
/// Xattr prefixes that overlayfs interprets (trusted, or user with `userxattr`); never taken
/// from a layer nor copied from a lower directory.
const OVERLAY_XATTR_PREFIXES: [&[u8]; 2] = [b"trusted.overlay.", b"user.overlay."];
/// PAX record prefix carrying an xattr (GNU tar / star convention).
const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";
/// `setxattrat(2)` (Linux 6.13), the same number on every architecture.
const SYS_SETXATTRAT: libc::c_long = 463;

/// Counters of one unpack.
#[derive(Debug, Default, Clone)]
pub struct UnpackStats {
    /// Tar entries processed (files, dirs, links, whiteouts, skipped meta entries).
    pub entries: u64,
    /// Bytes of regular file contents written.
    pub bytes: u64,
}

/// Unpacks the layer tar read from `tar` into `root`, an existing empty directory that will become
/// the upper dir of an overlay snapshot whose lower dirs are `parents` (highest/topmost layer first;
/// empty for a base layer). Returns an error (crate::error::Error::BadContent naming the tar entry) for
/// any unsafe entry; the caller then deletes `root` wholesale, so you need not roll back.
///
/// The reader is read to its end, also past the tar's end-of-archive marker, so that an error
/// the reader reports only at its end (a digest mismatch) surfaces here. An `io::Error` from the
/// reader that wraps a [`crate::Error`] is returned as that error.
pub fn unpack_layer<R: std::io::Read>(
    tar: R,
    root: &std::path::Path,
    parents: &[std::path::PathBuf],
) -> crate::Result<UnpackStats> {
    let mut unpacker = Unpacker::new(root, parents)?;
    let progress = Progress::default();
    let mut source = Source {
        inner: tar,
        progress: &progress,
    };
    let outcome = {
        let mut archive = ::tar::Archive::new(&mut source);
        unpacker.unpack_all(&mut archive, &progress)
    };
    let outcome = outcome.and_then(|()| source.drain().map_err(Failure::Read));
    if let Err(failure) = outcome {
        return Err(failure.into_error(progress.eof.get(), root));
    }
    unpacker.finish()?;
    Ok(unpacker.stats)
}

/// How far the tar parser has read the layer, kept beside the reader it reads through.
#[derive(Default)]
struct Progress {
    /// Bytes read.
    pos: Cell<u64>,
    /// Whether the reader hit its end.
    eof: Cell<bool>,
}

/// The layer reader, marking its errors (so they are told apart from tar format errors) and
/// counting what it read and whether it hit its end (so a tar error can be told to be a
/// truncation, or the end of a tar whose writer left out the last padding).
struct Source<'p, R> {
    inner: R,
    progress: &'p Progress,
}

impl<R: Read> Source<'_, R> {
    /// Reads what is left after the end-of-archive marker.
    fn drain(&mut self) -> io::Result<()> {
        io::copy(self, &mut io::sink()).map(drop)
    }
}

impl<R: Read> Read for Source<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.inner.read(buf) {
                Ok(0) if !buf.is_empty() => {
                    self.progress.eof.set(true);
                    return Ok(0);
                }
                Ok(n) => {
                    let pos = &self.progress.pos;
                    pos.set(pos.get() + n as u64);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io::Error::new(e.kind(), SourceError(e))),
            }
        }
    }
}

/// An error of the layer reader itself, as opposed to one found by the tar parser.
#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Why unpacking stopped, before the reader state is known.
enum Failure {
    /// Reading the tar failed: the reader's own error or a malformed archive.
    Read(io::Error),
    /// An entry's data ended early.
    Truncated,
    /// Anything else, already in its final form.
    Fatal(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Fatal(e)
    }
}

impl Failure {
    fn into_error(self, reader_hit_eof: bool, root: &Path) -> Error {
        let err = match self {
            Failure::Fatal(e) => return e,
            Failure::Truncated => return truncated(),
            Failure::Read(err) => err,
        };
        if !err.get_ref().is_some_and(|e| e.is::<SourceError>()) {
            if reader_hit_eof {
                return truncated();
            }
            return Error::BadContent(format!("layer tar is malformed: {err}"));
        }
        let kind = err.kind();
        let err = match err.into_inner().map(|e| e.downcast::<SourceError>()) {
            Some(Ok(source)) => source.0,
            Some(Err(other)) => io::Error::new(kind, other),
            None => io::Error::from(kind),
        };
        reader_error(err, root)
    }
}

/// Maps an error of the layer reader: a wrapped crate error as itself, an early end as a
/// truncation, anything else as I/O.
fn reader_error(err: io::Error, root: &Path) -> Error {
    if err.get_ref().is_some_and(|e| e.is::<Error>()) {
        let kind = err.kind();
        return match err.into_inner().map(|e| e.downcast::<Error>()) {
            Some(Ok(e)) => *e,
            Some(Err(other)) => Error::io("unpack read layer", root, io::Error::new(kind, other)),
            None => Error::io("unpack read layer", root, io::Error::from(kind)),
        };
    }
    if err.kind() == io::ErrorKind::UnexpectedEof {
        return Error::BadContent(format!("truncated layer: {err}"));
    }
    Error::io("unpack read layer", root, err)
}

fn truncated() -> Error {
    Error::BadContent("truncated layer".into())
}

/// A refused entry.
fn bad(entry: &[u8], why: impl std::fmt::Display) -> Error {
    Error::BadContent(format!(
        "layer entry {:?}: {why}",
        String::from_utf8_lossy(entry)
    ))
}

fn as_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Normalizes a tar name into `out` (`a/b/c`, no `.`, no empty components, no trailing
/// slash); the root itself becomes empty. A leading `/` or `./` names the same path below
/// the layer's root, as containerd and Go's archive/tar based tools take it (some image
/// builders write `/etc/passwd`, or `./etc/passwd`). Refuses `..`.
fn normalize(raw: &[u8], out: &mut Vec<u8>) -> std::result::Result<(), &'static str> {
    out.clear();
    if raw.is_empty() {
        return Err("empty name");
    }
    if raw.contains(&0) {
        return Err("name contains a NUL byte");
    }
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err("name has a `..` component"),
            _ => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(component);
            }
        }
    }
    Ok(())
}

/// Splits a normalized name into its parent directory and last component.
fn split_last(name: &[u8]) -> (&[u8], &[u8]) {
    match name.iter().rposition(|&b| b == b'/') {
        Some(i) => (&name[..i], &name[i + 1..]),
        None => (b"", name),
    }
}

/// Number of components of a normalized name.
fn depth(name: &[u8]) -> usize {
    if name.is_empty() {
        return 0;
    }
    name.iter().filter(|&&b| b == b'/').count() + 1
}

fn is_overlay_xattr(name: &[u8]) -> bool {
    OVERLAY_XATTR_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// Parses a PAX time (`seconds[.fraction]`, maybe negative).
fn parse_pax_time(value: &[u8]) -> Option<Timespec> {
    let text = std::str::from_utf8(value).ok()?;
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let negative = secs.starts_with('-');
    let mut tv_sec: i64 = secs.parse().ok()?;
    if frac.len() > 18 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut nanos: i64 = 0;
    for digit in frac.bytes().chain(std::iter::repeat(b'0')).take(9) {
        nanos = nanos * 10 + i64::from(digit - b'0');
    }
    if negative && nanos > 0 {
        tv_sec = tv_sec.checked_sub(1)?;
        nanos = 1_000_000_000 - nanos;
    }
    Some(Timespec {
        tv_sec,
        // `Nsecs` is `i64` or `c_long` depending on the target.
        #[allow(clippy::useless_conversion)]
        tv_nsec: nanos.try_into().ok()?,
    })
}

fn timestamps(mtime: Timespec) -> Timestamps {
    Timestamps {
        last_access: mtime,
        last_modification: mtime,
    }
}

/// What an entry says about the object it creates.
struct Meta {
    mode: u32,
    uid: Uid,
    gid: Gid,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads mode, owner, mtime and xattrs of an entry (PAX records override the header).
fn read_meta<R: Read>(entry: &mut ::tar::Entry<'_, R>, name: &[u8]) -> Result<Meta> {
    let header = entry.header();
    let mode = header.mode().map_err(|e| bad(name, e))? & 0o7777;
    let uid = header.uid().map_err(|e| bad(name, e))?;
    let gid = header.gid().map_err(|e| bad(name, e))?;
    let id = |v: u64| u32::try_from(v).ok().filter(|&v| v != u32::MAX);
    let (Some(uid), Some(gid)) = (id(uid), id(gid)) else {
        return Err(bad(name, format!("owner {uid}:{gid} out of range")));
    };
    let secs = header.mtime().map_err(|e| bad(name, e))?;
    let mut meta = Meta {
        mode,
        uid: Uid::from_raw(uid),
        gid: Gid::from_raw(gid),
        mtime: Timespec {
            tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
            tv_nsec: 0,
        },
        xattrs: Vec::new(),
    };
    let Some(extensions) = entry.pax_extensions().map_err(|e| bad(name, e))? else {
        return Ok(meta);
    };
    for extension in extensions {
        let extension = extension.map_err(|e| bad(name, format!("bad PAX record: {e}")))?;
        let key = extension.key_bytes();
        if key == b"mtime" {
            if let Some(mtime) = parse_pax_time(extension.value_bytes()) {
                meta.mtime = mtime;
            }
            continue;
        }
        let Some(xattr) = key.strip_prefix(PAX_XATTR_PREFIX) else {
            continue;
        };
        if xattr.is_empty() || xattr.contains(&0) {
            return Err(bad(name, "invalid xattr name"));
        }
        if is_overlay_xattr(xattr) {
            continue;
        }
        meta.xattrs
            .push((xattr.to_vec(), extension.value_bytes().to_vec()));
    }
    Ok(meta)
}

/// Mode, owner, mtime and xattrs of a lower directory, to give a directory we create implicitly.
struct Template {
    mode: u32,
    uid: Uid,
    gid: Gid,
    mtime: Timespec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Why a data copy stopped.
enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Short,
}

/// Copies exactly `size` bytes of entry data into `file`, filling `buf` before each write.
fn copy_data(
    entry: &mut impl Read,
    mut file: &File,
    buf: &mut [u8],
    size: u64,
) -> std::result::Result<u64, CopyError> {
    let mut total: u64 = 0;
    while total < size {
        let want = usize::try_from(size - total).map_or(buf.len(), |left| left.min(buf.len()));
        let mut filled = 0;
        while filled < want {
            match entry.read(&mut buf[filled..want]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(CopyError::Read(e)),
            }
        }
        if filled == 0 {
            return Err(CopyError::Short);
        }
        file.write_all(&buf[..filled]).map_err(CopyError::Write)?;
        total += filled as u64;
    }
    Ok(total)
}

/// Opens directory `path` beneath `root` as `O_PATH`, resolving symlinks as if `root` were `/`.
fn open_in_root(root: BorrowedFd<'_>, path: &[u8]) -> rustix::io::Result<OwnedFd> {
    let path: &[u8] = if path.is_empty() { b"." } else { path };
    let mut attempts = 0;
    loop {
        let opened = rfs::openat2(
            root,
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        );
        // EAGAIN: a concurrent rename elsewhere on the system made the kernel unsure.
        match opened {
            Err(Errno::AGAIN) if attempts < 16 => attempts += 1,
            other => return other,
        }
    }
}

/// Opens directory `name` of `dir` for reading, never following a symlink.
fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Creates regular file `name` of `dir`, which must not exist.
fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> rustix::io::Result<OwnedFd> {
    rfs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
}

fn is_dir(st: &rfs::Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::Directory
}

/// Removes `name` of `dir`, recursively if it is a directory, never following symlinks.
fn remove_tree(dir: BorrowedFd<'_>, name: &[u8], depth: usize) -> io::Result<()> {
    match rfs::unlinkat(dir, name, AtFlags::empty()) {
        Ok(()) | Err(Errno::NOENT) => return Ok(()),
        Err(Errno::ISDIR) => {}
        Err(e) => return Err(e.into()),
    }
    if depth >= MAX_REMOVE_DEPTH {
        return Err(io::Error::other("directory tree too deep to remove"));
    }
    let mut listing = rfs::Dir::new(open_dir(dir, name)?)?;
    let mut children: Vec<CString> = Vec::new();
    while let Some(child) = listing.read() {
        let child = child?;
        let child_name = child.file_name().to_bytes();
        if child_name != b"." && child_name != b".." {
            children.push(child.file_name().to_owned());
        }
    }
    let fd = listing.fd()?;
    for child in &children {
        remove_tree(fd, child.as_bytes(), depth + 1)?;
    }
    rfs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
    Ok(())
}

/// `setxattrat(dir, name, AT_SYMLINK_NOFOLLOW, key, value)`: an xattr on a symlink, device or
/// fifo, which cannot be opened for `fsetxattr` (and must not be: opening a device runs its
/// driver).
fn set_xattr_at(dir: BorrowedFd<'_>, name: &CStr, key: &CStr, value: &[u8]) -> io::Result<()> {
    #[repr(C)]
    struct XattrArgs {
        value: u64,
        size: u32,
        flags: u32,
    }
    let args = XattrArgs {
        value: value.as_ptr() as u64,
        size: u32::try_from(value.len()).map_err(|_| io::Error::from_raw_os_error(libc::E2BIG))?,
        flags: 0,
    };
    // SAFETY: all pointers are valid for the duration of the call: `name` and `key` are
    // NUL-terminated, `args` points at `value` with its length, and the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            SYS_SETXATTRAT,
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
            key.as_ptr(),
            &args as *const XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether a failed xattr write is a limitation of the filesystem or kernel, to warn about
/// instead of failing the pull.
fn xattr_unsupported(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
    )
}

/// Reads the xattrs of `fd`, leaving out overlayfs' own. Best effort: unreadable ones are skipped.
fn read_xattrs(fd: BorrowedFd<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(size) = rfs::flistxattr_query(fd) else {
        return out;
    };
    let mut names = vec![0u8; size];
    let Ok(len) = rfs::flistxattr(fd, &mut names[..]) else {
        return out;
    };
    names.truncate(len);
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if is_overlay_xattr(name) {
            continue;
        }
        let Ok(size) = rfs::fgetxattr_query(fd, name) else {
            continue;
        };
        let mut value = vec![0u8; size];
        if let Ok(len) = rfs::fgetxattr(fd, name, &mut value[..]) {
            value.truncate(len);
            out.push((name.to_vec(), value));
        }
    }
    out
}

/// The state of one unpack.
struct Unpacker<'a> {
    root_path: &'a Path,
    /// The root, opened for reading (so it can take metadata itself).
    root: OwnedFd,
    parents: &'a [PathBuf],
    /// The parent layers' roots, opened on first need (`None`: could not be opened).
    lowers: Option<Vec<Option<OwnedFd>>>,
    /// The last resolved directory and its normalized name.
    cache_key: Vec<u8>,
    cache_fd: Option<OwnedFd>,
    /// Set when something was removed: the cached directory may be stale.
    stale: bool,
    /// Directories whose mtime is set at the end, after their children were written.
    dir_times: HashMap<Vec<u8>, Timespec>,
    buf: Vec<u8>,
    name: Vec<u8>,
    link: Vec<u8>,
    stats: UnpackStats,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, parents: &'a [PathBuf]) -> Result<Self> {
        let root_fd = rfs::open(
            root,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io("unpack open root", root, e.into()))?;
        Ok(Unpacker {
            root_path: root,
            root: root_fd,
            parents,
            lowers: None,
            cache_key: Vec::new(),
            cache_fd: None,
            stale: false,
            dir_times: HashMap::new(),
            buf: vec![0; COPY_BUFFER],
            name: Vec::new(),
            link: Vec::new(),
            stats: UnpackStats::default(),
        })
    }

    /// An I/O error on `name` (normalized, relative to the root).
    fn io(&self, context: &'static str, name: &[u8], err: impl Into<io::Error>) -> Error {
        Error::io(context, self.root_path.join(as_path(name)), err.into())
    }

    /// Unpacks every entry. A tar that ends right after the last entry's data (no padding
    /// to the block, no end-of-archive blocks), as some image tools write them, ends there:
    /// Go's archive/tar, which containerd and CRI-O read layers with, takes it so. A cut
    /// anywhere else (in a header, in data, in padding) stays a truncation.
    fn unpack_all<R: Read>(
        &mut self,
        archive: &mut ::tar::Archive<R>,
        progress: &Progress,
    ) -> Result<(), Failure> {
        let mut data_end = None;
        for entry in archive.entries().map_err(Failure::Read)? {
            let mut entry = match entry {
                Ok(entry) => entry,
                Err(_) if progress.eof.get() && data_end == Some(progress.pos.get()) => {
                    return Ok(());
                }
                Err(e) => return Err(Failure::Read(e)),
            };
            self.stats.entries += 1;
            self.unpack_entry(&mut entry)?;
            data_end = Some(entry.raw_file_position() + entry.size());
        }
        Ok(())
    }

    fn unpack_entry<R: Read>(&mut self, entry: &mut ::tar::Entry<'_, R>) -> Result<(), Failure> {
        if entry.header().entry_type().is_pax_global_extensions() {
            return Ok(());
        }
        let mut name = std::mem::take(&mut self.name);
        let result = self.unpack_named(entry, &mut name);
        self.name = name;
        result
    }

    fn unpack_named<R: Read>(
        &mut self,
        entry: &mut ::tar::Entry<'_, R>,
        name: &mut Vec<u8>,
    ) -> Result<(), Failure> {
        let trailing_slash = {
            let raw = entry.path_bytes();
            normalize(&raw, name).map_err(|why| bad(&raw, why))?;
            raw.ends_with(b"/")
        };
        let name: &[u8] = name;
        let kind = entry.header().entry_type();
        // Old (v7) archives mark directories only by the trailing slash.
        let is_dir = kind.is_dir() || (kind == EntryType::Regular && trailing_slash);
        if name.is_empty() {
            if !is_dir {
                return Err(bad(b".", "the root must be a directory").into());
            }
            let meta = read_meta(entry, b".")?;
            self.set_fd_meta(self.root.as_fd(), &meta, name)?;
            self.dir_times.insert(Vec::new(), meta.mtime);
            return Ok(());
        }
        let (parent, base) = split_last(name);
        if self.whiteout(parent, base, name)? {
            return Ok(());
        }
        if kind == EntryType::Link {
            return Ok(self.hard_link(entry, parent, base, name)?);
        }
        let meta = read_meta(entry, name)?;
        match kind {
            _ if is_dir => Ok(self.directory(parent, base, name, &meta)?),
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                self.regular(entry, parent, base, name, &meta)
            }
            EntryType::Symlink => {
                let Some(target) = entry.link_name_bytes() else {
                    return Err(bad(name, "symlink without a target").into());
                };
                Ok(self.symlink(&target, parent, base, name, &meta)?)
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                Ok(self.node(entry.header(), kind, parent, base, name, &meta)?)
            }
            other => Err(bad(name, format!("unsupported entry type {other:?}")).into()),
        }
    }

    /// Handles whiteout and whiteout meta entries; returns whether `name` was one.
    fn whiteout(&mut self, parent: &[u8], base: &[u8], name: &[u8]) -> Result<bool> {
        let in_meta_dir = parent
            .split(|&b| b == b'/')
            .any(|c| c.starts_with(WHITEOUT_META_PREFIX));
        if in_meta_dir {
            return Ok(true);
        }
        if base == WHITEOUT_OPAQUE {
            self.opaque(parent, name)?;
            return Ok(true);
        }
        if base.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(true);
        }
        let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) else {
            return Ok(false);
        };
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(bad(name, "whiteout of an invalid name"));
        }
        let dir = self.take_parent(parent, name)?;
        self.remove(dir.as_fd(), hidden, name)?;
        rfs::mknodat(
            &dir,
            hidden,
            FileType::CharacterDevice,
            Mode::empty(),
            rfs::makedev(0, 0),
        )
        .map_err(|e| self.io("unpack create whiteout", name, e))?;
        self.put_parent(parent, dir);
        Ok(true)
    }

    /// Marks directory `dir_name` opaque (creating it if needed).
    fn opaque(&mut self, dir_name: &[u8], name: &[u8]) -> Result<()> {
        let dir = self.take_parent(dir_name, name)?;
        let readable = open_dir(dir.as_fd(), b".")
            .map_err(|e| self.io("unpack open directory", dir_name, e))?;
        rfs::fsetxattr(&readable, OVERLAY_OPAQUE_XATTR, b"y", XattrFlags::empty())
            .map_err(|e| self.io("unpack mark opaque", dir_name, e))?;
        self.put_parent(dir_name, dir);
        Ok(())
    }

    fn directory(&mut self, parent: &[u8], base: &[u8], name: &[u8], meta: &Meta) -> Result<()> {
        let dir = self.take_parent(parent, name)?;
        let mode = Mode::from_raw_mode(0o700);
        match rfs::mkdirat(&dir, base, mode) {
            Ok(()) => {}
            Err(Errno::EXIST) => {
                let st = rfs::statat(&dir, base, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("unpack stat", name, e))?;
                if !is_dir(&st) {
                    self.remove(dir.as_fd(), base, name)?;
                    rfs::mkdirat(&dir, base, mode)
                        .map_err(|e| self.io("unpack create directory", name, e))?;
                }
            }
            Err(e) => return Err(self.io("unpack create directory", name, e)),
        }
        let fd =
            open_dir(dir.as_fd(), base).map_err(|e| self.io("unpack open directory", name, e))?;
        self.set_fd_meta(fd.as_fd(), meta, name)?;
        self.dir_times.insert(name.to_vec(), meta.mtime);
        // The next entries are most likely this directory's children.
        self.put_parent(name, fd);
        Ok(())
    }

    fn regular<R: Read>(
        &mut self,
        entry: &mut ::tar::Entry<'_, R>,
        parent: &[u8],
        base: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<(), Failure> {
        let dir = self.take_parent(parent, name)?;
        let created = match create_file(dir.as_fd(), base) {
            Err(Errno::EXIST) => {
                self.remove(dir.as_fd(), base, name)?;
                create_file(dir.as_fd(), base)
            }
            other => other,
        };
        let file = File::from(created.map_err(|e| self.io("unpack create file", name, e))?);
        self.put_parent(parent, dir);
        let size = entry.size();
        let written = copy_data(entry, &file, &mut self.buf, size).map_err(|e| match e {
            CopyError::Read(e) => Failure::Read(e),
            CopyError::Short => Failure::Truncated,
            CopyError::Write(e) => Failure::Fatal(self.io("unpack write file", name, e)),
        })?;
        self.stats.bytes += written;
        self.set_fd_meta(file.as_fd(), meta, name)?;
        rfs::futimens(&file, &timestamps(meta.mtime))
            .map_err(|e| self.io("unpack set mtime", name, e))?;
        Ok(())
    }

    fn symlink(
        &mut self,
        target: &[u8],
        parent: &[u8],
        base: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        if target.is_empty() || target.contains(&0) {
            return Err(bad(name, "invalid symlink target"));
        }
        let dir = self.take_parent(parent, name)?;
        let created = match rfs::symlinkat(target, &dir, base) {
            Err(Errno::EXIST) => {
                self.remove(dir.as_fd(), base, name)?;
                rfs::symlinkat(target, &dir, base)
            }
            other => other,
        };
        created.map_err(|e| self.io("unpack create symlink", name, e))?;
        self.set_special_meta(dir.as_fd(), base, meta, name, false)?;
        self.put_parent(parent, dir);
        Ok(())
    }

    fn node(
        &mut self,
        header: &::tar::Header,
        kind: EntryType,
        parent: &[u8],
        base: &[u8],
        name: &[u8],
        meta: &Meta,
    ) -> Result<()> {
        let file_type = match kind {
            EntryType::Char => FileType::CharacterDevice,
            EntryType::Block => FileType::BlockDevice,
            _ => FileType::Fifo,
        };
        let number =
            |n: io::Result<Option<u32>>| n.map(|n| n.unwrap_or(0)).map_err(|e| bad(name, e));
        let dev = match file_type {
            FileType::Fifo => rfs::makedev(0, 0),
            _ => rfs::makedev(
                number(header.device_major())?,
                number(header.device_minor())?,
            ),
        };
        let dir = self.take_parent(parent, name)?;
        let mode = Mode::from_raw_mode(0o600);
        let created = match rfs::mknodat(&dir, base, file_type, mode, dev) {
            Err(Errno::EXIST) => {
                self.remove(dir.as_fd(), base, name)?;
                rfs::mknodat(&dir, base, file_type, mode, dev)
            }
            other => other,
        };
        created.map_err(|e| self.io("unpack create node", name, e))?;
        self.set_special_meta(dir.as_fd(), base, meta, name, true)?;
        self.put_parent(parent, dir);
        Ok(())
    }

    fn hard_link<R: Read>(
        &mut self,
        entry: &::tar::Entry<'_, R>,
        parent: &[u8],
        base: &[u8],
        name: &[u8],
    ) -> Result<()> {
        let mut target = std::mem::take(&mut self.link);
        let result = match entry.link_name_bytes() {
            None => Err(bad(name, "hard link without a target")),
            Some(raw) => normalize(&raw, &mut target)
                .map_err(|why| bad(name, format_args!("hard link target: {why}")))
                .and_then(|()| self.link_to(&target, parent, base, name)),
        };
        self.link = target;
        result
    }

    fn link_to(&mut self, target: &[u8], parent: &[u8], base: &[u8], name: &[u8]) -> Result<()> {
        if target.is_empty() {
            return Err(bad(name, "hard link to the root"));
        }
        let (target_parent, target_base) = split_last(target);
        let missing = || {
            bad(
                name,
                format_args!(
                    "hard link target {:?} is not in the layer",
                    String::from_utf8_lossy(target)
                ),
            )
        };
        let target_dir = match open_in_root(self.root.as_fd(), target_parent) {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => return Err(missing()),
            Err(e) => return Err(self.resolve_error(e, target_parent, name)),
        };
        let target_stat = match rfs::statat(&target_dir, target_base, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::NOENT) => return Err(missing()),
            Err(e) => return Err(self.io("unpack stat", target, e)),
        };
        if is_dir(&target_stat) {
            return Err(bad(name, "hard link to a directory"));
        }
        let dir = self.take_parent(parent, name)?;
        let link =
            |dir: &OwnedFd| rfs::linkat(&target_dir, target_base, dir, base, AtFlags::empty());
        let linked = match link(&dir) {
            Err(Errno::EXIST) => {
                let same = rfs::statat(&dir, base, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| {
                    st.st_dev == target_stat.st_dev && st.st_ino == target_stat.st_ino
                });
                if same {
                    Ok(())
                } else {
                    self.remove(dir.as_fd(), base, name)?;
                    link(&dir)
                }
            }
            other => other,
        };
        linked.map_err(|e| self.io("unpack create hard link", name, e))?;
        self.put_parent(parent, dir);
        Ok(())
    }

    /// Owner, mode and xattrs of an object opened for reading or writing (chmod after chown,
    /// which clears setuid; xattrs after chown, which clears file capabilities).
    fn set_fd_meta(&self, fd: BorrowedFd<'_>, meta: &Meta, name: &[u8]) -> Result<()> {
        rfs::fchown(fd, Some(meta.uid), Some(meta.gid))
            .map_err(|e| self.io("unpack set owner", name, e))?;
        rfs::fchmod(fd, Mode::from_raw_mode(meta.mode))
            .map_err(|e| self.io("unpack set mode", name, e))?;
        for (key, value) in &meta.xattrs {
            let Err(err) = rfs::fsetxattr(fd, key.as_slice(), value, XattrFlags::empty()) else {
                continue;
            };
            self.xattr_failed(err.into(), key, name)?;
        }
        Ok(())
    }

    /// Owner, (mode), xattrs and mtime of a symlink, device or fifo, by name in `dir`.
    fn set_special_meta(
        &self,
        dir: BorrowedFd<'_>,
        base: &[u8],
        meta: &Meta,
        name: &[u8],
        with_mode: bool,
    ) -> Result<()> {
        rfs::chownat(
            dir,
            base,
            Some(meta.uid),
            Some(meta.gid),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io("unpack set owner", name, e))?;
        if with_mode {
            // Not a symlink: we just created it, and nothing else writes to the root.
            rfs::chmodat(dir, base, Mode::from_raw_mode(meta.mode), AtFlags::empty())
                .map_err(|e| self.io("unpack set mode", name, e))?;
        }
        if !meta.xattrs.is_empty() {
            let c_base = CString::new(base).map_err(|_| bad(name, "NUL in name"))?;
            for (key, value) in &meta.xattrs {
                let c_key = CString::new(key.as_slice()).map_err(|_| bad(name, "NUL in xattr"))?;
                if let Err(err) = set_xattr_at(dir, &c_base, &c_key, value) {
                    self.xattr_failed(err, key, name)?;
                }
            }
        }
        rfs::utimensat(
            dir,
            base,
            &timestamps(meta.mtime),
            AtFlags::SYMLINK_NOFOLLOW,
        )
        .map_err(|e| self.io("unpack set mtime", name, e))?;
        Ok(())
    }

    /// Warns about an xattr the filesystem or kernel cannot store; fails on any other error.
    fn xattr_failed(&self, err: io::Error, key: &[u8], name: &[u8]) -> Result<()> {
        let special_user = err.raw_os_error() == Some(libc::EPERM) && key.starts_with(b"user.");
        if !xattr_unsupported(&err) && !special_user {
            return Err(self.io("unpack set xattr", name, err));
        }
        tracing::warn!(
            entry = %String::from_utf8_lossy(name),
            xattr = %String::from_utf8_lossy(key),
            "layer xattr not stored: {err}"
        );
        Ok(())
    }

    /// Removes `base` of `dir` (recursively), invalidating the cached directory.
    fn remove(&mut self, dir: BorrowedFd<'_>, base: &[u8], name: &[u8]) -> Result<()> {
        self.stale = true;
        remove_tree(dir, base, 0).map_err(|e| {
            let (parent, _) = split_last(name);
            Error::io(
                "unpack remove",
                self.root_path.join(as_path(parent)).join(as_path(base)),
                e,
            )
        })
    }

    /// Takes the directory `rel` beneath the root, from the cache or resolved in root,
    /// creating it and its missing ancestors. Hand it back with [`Self::put_parent`].
    fn take_parent(&mut self, rel: &[u8], entry: &[u8]) -> Result<OwnedFd> {
        if let Some(fd) = self.cache_fd.take() {
            if self.cache_key == rel {
                return Ok(fd);
            }
        }
        match open_in_root(self.root.as_fd(), rel) {
            Ok(fd) => Ok(fd),
            Err(Errno::NOENT) => self.create_dirs(rel, entry),
            Err(e) => Err(self.resolve_error(e, rel, entry)),
        }
    }

    /// Caches `fd` as directory `rel`, unless something was removed since it was resolved.
    fn put_parent(&mut self, rel: &[u8], fd: OwnedFd) {
        if std::mem::take(&mut self.stale) {
            return;
        }
        self.cache_key.clear();
        self.cache_key.extend_from_slice(rel);
        self.cache_fd = Some(fd);
    }

    fn resolve_error(&self, err: Errno, rel: &[u8], entry: &[u8]) -> Error {
        let rel = String::from_utf8_lossy(rel);
        match err {
            Errno::NOTDIR => bad(entry, format_args!("{rel:?} is not a directory")),
            Errno::LOOP => bad(
                entry,
                format_args!("{rel:?}: too many levels of symbolic links"),
            ),
            Errno::XDEV => bad(entry, format_args!("{rel:?} leads outside the layer")),
            e => Error::io(
                "unpack open directory",
                self.root_path.join(as_path(rel.as_bytes())),
                e.into(),
            ),
        }
    }

    /// Creates the missing directories of `rel` (whose nearest existing ancestor resolves),
    /// each with the metadata of the same directory in the parent layers.
    fn create_dirs(&mut self, rel: &[u8], entry: &[u8]) -> Result<OwnedFd> {
        let mut dir = open_in_root(self.root.as_fd(), b"")
            .map_err(|e| self.io("unpack open directory", b"", e))?;
        let mut missing = false;
        let mut end = 0;
        for component in rel.split(|&b| b == b'/') {
            end += component.len();
            let prefix = &rel[..end];
            end += 1;
            if !missing {
                match open_in_root(self.root.as_fd(), prefix) {
                    Ok(fd) => {
                        dir = fd;
                        continue;
                    }
                    Err(Errno::NOENT) => missing = true,
                    Err(e) => return Err(self.resolve_error(e, prefix, entry)),
                }
            }
            match rfs::mkdirat(&dir, component, Mode::from_raw_mode(0o700)) {
                Ok(()) => {}
                Err(Errno::EXIST) => {
                    let prefix = String::from_utf8_lossy(prefix);
                    return Err(bad(entry, format_args!("{prefix:?} is a dangling symlink")));
                }
                Err(e) => return Err(self.io("unpack create directory", prefix, e)),
            }
            let fd = open_dir(dir.as_fd(), component)
                .map_err(|e| self.io("unpack open directory", prefix, e))?;
            self.init_implicit_dir(fd.as_fd(), prefix)?;
            dir = fd;
        }
        Ok(dir)
    }

    /// Gives a directory the tar did not list the metadata of its lower counterpart,
    /// or 0755 root:root.
    fn init_implicit_dir(&mut self, fd: BorrowedFd<'_>, rel: &[u8]) -> Result<()> {
        let Some(template) = self.lower_template(rel) else {
            rfs::fchown(fd, Some(Uid::ROOT), Some(Gid::ROOT))
                .map_err(|e| self.io("unpack set owner", rel, e))?;
            return rfs::fchmod(fd, Mode::from_raw_mode(0o755))
                .map_err(|e| self.io("unpack set mode", rel, e));
        };
        let meta = Meta {
            mode: template.mode,
            uid: template.uid,
            gid: template.gid,
            mtime: template.mtime,
            xattrs: template.xattrs,
        };
        self.set_fd_meta(fd, &meta, rel)?;
        self.dir_times.insert(rel.to_vec(), meta.mtime);
        Ok(())
    }

    /// The metadata of directory `rel` as the parent layers show it: from the topmost layer
    /// that has anything at `rel` (a whiteout or file there hides the lower ones).
    fn lower_template(&mut self, rel: &[u8]) -> Option<Template> {
        let parents = self.parents;
        let lowers = self.lowers.get_or_insert_with(|| {
            parents
                .iter()
                .map(|p| {
                    rfs::open(
                        p,
                        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .ok()
                })
                .collect()
        });
        let resolve =
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_SYMLINKS;
        for lower in lowers.iter().flatten() {
            let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let found = match rfs::openat2(lower, rel, flags, Mode::empty(), resolve) {
                Ok(fd) => fd,
                Err(Errno::NOENT) => continue,
                Err(_) => return None,
            };
            let st = rfs::fstat(&found).ok().filter(is_dir)?;
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let xattrs = rfs::openat2(lower, rel, flags, Mode::empty(), resolve)
                .map(|fd| read_xattrs(fd.as_fd()))
                .unwrap_or_default();
            return Some(Template {
                mode: st.st_mode & 0o7777,
                uid: Uid::from_raw(st.st_uid),
                gid: Gid::from_raw(st.st_gid),
                mtime: Timespec {
                    // `st_mtime` is `i64` or `c_long` depending on the target.
                    #[allow(clippy::useless_conversion)]
                    tv_sec: st.st_mtime.try_into().unwrap_or(0),
                    tv_nsec: st.st_mtime_nsec.try_into().unwrap_or(0),
                },
                xattrs,
            });
        }
        None
    }

    /// Sets the directory mtimes, deepest first, once all their children are written.
    fn finish(&mut self) -> Result<()> {
        let mut dirs: Vec<(Vec<u8>, Timespec)> = self.dir_times.drain().collect();
        dirs.sort_unstable_by(|a, b| depth(&b.0).cmp(&depth(&a.0)).then_with(|| a.0.cmp(&b.0)));
        self.cache_fd = None;
        for (name, mtime) in &dirs {
            let times = timestamps(*mtime);
            if name.is_empty() {
                rfs::futimens(&self.root, &times)
                    .map_err(|e| self.io("unpack set mtime", name, e))?;
                continue;
            }
            let (parent, base) = split_last(name);
            let dir = match self.cache_fd.take() {
                Some(fd) if self.cache_key == parent => fd,
                _ => match open_in_root(self.root.as_fd(), parent) {
                    Ok(fd) => fd,
                    // Replaced by a later entry.
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                    Err(e) => return Err(self.io("unpack open directory", parent, e)),
                },
            };
            let still_dir =
                rfs::statat(&dir, base, AtFlags::SYMLINK_NOFOLLOW).is_ok_and(|st| is_dir(&st));
            if still_dir {
                rfs::utimensat(&dir, base, &times, AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.io("unpack set mtime", name, e))?;
            }
            self.put_parent(parent, dir);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
