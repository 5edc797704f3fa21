//! The CRI container log format, written by the pod's shim: one line per output line,
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <text>`, where `P` marks a partial line (longer
//! than the buffer, or unterminated at the end of the stream) and `F` a full one. The file
//! can be reopened in place for kubelet's log rotation without losing a line.
//! Runs in cairn-shim.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::stdio::{Stream, Tee};

/// Longest line written as one record; longer ones are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// A container's log file, shared by its stdout and stderr copiers.
#[derive(Debug)]
pub struct LogFile {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
        let file = open_append(path)?;
        Ok(Arc::new(LogFile {
            path: path.to_path_buf(),
            file: Mutex::new(Some(file)),
        }))
    }

    /// Reopens the file at its path (after kubelet renamed the old one away). Lines are
    /// written under the same lock, so none is lost or split between the two files.
    pub fn reopen(&self) -> std::io::Result<()> {
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        *guard = Some(open_append(&self.path)?);
        Ok(())
    }

    /// Writes one record in a single `write`.
    pub fn record(&self, stream: Stream, partial: bool, text: &[u8]) {
        let mut line = Vec::with_capacity(text.len() + 64);
        line.extend_from_slice(timestamp().as_bytes());
        line.push(b' ');
        line.extend_from_slice(stream.name().as_bytes());
        line.extend_from_slice(if partial { b" P " } else { b" F " });
        line.extend_from_slice(text);
        line.push(b'\n');
        let mut guard = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = guard.as_mut() {
            // A full disk loses log lines, never the container.
            let _ = f.write_all(&line);
        }
    }
}

/// RFC 3339 with nanoseconds, UTC, as kubelet parses it.
pub fn timestamp() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:09}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second(),
        now.nanosecond()
    )
}

/// Splits a byte stream into CRI records and hands them to `emit(partial, text)`.
#[derive(Default)]
pub struct LineSplitter {
    pending: Vec<u8>,
}

impl LineSplitter {
    pub fn feed(&mut self, data: &[u8], emit: &mut dyn FnMut(bool, &[u8])) {
        for chunk in data.split_inclusive(|&b| b == b'\n') {
            let (text, ends_line) = match chunk.split_last() {
                Some((b'\n', text)) => (text, true),
                _ => (chunk, false),
            };
            self.pending.extend_from_slice(text);
            // A line longer than MAX_LINE goes out in P records; its tail ends it.
            while self.pending.len() > MAX_LINE {
                let rest = self.pending.split_off(MAX_LINE);
                emit(true, &self.pending);
                self.pending = rest;
            }
            if ends_line {
                emit(false, &self.pending);
                self.pending.clear();
            }
        }
    }

    /// End of stream: an unterminated last line is a partial record.
    pub fn finish(&mut self, emit: &mut dyn FnMut(bool, &[u8])) {
        if !self.pending.is_empty() {
            emit(true, &self.pending);
            self.pending.clear();
        }
    }
}

/// Copies a container's output streams into its log (if it has one) and to the clients
/// attached to them, until every stream closes: one small thread for all of them (a
/// thread costs its start on the create path and its stack in every pod).
pub fn spawn_copiers(
    outputs: Vec<(OwnedFd, Stream)>,
    log: Option<Arc<LogFile>>,
    tee: Arc<Tee>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("log".into())
        .stack_size(64 * 1024)
        .spawn(move || copy_all(outputs, log.as_deref(), &tee))
}

/// One stream being copied.
struct Source {
    file: File,
    stream: Stream,
    lines: LineSplitter,
}

fn copy_all(outputs: Vec<(OwnedFd, Stream)>, log: Option<&LogFile>, tee: &Tee) {
    let mut sources: Vec<Source> = outputs
        .into_iter()
        .map(|(fd, stream)| Source {
            file: File::from(fd),
            stream,
            lines: LineSplitter::default(),
        })
        .collect();
    let mut buf = vec![0u8; 32 * 1024];
    while !sources.is_empty() {
        let mut fds: Vec<libc::pollfd> = sources
            .iter()
            .map(|s| libc::pollfd {
                fd: s.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        // SAFETY: fds is a valid array of pollfd for its length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        let mut closed = Vec::new();
        for (i, fd) in fds.iter().enumerate() {
            if fd.revents != 0 && !copy_some(&mut sources[i], &mut buf, log, tee) {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            let mut s = sources.remove(i);
            finish(&mut s, log, tee);
        }
    }
}

/// One read of `src` into the log and the clients; false at its end.
fn copy_some(src: &mut Source, buf: &mut [u8], log: Option<&LogFile>, tee: &Tee) -> bool {
    let n = loop {
        match src.file.read(buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the terminal's other side closed.
            Err(_) => return false,
        }
    };
    if n == 0 {
        return false;
    }
    tee.write(src.stream, &buf[..n]);
    let stream = src.stream;
    src.lines.feed(&buf[..n], &mut |partial, text| {
        if let Some(log) = log {
            log.record(stream, partial, text)
        }
    });
    true
}

/// The end of a stream: its unterminated last line, and end of file for its clients.
fn finish(src: &mut Source, log: Option<&LogFile>, tee: &Tee) {
    let stream = src.stream;
    src.lines.finish(&mut |partial, text| {
        if let Some(log) = log {
            log.record(stream, partial, text)
        }
    });
    tee.end(stream);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(chunks: &[&[u8]]) -> Vec<(bool, Vec<u8>)> {
        let mut out = Vec::new();
        let mut s = LineSplitter::default();
        let mut emit = |p: bool, t: &[u8]| out.push((p, t.to_vec()));
        for c in chunks {
            s.feed(c, &mut emit);
        }
        s.finish(&mut emit);
        out
    }

    #[test]
    fn lines_across_chunks_long_lines_and_unterminated_tail() {
        let out = split(&[b"hel", b"lo\nwor", b"ld\n", b"tail"]);
        assert_eq!(
            out,
            vec![
                (false, b"hello".to_vec()),
                (false, b"world".to_vec()),
                (true, b"tail".to_vec())
            ]
        );
        let long = vec![b'x'; MAX_LINE + 10];
        let mut input = long.clone();
        input.push(b'\n');
        let out = split(&[&input]);
        assert_eq!(out.len(), 2);
        assert!(out[0].0 && out[0].1.len() == MAX_LINE);
        assert!(!out[1].0 && out[1].1.len() == 10);
        assert_eq!(split(&[b"\n"]), vec![(false, Vec::new())]);
    }

    #[test]
    fn records_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogFile::open(&path).unwrap();
        log.record(Stream::Stdout, false, b"one");
        std::fs::rename(&path, dir.path().join("c.log.1")).unwrap();
        log.reopen().unwrap();
        log.record(Stream::Stderr, true, b"two");
        let old = std::fs::read_to_string(dir.path().join("c.log.1")).unwrap();
        let new = std::fs::read_to_string(&path).unwrap();
        assert!(old.ends_with(" stdout F one\n"), "{old}");
        assert!(new.ends_with(" stderr P two\n"), "{new}");
        let ts = new.split(' ').next().unwrap();
        assert!(
            time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).is_ok()
        );
        assert_eq!(ts.len(), "2024-01-01T00:00:00.000000000Z".len());
    }

    /// One thread copies both streams, each into its own records, until both end; an
    /// unterminated last line is a partial record of its stream.
    #[test]
    fn one_copier_thread_keeps_the_streams_apart() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.log");
        let log = LogFile::open(&path).unwrap();
        let pipe = || {
            let (r, w) = nix::unistd::pipe().unwrap();
            (r, File::from(w))
        };
        let ((out_r, mut out_w), (err_r, mut err_w)) = (pipe(), pipe());
        let copier = spawn_copiers(
            vec![(out_r, Stream::Stdout), (err_r, Stream::Stderr)],
            Some(log.clone()),
            Arc::new(Tee::default()),
        )
        .unwrap();
        out_w.write_all(b"a1\n").unwrap();
        err_w.write_all(b"b1\nb2").unwrap();
        out_w.write_all(b"a2\n").unwrap();
        drop(err_w);
        out_w.write_all(b"a3").unwrap();
        drop(out_w);
        copier.join().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let records: Vec<&str> = text.lines().map(|l| l.split_once(' ').unwrap().1).collect();
        let of = |stream: &str| -> Vec<&str> {
            records
                .iter()
                .filter(|r| r.starts_with(stream))
                .copied()
                .collect()
        };
        assert_eq!(of("stdout"), ["stdout F a1", "stdout F a2", "stdout P a3"]);
        assert_eq!(of("stderr"), ["stderr F b1", "stderr P b2"]);
    }
}
