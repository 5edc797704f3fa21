//! ExecSync in one ttrpc round trip, the shim's side: the `cairn.shim.v1.Exec` service
//! next to containerd's Task service on the pod's shim socket (its wire and cairnd's
//! client: [`cairn_proto::shim::exec`]).
//!
//! `ExecSync` runs an exec to its end in a single call: the shim launches the process
//! without a start handshake ([`crate::launch::exec_now`]), reads its stdout and stderr
//! from pipes into memory and waits for its exit or kills it at the deadline
//! ([`crate::collect`]), reaps it and forgets it. `Cancel` kills the exec now, or as soon as it exists if the `ExecSync` call
//! has not got that far yet.

use std::collections::HashMap;

use cairn_proto::shim::exec::{CancelRequest, ExecSyncRequest, CANCEL, EXEC_SYNC, SERVICE};
use containerd_shim_protos::ttrpc::{self, MethodHandler, TtrpcContext};

use crate::task::TaskService;

// ---- shim side ------------------------------------------------------------------------

/// The service's methods, to register on the shim's ttrpc server next to the Task
/// service.
pub fn service(task: TaskService) -> HashMap<String, Box<dyn MethodHandler + Send + Sync>> {
    let mut methods: HashMap<String, Box<dyn MethodHandler + Send + Sync>> = HashMap::new();
    methods.insert(
        format!("/{SERVICE}/{EXEC_SYNC}"),
        Box::new(ExecSyncMethod(task.clone())),
    );
    methods.insert(format!("/{SERVICE}/{CANCEL}"), Box::new(CancelMethod(task)));
    methods
}

struct ExecSyncMethod(TaskService);
struct CancelMethod(TaskService);

fn bad_request(what: &str, e: String) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(
        ttrpc::Code::INVALID_ARGUMENT,
        format!("{what}: {e}"),
    ))
}

/// Sends `result` (payload or error status) as the answer to the request of `ctx`.
fn respond(ctx: &TtrpcContext, result: Result<Vec<u8>, ttrpc::Error>) -> ttrpc::Result<()> {
    let (status, payload) = match result {
        Ok(payload) => (ttrpc::get_status(ttrpc::Code::OK, ""), payload),
        Err(ttrpc::Error::RpcStatus(s)) => (s, Vec::new()),
        Err(e) => (
            ttrpc::get_status(ttrpc::Code::UNKNOWN, e.to_string()),
            Vec::new(),
        ),
    };
    let mut res = ttrpc::Response::new();
    res.set_status(status);
    res.payload = payload;
    ctx.respond(ctx.mh.stream_id, res)
}

impl MethodHandler for ExecSyncMethod {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        let result = ExecSyncRequest::decode(&req.payload)
            .map_err(|e| bad_request("ExecSync request", e))
            .and_then(|r| self.0.exec_sync(&r))
            .map(|r| r.encode());
        respond(&ctx, result)
    }
}

impl MethodHandler for CancelMethod {
    fn handler(&self, ctx: TtrpcContext, req: ttrpc::Request) -> ttrpc::Result<()> {
        let result = CancelRequest::decode(&req.payload)
            .map_err(|e| bad_request("Cancel request", e))
            .map(|r| {
                self.0.cancel_exec_sync(&r.id, &r.exec_id);
                Vec::new()
            });
        respond(&ctx, result)
    }
}
