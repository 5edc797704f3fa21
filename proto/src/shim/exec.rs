//! ExecSync in one ttrpc round trip: the wire of the shim's `cairn.shim.v1.Exec`
//! service (served next to containerd's Task service on the pod's shim socket, by
//! `cairn-shim`'s `execsync`), and cairnd's client for it.
//!
//! `ExecSync` runs an exec to its end in a single call: the shim launches the process
//! without a start handshake, reads its stdout and stderr
//! from pipes into memory, waits for its exit (or kills it at the deadline), reaps it and
//! forgets it. The Task API needs four calls for the same (Exec, Start, Wait, Delete) and
//! output files in the bundle. `Cancel` is cairnd's guard for a caller that went away
//! (kubelet's deadline, a client that hung up): it kills the exec now, or as soon as it
//! exists if the `ExecSync` call has not got that far yet.
//!
//! Wire format: ttrpc requests to service [`SERVICE`], methods [`EXEC_SYNC`] and
//! [`CANCEL`]; payloads in protobuf encoding, written and read by hand here (no generated
//! code), as if from this schema:
//!
//! ```proto
//! message ExecSyncRequest {
//!   string id = 1;          // the container
//!   string exec_id = 2;     // unique among the container's execs
//!   bytes process = 3;      // JSON OCI Process, as ExecProcessRequest.spec holds it
//!   uint64 timeout_ms = 4;  // 0: none; else the process is SIGKILLed at the deadline
//! }
//! message ExecSyncResponse {
//!   int32 exit_code = 1;        // 128 + signal when killed
//!   bytes stdout = 2;           // the first OUTPUT_LIMIT bytes
//!   bytes stderr = 3;           // the first OUTPUT_LIMIT bytes
//!   bool timed_out = 4;         // killed at the deadline
//!   uint64 stdout_dropped = 5;  // bytes read past the limit and dropped
//!   uint64 stderr_dropped = 6;
//! }
//! message CancelRequest {       // answered with google.protobuf.Empty
//!   string id = 1;
//!   string exec_id = 2;
//! }
//! ```
//!
//! Errors are ttrpc statuses with the codes and messages of the Task API's Exec and Start
//! (e.g. FAILED_PRECONDITION `exec: "nosuch": executable file not found in $PATH`). A shim
//! from before this service answers INVALID_ARGUMENT `/cairn.shim.v1.Exec/ExecSync does
//! not exist`: [`exec_sync`] returns `None` then, and cairnd takes the Task API path.

use containerd_shim_protos::protobuf::rt::WireType;
use containerd_shim_protos::protobuf::{CodedInputStream, CodedOutputStream};
use containerd_shim_protos::ttrpc;

/// The ttrpc service name.
pub const SERVICE: &str = "cairn.shim.v1.Exec";
/// Runs an exec to its end: [`ExecSyncRequest`] → [`ExecSyncResponse`].
pub const EXEC_SYNC: &str = "ExecSync";
/// Kills an exec sync whose caller went away: [`CancelRequest`] → empty.
pub const CANCEL: &str = "Cancel";

/// How much of each stream an ExecSync keeps (the rest is read and dropped, so that the
/// process never blocks on a full pipe): 2 MiB less 1 KiB, so that both streams and the
/// envelope fit in one ttrpc message (4 MiB at most). cairnd's Task API fallback keeps
/// the same amount.
pub const OUTPUT_LIMIT: usize = (2 << 20) - 1024;

type ProtoResult<T> = containerd_shim_protos::protobuf::Result<T>;

/// One exec to run to its end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSyncRequest {
    pub id: String,
    pub exec_id: String,
    /// JSON OCI `Process`.
    pub process: Vec<u8>,
    /// 0: no deadline.
    pub timeout_ms: u64,
}

/// How an exec sync ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecSyncResponse {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Killed at the deadline.
    pub timed_out: bool,
    /// Output past [`OUTPUT_LIMIT`], read and dropped.
    pub stdout_dropped: u64,
    pub stderr_dropped: u64,
}

/// The exec sync to cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CancelRequest {
    pub id: String,
    pub exec_id: String,
}

fn encode(write: impl FnOnce(&mut CodedOutputStream<'_>) -> ProtoResult<()>) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut out = CodedOutputStream::vec(&mut buf);
    // Writing into a Vec only fails on allocation failure, which aborts anyway.
    let written = write(&mut out).and_then(|()| out.flush());
    drop(out);
    debug_assert!(written.is_ok());
    buf
}

/// Reads fields until the end, handing each (number, stream) to `field`, which returns
/// false for numbers it does not know (skipped, for newer peers).
fn decode(
    buf: &[u8],
    mut field: impl FnMut(u32, &mut CodedInputStream<'_>) -> ProtoResult<bool>,
) -> Result<(), String> {
    let mut input = CodedInputStream::from_bytes(buf);
    let mut step = || -> ProtoResult<bool> {
        let Some(tag) = input.read_raw_tag_or_eof()? else {
            return Ok(false);
        };
        if !field(tag >> 3, &mut input)? {
            let wire = WireType::new(tag & 7).ok_or_else(|| {
                containerd_shim_protos::protobuf::Error::from(std::io::Error::other(format!(
                    "bad wire type in tag {tag}"
                )))
            })?;
            input.skip_field(wire)?;
        }
        Ok(true)
    };
    loop {
        match step() {
            Ok(true) => continue,
            Ok(false) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

impl ExecSyncRequest {
    pub fn encode(&self) -> Vec<u8> {
        encode(|out| {
            out.write_string(1, &self.id)?;
            out.write_string(2, &self.exec_id)?;
            out.write_bytes(3, &self.process)?;
            out.write_uint64(4, self.timeout_ms)
        })
    }

    pub fn decode(buf: &[u8]) -> Result<ExecSyncRequest, String> {
        let mut r = ExecSyncRequest::default();
        decode(buf, |n, input| {
            match n {
                1 => r.id = input.read_string()?,
                2 => r.exec_id = input.read_string()?,
                3 => r.process = input.read_bytes()?,
                4 => r.timeout_ms = input.read_uint64()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(r)
    }
}

impl ExecSyncResponse {
    pub fn encode(&self) -> Vec<u8> {
        encode(|out| {
            out.write_int32(1, self.exit_code)?;
            out.write_bytes(2, &self.stdout)?;
            out.write_bytes(3, &self.stderr)?;
            out.write_bool(4, self.timed_out)?;
            out.write_uint64(5, self.stdout_dropped)?;
            out.write_uint64(6, self.stderr_dropped)
        })
    }

    pub fn decode(buf: &[u8]) -> Result<ExecSyncResponse, String> {
        let mut r = ExecSyncResponse::default();
        decode(buf, |n, input| {
            match n {
                1 => r.exit_code = input.read_int32()?,
                2 => r.stdout = input.read_bytes()?,
                3 => r.stderr = input.read_bytes()?,
                4 => r.timed_out = input.read_bool()?,
                5 => r.stdout_dropped = input.read_uint64()?,
                6 => r.stderr_dropped = input.read_uint64()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(r)
    }
}

impl CancelRequest {
    pub fn encode(&self) -> Vec<u8> {
        encode(|out| {
            out.write_string(1, &self.id)?;
            out.write_string(2, &self.exec_id)
        })
    }

    pub fn decode(buf: &[u8]) -> Result<CancelRequest, String> {
        let mut r = CancelRequest::default();
        decode(buf, |n, input| {
            match n {
                1 => r.id = input.read_string()?,
                2 => r.exec_id = input.read_string()?,
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(r)
    }
}

fn request(method: &str, payload: Vec<u8>) -> ttrpc::Request {
    let mut req = ttrpc::Request::new();
    req.service = SERVICE.to_string();
    req.method = method.to_string();
    req.payload = payload;
    req
}

/// Whether `e` is a shim's answer that it has no such method (a shim from before this
/// service).
fn is_missing_method(e: &ttrpc::Error, method: &str) -> bool {
    let ttrpc::Error::RpcStatus(s) = e else {
        return false;
    };
    match s.code() {
        ttrpc::Code::UNIMPLEMENTED => true,
        ttrpc::Code::INVALID_ARGUMENT | ttrpc::Code::NOT_FOUND => {
            s.message == format!("/{SERVICE}/{method} does not exist")
        }
        _ => false,
    }
}

/// Runs `req` through the shim's ExecSync; `Ok(None)`: the shim does not have it.
pub async fn exec_sync(
    client: &ttrpc::asynchronous::Client,
    req: &ExecSyncRequest,
) -> Result<Option<ExecSyncResponse>, ttrpc::Error> {
    let res = match client.request(request(EXEC_SYNC, req.encode())).await {
        Ok(res) => res,
        Err(e) if is_missing_method(&e, EXEC_SYNC) => return Ok(None),
        Err(e) => return Err(e),
    };
    ExecSyncResponse::decode(&res.payload)
        .map(Some)
        .map_err(|e| ttrpc::Error::Others(format!("ExecSync response: {e}")))
}

/// Asks the shim to kill exec sync `exec_id` of container `id`, now or when it starts.
pub async fn cancel(
    client: &ttrpc::asynchronous::Client,
    id: &str,
    exec_id: &str,
) -> Result<(), ttrpc::Error> {
    let req = CancelRequest {
        id: id.to_string(),
        exec_id: exec_id.to_string(),
    };
    client.request(request(CANCEL, req.encode())).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let req = ExecSyncRequest {
            id: "c1".into(),
            exec_id: "e1".into(),
            process: br#"{"args":["true"]}"#.to_vec(),
            timeout_ms: 5000,
        };
        assert_eq!(ExecSyncRequest::decode(&req.encode()).unwrap(), req);
        let res = ExecSyncResponse {
            exit_code: -3,
            stdout: b"out".to_vec(),
            stderr: vec![0, 255, 10],
            timed_out: true,
            stdout_dropped: 7,
            stderr_dropped: 0,
        };
        assert_eq!(ExecSyncResponse::decode(&res.encode()).unwrap(), res);
        let cancel = CancelRequest {
            id: "c".into(),
            exec_id: "e".into(),
        };
        assert_eq!(CancelRequest::decode(&cancel.encode()).unwrap(), cancel);
        assert_eq!(
            ExecSyncResponse::decode(&[]).unwrap(),
            ExecSyncResponse::default()
        );
    }

    #[test]
    fn unknown_fields_are_skipped_and_garbage_fails() {
        let mut buf = encode(|out| {
            out.write_string(9, "from a newer peer")?;
            out.write_uint64(10, 1)
        });
        buf.extend(
            CancelRequest {
                id: "c".into(),
                exec_id: "e".into(),
            }
            .encode(),
        );
        let r = CancelRequest::decode(&buf).unwrap();
        assert_eq!((r.id.as_str(), r.exec_id.as_str()), ("c", "e"));
        assert!(ExecSyncRequest::decode(&[0x0a, 0x05, b'a']).is_err());
    }

    #[test]
    fn the_limit_fits_one_ttrpc_message() {
        let res = ExecSyncResponse {
            exit_code: -1,
            stdout: vec![1; OUTPUT_LIMIT],
            stderr: vec![2; OUTPUT_LIMIT],
            timed_out: true,
            stdout_dropped: u64::MAX,
            stderr_dropped: u64::MAX,
        };
        let mut envelope = ttrpc::Response::new();
        envelope.set_status(ttrpc::get_status(ttrpc::Code::OK, ""));
        envelope.payload = res.encode();
        let size = ttrpc::proto::Codec::size(&envelope) as usize;
        assert!(size < ttrpc::proto::MESSAGE_LENGTH_MAX, "{size}");
    }

    #[test]
    fn the_missing_method_answer_is_recognised() {
        let missing = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::INVALID_ARGUMENT,
            format!("/{SERVICE}/{EXEC_SYNC} does not exist"),
        ));
        assert!(is_missing_method(&missing, EXEC_SYNC));
        let other = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::INVALID_ARGUMENT,
            "exec process spec: bad",
        ));
        assert!(!is_missing_method(&other, EXEC_SYNC));
        let not_found = ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::NOT_FOUND,
            "container c not found in this pod",
        ));
        assert!(!is_missing_method(&not_found, EXEC_SYNC));
    }
}
