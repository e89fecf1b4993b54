//! HTTP plumbing shared by every service.

pub mod body;
pub mod csv;
pub mod error;
pub mod ops;
pub mod pagination;
pub mod panic;
pub mod query;
pub mod redact;
pub mod request_id;

pub use error::ApiError;
pub use request_id::RequestId;
