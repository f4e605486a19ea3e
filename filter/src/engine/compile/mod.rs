//! Validation and compilation: a [`PolicyDocument`] becomes a [`Policy`] whose
//! CEL programs are compiled once, and whose referenced attributes are known,
//! so that per request nothing is parsed and only those attributes are fetched.
//!
//! Every check that can be made before traffic arrives is made here: unknown
//! fields, clusters, attributes, cluster fields, functions and variables are
//! load errors, so a bad policy never replaces a good one.
//!
//! - `rules.rs`: each rule's name, `when` and action;
//! - `expression.rs`: one CEL expression (size, parse, analysis, cost);
//! - `options.rs`: the `options:` block;
//! - `budgets.rs`: the `budgets:` section;
//! - the inventory is compiled by `../inventory.rs`, and the results that
//!   can be known at load are computed by `../precompute.rs`.

mod budgets;
mod expression;
pub mod live;
mod options;
mod rules;

use std::sync::Arc;

use super::analysis::{policy_env, FunctionCatalog};
use super::document::PolicyDocument;
use super::error::PolicyErrors;
use super::inventory::{clusters_map, compile_clusters, cost_inventory, to_val};
use super::limits::{self, Limits};
use super::live::LiveFields;
use super::policy::{content_version, Cluster, Policy, UsageOptions};
use expression::Scope;
use options::Options;
use rules::{cluster_index, RuleCompiler};

impl Policy {
    /// Parses, validates and compiles a policy document (YAML or JSON).
    pub fn load(text: &str) -> Result<Policy, PolicyErrors> {
        limits::check_document_size(text)?;
        let document = PolicyDocument::parse(text)?;
        Policy::compile(document, &content_version(text))
    }

    /// Validates and compiles a parsed document; `version` identifies its
    /// content. The live fields it may read are the built-in ones and those
    /// its `live.fields` declares.
    pub fn compile(document: PolicyDocument, version: &str) -> Result<Policy, PolicyErrors> {
        Policy::compile_with_live(document, version, None)
    }

    /// The same, with `live_fields` (readable as `cluster.live.<field>`) in
    /// place of the document's catalog when given.
    pub fn compile_with_live(
        document: PolicyDocument,
        version: &str,
        live_fields: Option<LiveFields>,
    ) -> Result<Policy, PolicyErrors> {
        let (limits, mut errors) = Limits::from_document(document.options.limits.as_ref());
        limits::check_counts(&document, &limits, &mut errors);
        if !errors.is_empty() {
            // Nothing is compiled for a policy over its size limits.
            return Err(PolicyErrors(errors));
        }
        let env = Arc::new(policy_env());
        let known = FunctionCatalog::new(&env);
        let (clusters, cluster_fields) = compile_clusters(&document, &mut errors);
        let inventory = cost_inventory(&clusters);
        let names: Vec<String> = clusters.iter().map(|(n, _)| n.clone()).collect();
        let (live_options, catalog) = live::compile(document.live.as_ref(), &names, &mut errors);
        let live_fields = live_fields.unwrap_or(catalog);
        let budgets = budgets::compile(&document.budgets, &names, &mut errors);
        let budget_limits: Vec<(String, f64)> =
            budgets.iter().map(|b| (b.name.clone(), b.limit)).collect();

        let scope = Scope {
            env: &env,
            known: &known,
            cluster_fields: &cluster_fields,
            live_fields: &live_fields,
            inventory: &inventory,
            limits: &limits,
            budgets: &budget_limits,
        };
        let mut compiler = RuleCompiler::new(scope, &names);
        let rules: Vec<_> = (document.rules.iter().enumerate())
            .filter_map(|(i, rule)| compiler.compile(i, rule, &mut errors))
            .collect();
        let default = document.default.as_deref().and_then(|name| {
            cluster_index(&names, name, "default")
                .map_err(|e| errors.push(e))
                .ok()
        });
        let options = Options::compile(&document.options, &mut errors);
        let decision_log = super::decision_log::DecisionLog::compile(
            document.options.decision_log.as_ref(),
            &mut errors,
        );
        let usage = document.usage.as_ref().map(|usage| {
            if let Some(name) = &usage.key_header {
                options::check_header_name("usage.key_header", name, &mut errors);
            }
            UsageOptions {
                key_header: usage.key_header.clone(),
            }
        });
        if !errors.is_empty() {
            return Err(PolicyErrors(errors));
        }

        let expressions = || {
            rules
                .iter()
                .flat_map(|r| r.when.iter().chain(r.action.expressions()))
        };
        let reads_live = expressions().any(|e| e.reads_live);
        let mut live_read = Some(std::collections::BTreeSet::new());
        for e in expressions().filter(|e| e.reads_live) {
            live_read = match (live_read, &e.live_names) {
                (Some(mut all), Some(names)) => {
                    all.extend(names.iter().cloned());
                    Some(all)
                }
                _ => None,
            };
        }
        let (needs, programs) = (compiler.needs, compiler.programs);
        let mut policy = Policy {
            name: document.name,
            env,
            clusters_value: to_val(clusters_map(&clusters)),
            clusters: clusters
                .into_iter()
                .map(|(name, attributes)| Cluster {
                    name,
                    value: to_val(attributes.clone()),
                    attributes,
                })
                .collect(),
            rules,
            default,
            bound_roots: needs.roots(),
            cache_size: if needs.cacheable() {
                options.cache_size
            } else {
                0
            },
            needs,
            live_fields,
            live_options,
            reads_live,
            live_read,
            routing_header: options.routing_header,
            decision_header: options.decision_header,
            fallback_header: options.fallback_header,
            log_level: options.log_level,
            no_candidate_status: options.no_candidate_status,
            max_body_bytes: options.max_body_bytes,
            usage,
            budgets,
            decision_log,
            version: version.to_string(),
            programs,
            limits,
        };
        policy.precompute_per_cluster()?;
        Ok(policy)
    }
}
