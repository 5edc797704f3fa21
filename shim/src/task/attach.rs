//! Attach (cairn's annotation on Task Connect): a running container's output tee and stdin
//! handed to cairnd's streaming server.
//! Runs in cairn-shim.

use super::*;

/// What an attach to container `id` joins: its output tee and its open stdin, if it is
/// running.
pub(super) fn attachable(
    id: &str,
    c: &Container,
) -> Result<(Arc<Tee>, Option<Arc<Stdin>>), ttrpc::Error> {
    if !c.init.started || c.init.exit.is_some() {
        return Err(err(
            ttrpc::Code::FAILED_PRECONDITION,
            format!("container {id} is not running"),
        ));
    }
    Ok((c.tee.clone(), c.stdin.clone()))
}

/// Attaches cairnd's FIFOs (JSON [`AttachPaths`]) to a container's streams. Called without
/// the containers lock: the opens do not block, but nothing here needs the lock.
pub(super) fn attach(
    id: &str,
    tee: &Tee,
    stdin: Option<&Arc<Stdin>>,
    paths: &str,
) -> ttrpc::Result<Empty> {
    let paths: AttachPaths = serde_json::from_str(paths)
        .map_err(|e| err(ttrpc::Code::INVALID_ARGUMENT, format!("attach paths: {e}")))?;
    let fail = |what: &str, e: std::io::Error| {
        err(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("attaching to container {id}: {what}: {e}"),
        )
    };
    if !paths.stdin.is_empty() && stdin.is_none() {
        return Err(err(
            ttrpc::Code::FAILED_PRECONDITION,
            format!("container {id} was not created with stdin"),
        ));
    }
    let mut sinks = Vec::new();
    for (path, stream) in [
        (&paths.stdout, Stream::Stdout),
        (&paths.stderr, Stream::Stderr),
    ] {
        if !path.is_empty() {
            sinks.push((
                stream,
                streams::open_writer(path).map_err(|e| fail(path, e))?,
            ));
        }
    }
    let feeder = match (stdin, paths.stdin.as_str()) {
        (Some(stdin), path) if !path.is_empty() => Some((
            stdin,
            streams::open_reader(path).map_err(|e| fail(path, e))?,
        )),
        _ => None,
    };
    for (stream, sink) in sinks {
        tee.add(stream, sink);
    }
    if let Some((stdin, src)) = feeder {
        stdin
            .spawn_feeder(src)
            .map_err(|e| fail("starting the stdin feeder", e))?;
    }
    Ok(Empty::default())
}
