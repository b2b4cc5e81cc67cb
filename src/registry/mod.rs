//! Registry access: references, pull-secret credentials, the distribution client, the tag cache.

pub mod cache;
pub mod client;
pub mod credentials;
pub mod error;
pub mod reference;

pub use cache::TagCache;
pub use client::{ClientSettings, RegistryClient, TlsMode};
pub use credentials::Credential;
pub use error::RegistryError;
pub use reference::ImageRef;
