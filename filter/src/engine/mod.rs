//! The policy engine: policy document -> validated, compiled policy -> decision.
//!
//! ```text
//! document (YAML/JSON) --parse--> PolicyDocument --compile--> Policy
//! per request: AttributeHost --fetch what the policy reads--> decide --> Decision
//! ```

mod analysis;
mod attributes;
mod body;
mod budget;
mod cache;
pub(crate) mod compile;
mod cost;
mod decide;
mod decision;
pub mod decision_log;
mod depth;
mod document;
mod error;
mod fast;
mod inventory;
pub mod limits;
mod live;
mod live_view;
mod policy;
mod precompute;
mod router;
mod spending;

pub use attributes::{AttributeHost, AttributeNeeds, Attributes};
pub use body::{BodyError, BodySummary, BODY_RULE, DEFAULT_MAX_BODY_BYTES};
pub use cache::{CacheStats, Served, DEFAULT_DECISION_CACHE_SIZE};
pub use compile::live::{is_field_name, parse_duration};
pub use decision::{error_body, Decision, Outcome, StepResult, Trace, TraceStep};
pub use document::PolicyDocument;
pub use error::{PolicyError, PolicyErrors};
pub use limits::Limits;
pub use live::{default_scrape_metrics, DEFAULT_SCRAPE_METRICS};
pub use live::{FeedOptions, LiveFields, LiveOptions, LiveSnapshot, Reads, BUILTIN_FIELDS, LIVE};
pub use policy::{
    content_version, fnv1a64, LogLevel, Policy, PolicyDescription, RuleDescription, UsageOptions,
    DEFAULT_ROUTING_HEADER,
};
pub use router::{Decided, Router};
pub use spending::{SpendBudget, SpendUnit, Window};

/// A fixed, recording host for tests and benchmarks (not in the wasm build).
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_inference;
#[cfg(test)]
mod tests_limits;
#[cfg(test)]
mod tests_live;
#[cfg(test)]
mod tests_split;
