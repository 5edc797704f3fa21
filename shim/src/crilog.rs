//! The CRI container log format, written by the pod's shim: one line per output line,
//! `<RFC3339Nano time> <stdout|stderr> <P|F> <text>`, where `P` marks a partial line (longer
//! than the buffer, or unterminated at the end of the stream) and `F` a full one. The file
//! can be reopened in place for kubelet's log rotation without losing a line.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::stdio::Tee;

/// Longest line written as one record; longer ones are split into `P` records.
pub const MAX_LINE: usize = 16 * 1024;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

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

/// Copies one stream of a container into its log (if it has one) and to the clients
/// attached to it, until the stream closes.
pub fn spawn_copier(
    fd: OwnedFd,
    stream: Stream,
    log: Option<Arc<LogFile>>,
    tee: Arc<Tee>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("log-{}", stream.name()))
        .stack_size(64 * 1024)
        .spawn(move || copy(File::from(fd), stream, log.as_deref(), &tee))
}

fn copy(mut src: File, stream: Stream, log: Option<&LogFile>, tee: &Tee) {
    let mut buf = vec![0u8; 32 * 1024];
    let mut lines = LineSplitter::default();
    let mut emit = |partial: bool, text: &[u8]| {
        if let Some(log) = log {
            log.record(stream, partial, text)
        }
    };
    loop {
        match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                tee.write(stream, &buf[..n]);
                lines.feed(&buf[..n], &mut emit);
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: the terminal's other side closed.
            Err(_) => break,
        }
    }
    lines.finish(&mut emit);
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
}
