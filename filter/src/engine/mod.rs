//! The policy engine: policy document -> validated, compiled policy -> decision.
//!
//! ```text
//! document (YAML/JSON) --parse--> PolicyDocument --compile--> Policy
//! per request: AttributeHost --fetch what the policy reads--> decide --> Decision
//! ```

mod attributes;
mod budget;
mod cache;
mod compile;
mod cost;
mod decide;
mod document;
mod error;
mod fast;
pub mod limits;

pub use attributes::{AttributeHost, AttributeNeeds, Attributes};
pub use cache::{CacheStats, DEFAULT_DECISION_CACHE_SIZE};
pub use compile::{
    content_version, LogLevel, Policy, PolicyDescription, RuleDescription, DEFAULT_ROUTING_HEADER,
};
pub use decide::{Decision, Outcome, StepResult, Trace, TraceStep};
pub use document::PolicyDocument;
pub use error::{PolicyError, PolicyErrors};
pub use limits::Limits;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_limits;
