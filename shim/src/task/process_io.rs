//! The stdio ends a created process gets: pipes, the stdin FIFO, the terminal, output
//! files.
//! Runs in cairn-shim.

use super::*;

pub(super) fn pipe() -> Result<(OwnedFd, OwnedFd), ttrpc::Error> {
    nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| err(ttrpc::Code::INTERNAL, format!("pipe: {e}")))
}

/// An exec's stdin: the FIFO cairnd feeds, or /dev/null (None) without one.
pub(super) fn open_input(path: &str) -> Result<Option<OwnedFd>, ttrpc::Error> {
    if path.is_empty() {
        return Ok(None);
    }
    streams::open_reader(path)
        .map(|f| Some(OwnedFd::from(f)))
        .map_err(|e| {
            err(
                ttrpc::Code::INVALID_ARGUMENT,
                format!("exec input {path}: {e}"),
            )
        })
}

/// Joins an exec's terminal to its streams (output to `output`, `input` into it) on
/// small threads; returns a handle on the master for resizes.
pub(super) fn connect_terminal(
    master: OwnedFd,
    input: Option<OwnedFd>,
    output: OwnedFd,
) -> Result<std::fs::File, ttrpc::Error> {
    let internal = |e: std::io::Error| err(ttrpc::Code::INTERNAL, format!("exec terminal: {e}"));
    let handle = streams::dup_file(&master).map_err(internal)?;
    if let Some(input) = input {
        let to_master = streams::dup_file(&master).map_err(internal)?;
        streams::spawn_terminal_input(std::fs::File::from(input), to_master).map_err(internal)?;
    }
    let out = std::fs::File::from(output);
    streams::spawn_copy("exec-stdout", std::fs::File::from(master), out).map_err(internal)?;
    Ok(handle)
}

pub(super) fn open_output(path: &str) -> Result<OwnedFd, ttrpc::Error> {
    if path.is_empty() {
        return std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| err(ttrpc::Code::INTERNAL, format!("/dev/null: {e}")));
    }
    // Non-blocking open: a FIFO whose reader (cairnd) is gone fails instead of hanging.
    use std::os::unix::fs::OpenOptionsExt;
    let opened = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .and_then(|f| streams::set_blocking(&f).map(|()| f));
    opened.map(OwnedFd::from).map_err(|e| {
        err(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("exec output {path}: {e}"),
        )
    })
}
