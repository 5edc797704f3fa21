//! The single-use tokens behind streaming URLs: each CRI Exec/Attach/PortForward call
//! stores its request under a random token that one HTTP request may consume within a
//! minute (like kubelet's request cache).
//! Runs in cairnd (its streaming server).

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_proto::cri::{AttachRequest, ExecRequest, PortForwardRequest};

/// How long a token stays valid.
pub const TOKEN_TTL: Duration = Duration::from_secs(60);
/// Most tokens outstanding at once.
pub const MAX_IN_FLIGHT: usize = 1000;
/// Random bytes per token (hex-encoded in the URL).
const TOKEN_BYTES: usize = 16;

/// A request waiting for its client to connect.
#[derive(Debug, Clone)]
pub enum Cached {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

struct Entry {
    expires: Instant,
    request: Cached,
}

pub struct RequestCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, Entry>>,
}

impl RequestCache {
    pub fn new(ttl: Duration) -> RequestCache {
        RequestCache {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// Stores `request` and returns its fresh token.
    pub fn insert(&self, request: Cached) -> Result<String, tonic::Status> {
        let token = random_token()?;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.retain(|_, e| e.expires > now);
        if entries.len() >= MAX_IN_FLIGHT {
            return Err(tonic::Status::resource_exhausted(
                "maximum number of in-flight streaming requests exceeded",
            ));
        }
        entries.insert(
            token.clone(),
            Entry {
                expires: now + self.ttl,
                request,
            },
        );
        Ok(token)
    }

    /// Takes the request stored under `token`, if it exists and has not expired.
    pub fn consume(&self, token: &str) -> Option<Cached> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let entry = entries.remove(token)?;
        (entry.expires > Instant::now()).then_some(entry.request)
    }
}

fn random_token() -> Result<String, tonic::Status> {
    let mut bytes = [0u8; TOKEN_BYTES];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| tonic::Status::internal(format!("reading /dev/urandom: {e}")))?;
    Ok(hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Cached {
        Cached::Exec(ExecRequest {
            container_id: "c1".into(),
            cmd: vec!["true".into()],
            stdout: true,
            ..Default::default()
        })
    }

    #[test]
    fn tokens_are_random_and_single_use() {
        let cache = RequestCache::new(TOKEN_TTL);
        let a = cache.insert(exec()).unwrap();
        let b = cache.insert(exec()).unwrap();
        assert_ne!(a, b);
        assert_eq!(a.len(), 2 * TOKEN_BYTES);
        assert!(matches!(cache.consume(&a), Some(Cached::Exec(_))));
        assert!(cache.consume(&a).is_none());
        assert!(cache.consume("nope").is_none());
        assert!(cache.consume(&b).is_some());
    }

    #[test]
    fn tokens_expire() {
        let cache = RequestCache::new(Duration::from_millis(1));
        let token = cache.insert(exec()).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        assert!(cache.consume(&token).is_none());
    }

    #[test]
    fn in_flight_requests_are_bounded() {
        let cache = RequestCache::new(TOKEN_TTL);
        for _ in 0..MAX_IN_FLIGHT {
            cache.insert(exec()).unwrap();
        }
        let err = cache.insert(exec()).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    }
}
