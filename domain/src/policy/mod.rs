//! Policies: data documents, the decision contract and its evaluation, and the policy and
//! policy-set aggregates (management-api.md §9–§11).

pub mod bundle;
pub mod document;
pub mod templates;

pub use bundle::{Bundle, BundleDocument, BundleError, EvalError};
pub use document::{DocumentError, DocumentSummary};
pub mod policies;
pub mod policy_sets;
