//! cairn's image side: the content store, the registry client, layer unpack, the
//! overlay snapshotter, usage accounting and garbage collection.
//!
//! The daemon (`cairnd`) owns one [`image::ImageService`], which ties these together;
//! everything else in this crate is a building block with one job each.
//! Runs in cairnd (the image side).

pub mod content;
pub mod digest;
pub mod error;
pub mod image;
pub mod import;
pub mod layer;
pub mod layered;
pub mod manifest;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod store;
pub mod unpack;

pub use error::{Error, Result};
