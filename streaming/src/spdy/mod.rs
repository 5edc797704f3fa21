//! A small SPDY/3.1 implementation, server side only, as Kubernetes streaming needs it:
//! frame codec ([`frame`]), zlib header blocks ([`headers`]) and sessions ([`session`]).
//! Runs in cairnd (its streaming server).

pub mod frame;
pub mod headers;
pub mod session;

pub use headers::Headers;
pub use session::{Session, SessionConfig, SpdyStream};
