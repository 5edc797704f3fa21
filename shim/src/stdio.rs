//! A container's standard streams beyond its log, in the pod's shim: the stdin it keeps
//! open (CRI `stdin`, closed after the first attach with `stdin_once`), the clients
//! attached to its output, and the FIFOs cairnd hands over for attach and for streamed
//! execs.
//!
//! cairnd makes the FIFOs and opens its ends first (the read side of outputs without
//! blocking, stdin read-write). The shim opens its ends without blocking too, so a client
//! that left (cairnd closed its ends) is an error, never a hung thread. Closing its end is
//! how cairnd detaches: a write to a gone client's output fails with EPIPE and drops it,
//! end of file on an attach's stdin ends that attach's input (and the container's stdin
//! with `stdin_once`). The container never waits long on a client: an attached output that
//! stays full for [`SLOW_CLIENT`] is dropped.
//! Runs in cairn-shim.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// How long an attached client's output may stay full before the client is dropped.
pub const SLOW_CLIENT: Duration = Duration::from_millis(250);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Copies of a container's output for attached clients.
#[derive(Default)]
pub struct Tee {
    state: Mutex<TeeState>,
}

#[derive(Default)]
struct TeeState {
    sinks: Vec<(Stream, File)>,
    /// Streams that have ended: a sink added for them is closed at once.
    ended: Vec<Stream>,
}

impl Tee {
    /// Adds a client's output (opened non-blocking, see [`open_writer`]); it gets what
    /// the container writes from now on.
    pub fn add(&self, stream: Stream, sink: File) {
        let mut state = lock(&self.state);
        if !state.ended.contains(&stream) {
            state.sinks.push((stream, sink));
        }
    }

    /// Whether any client listens.
    pub fn is_empty(&self) -> bool {
        lock(&self.state).sinks.is_empty()
    }

    /// Writes `data` to every client of `stream`; a client that went away, or that reads
    /// too slowly, is dropped.
    pub fn write(&self, stream: Stream, data: &[u8]) {
        let mut state = lock(&self.state);
        state
            .sinks
            .retain_mut(|(s, f)| *s != stream || write_within(f, data, SLOW_CLIENT));
    }

    /// The container's `stream` has ended: its clients see end of file.
    pub fn end(&self, stream: Stream) {
        let mut state = lock(&self.state);
        state.ended.push(stream);
        state.sinks.retain(|(s, _)| *s != stream);
    }
}

/// Writes all of `data` to a non-blocking `sink`, waiting at most `limit` for room at a
/// time; false if the sink is gone or stayed full.
fn write_within(sink: &mut File, mut data: &[u8], limit: Duration) -> bool {
    while !data.is_empty() {
        match sink.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let mut pfd = libc::pollfd {
                    fd: sink.as_raw_fd(),
                    events: libc::POLLOUT,
                    revents: 0,
                };
                let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
                // SAFETY: poll on one valid pollfd.
                if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
    true
}

/// The write side of a container's open stdin (a pipe, or its terminal's master).
pub struct Stdin {
    writer: Mutex<Option<File>>,
    once: bool,
    /// The writer is a terminal's master: closing it does not end the container's input,
    /// the terminal's end-of-file character does.
    terminal: bool,
}

impl Stdin {
    pub fn new(writer: File, once: bool, terminal: bool) -> Arc<Stdin> {
        Arc::new(Stdin {
            writer: Mutex::new(Some(writer)),
            once,
            terminal,
        })
    }

    /// Closes it: the container reads end of file.
    pub fn close(&self) {
        let writer = lock(&self.writer).take();
        if let (Some(mut master), true) = (writer, self.terminal) {
            let _ = master.write_all(&[EOF_CHAR]);
        }
    }

    fn write(&self, data: &[u8]) -> bool {
        match lock(&self.writer).as_mut() {
            Some(w) => w.write_all(data).is_ok(),
            None => false,
        }
    }

    /// Copies `src` (an attach's stdin) into the container's stdin on a small thread,
    /// until either ends; with `stdin_once` the container's stdin is closed after it.
    pub fn spawn_feeder(self: &Arc<Self>, src: File) -> std::io::Result<()> {
        let stdin = self.clone();
        std::thread::Builder::new()
            .name("attach-stdin".into())
            .stack_size(64 * 1024)
            .spawn(move || {
                pump(src, |data| stdin.write(data));
                if stdin.once {
                    stdin.close();
                }
            })
            .map(|_| ())
    }
}

/// Reads `src` until end of file or error, handing each chunk to `sink` until it refuses.
pub fn pump(mut src: File, mut sink: impl FnMut(&[u8]) -> bool) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match src.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if !sink(&buf[..n]) {
                    return;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // EIO: a terminal's other side closed.
            Err(_) => return,
        }
    }
}

/// Copies `src` to `dst` on a small thread until either ends.
pub fn spawn_copy(name: &str, src: File, mut dst: File) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(name.into())
        .stack_size(64 * 1024)
        .spawn(move || pump(src, |data| dst.write_all(data).is_ok()))
        .map(|_| ())
}

/// Copies `src` into a terminal's master on a small thread; when `src` ends, sends the
/// terminal's end-of-file character (^D) so that a shell reading it exits as it would
/// when its user leaves.
pub fn spawn_terminal_input(src: File, mut master: File) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("tty-stdin".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            pump(src, |data| master.write_all(data).is_ok());
            let _ = master.write_all(&[EOF_CHAR]);
        })
        .map(|_| ())
}

/// A terminal's default end-of-file character (^D).
const EOF_CHAR: u8 = 4;

/// Opens the shim's end of an output FIFO without blocking: fails (ENXIO) if cairnd no
/// longer holds the read side. The descriptor stays non-blocking, for [`Tee`].
pub fn open_writer(path: &str) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
}

/// Opens the shim's end of an input FIFO without blocking, then makes it blocking for
/// the thread or process that reads it.
pub fn open_reader(path: &str) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    set_blocking(&f)?;
    Ok(f)
}

/// Clears O_NONBLOCK.
pub fn set_blocking(f: &impl AsFd) -> std::io::Result<()> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    let flags = fcntl(f, FcntlArg::F_GETFL).map_err(std::io::Error::from)?;
    let flags = OFlag::from_bits_truncate(flags) & !OFlag::O_NONBLOCK;
    fcntl(f, FcntlArg::F_SETFL(flags)).map_err(std::io::Error::from)?;
    Ok(())
}

/// Sets a terminal's window size.
pub fn resize(master: &impl AsRawFd, width: u32, height: u32) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: u16::try_from(height).unwrap_or(u16::MAX),
        ws_col: u16::try_from(width).unwrap_or(u16::MAX),
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from the pointer; the fd is a terminal master.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A second handle on a descriptor, as a `File`.
pub fn dup_file(fd: &OwnedFd) -> std::io::Result<File> {
    fd.try_clone().map(File::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pipe() -> (File, File) {
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        (File::from(r), File::from(w))
    }

    #[test]
    fn tee_copies_per_stream_drops_gone_clients_and_ends() {
        let tee = Tee::default();
        let (mut out_r, out_w) = pipe();
        let (gone_r, gone_w) = pipe();
        tee.add(Stream::Stdout, out_w);
        tee.add(Stream::Stdout, gone_w);
        drop(gone_r);
        tee.write(Stream::Stdout, b"hello");
        tee.write(Stream::Stderr, b"not for stdout");
        tee.end(Stream::Stdout);
        assert!(tee.is_empty());
        let mut got = String::new();
        out_r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello");
        // A client arriving after the end gets end of file at once.
        let (mut late_r, late_w) = pipe();
        tee.add(Stream::Stdout, late_w);
        let mut got = String::new();
        late_r.read_to_string(&mut got).unwrap();
        assert!(got.is_empty() && tee.is_empty());
    }

    #[test]
    fn a_client_that_stops_reading_is_dropped_not_waited_for() {
        let tee = Tee::default();
        let (_full_r, full_w) = pipe();
        nix::fcntl::fcntl(
            &full_w,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap();
        tee.add(Stream::Stdout, full_w);
        let started = std::time::Instant::now();
        // More than a pipe holds, never read.
        tee.write(Stream::Stdout, &vec![b'x'; 1 << 20]);
        assert!(tee.is_empty());
        assert!(started.elapsed() < SLOW_CLIENT * 4);
    }

    #[test]
    fn fifo_opens_never_block() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let path = path.to_str().unwrap();
        // No reader: the writer's open fails at once instead of hanging.
        let e = open_writer(path).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENXIO));
        // No writer: the reader's open succeeds and the descriptor blocks again.
        let r = open_reader(path).unwrap();
        let flags = nix::fcntl::fcntl(&r, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_NONBLOCK, 0);
    }

    #[test]
    fn stdin_once_closes_after_the_first_feeder() {
        let (mut c_r, c_w) = pipe();
        let stdin = Stdin::new(c_w, true, false);
        let (a_r, mut a_w) = pipe();
        stdin.spawn_feeder(a_r).unwrap();
        a_w.write_all(b"line\n").unwrap();
        drop(a_w);
        let mut got = String::new();
        c_r.read_to_string(&mut got).unwrap();
        assert_eq!(got, "line\n");
    }

    #[test]
    fn stdin_stays_open_without_once() {
        let (c_r, c_w) = pipe();
        let stdin = Stdin::new(c_w, false, false);
        let (a_r, a_w) = pipe();
        let feeder = std::thread::spawn({
            let stdin = stdin.clone();
            move || pump(a_r, |d| stdin.write(d))
        });
        drop(a_w);
        feeder.join().unwrap();
        assert!(stdin.write(b"still open"));
        let mut buf = [0u8; 10];
        (&c_r).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"still open");
    }
}
