//! Deciding one request: constraints and denials first, then selection.
//!
//! 1. Every `deny` and `require` rule, in document order. A matching `deny`
//!    ends the decision. A matching `require` keeps only the candidates for
//!    which it is true; candidates are only ever removed, so nothing later can
//!    route outside a constraint.
//! 2. If no candidate is left, the request is denied (`no_candidate_status`).
//! 3. `prefer` and `order_by` rules, in document order: the first that picks a
//!    surviving candidate decides; one whose clusters are all excluded falls through.
//! 4. Else `default`, if it survived; else the first surviving cluster in
//!    inventory order.
//!
//! Evaluation errors never widen what a request may reach: an error in a
//! `require` excludes that cluster; an error in the `when` of a `require` or
//! `deny` applies the rule; an error in the `when` of a selection rule, or in
//! an `order_by` key, skips that rule or cluster.

use std::cell::OnceCell;
use std::cmp::Ordering;

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use super::attributes::{AttributeHost, Attributes, Fetched, ROOTS};
use super::budget;
use super::decision::{Decision, Outcome, StepResult, Trace, TraceStep};
use super::live_view::LiveView;
use super::policy::{Action, Expression, Policy};
use cel::common::value::CowVal;
use cel::context::VariableResolver;
use cel::{Context, Value};

impl Policy {
    /// Decides one request, fetching from `host` only the attributes the
    /// policy reads. Uncached: a [`super::Router`] adds the decision cache.
    /// Live cluster state is absent: a [`super::Router`] holds the snapshot.
    pub fn decide(&self, host: &mut dyn AttributeHost, trace: bool) -> Decision {
        let fetched = Fetched::fetch(host, &self.needs);
        self.decide_with(&fetched.into_attributes(&self.needs), None, trace)
    }

    /// Decides one request from attributes already fetched, under a live
    /// snapshot (`None`: every live value is absent).
    pub(crate) fn decide_with(
        &self,
        attributes: &Attributes,
        live: Option<&LiveView>,
        trace: bool,
    ) -> Decision {
        budget::start(self.limits.evaluation_budget);
        let inventory = Inventory {
            policy: self,
            live,
            current: AtomicUsize::new(0),
        };
        let mut run = Run {
            policy: self,
            attributes,
            inventory: &inventory,
            context: OnceCell::new(),
            errors: Vec::new(),
            steps: trace.then(Vec::new),
        };
        run.decide()
    }
}

impl Policy {
    /// The same policy with every `when` left to the interpreter, and how
    /// many fast paths it had: the reference the fast paths are tested against.
    #[cfg(test)]
    pub(crate) fn without_fast_paths(mut self) -> (Policy, usize) {
        let mut removed = 0;
        for rule in &mut self.rules {
            if let Some(when) = &mut rule.when {
                removed += usize::from(when.fast.take().is_some());
            }
        }
        (self, removed)
    }
}

impl Expression {
    /// Runs the expression, charging the evaluation budget under way.
    pub(crate) fn evaluate(&self, context: &Context<'_, '_>) -> Result<Value, cel::ExecutionError> {
        Value::resolve(&self.executable, context)
    }
}

/// Serves `cluster` (the candidate being judged) and `clusters` from the
/// values converted at load time (or when the live snapshot arrived), so no
/// inventory value is copied per request.
pub(crate) struct Inventory<'a> {
    pub(crate) policy: &'a Policy,
    /// The live snapshot, for a policy that reads live state.
    pub(crate) live: Option<&'a LiveView>,
    /// Index of the candidate `cluster` names.
    pub(crate) current: AtomicUsize,
}

impl VariableResolver for Inventory<'_> {
    fn resolve<'b>(&'b self, variable: &str) -> Option<CowVal<'b, 'b>> {
        let current = self.current.load(AtomicOrdering::Relaxed);
        let value = match (variable, self.live) {
            ("cluster", Some(live)) => live.clusters.get(current)?,
            ("cluster", None) => &self.policy.clusters.get(current)?.value,
            ("clusters", Some(live)) => &live.clusters_value,
            ("clusters", None) => &self.policy.clusters_value,
            _ => return None,
        };
        Some(CowVal::Borrowed(value.as_ref()))
    }
}

struct Run<'a> {
    policy: &'a Policy,
    attributes: &'a Attributes,
    inventory: &'a Inventory<'a>,
    /// The interpreter's context, built on first use: a decision that fast
    /// paths and load-time results settle never needs one.
    context: OnceCell<Context<'a, 'a>>,
    errors: Vec<String>,
    steps: Option<Vec<TraceStep>>,
}

impl<'a> Run<'a> {
    fn context(&self) -> &Context<'a, 'a> {
        self.context.get_or_init(|| {
            let policy = self.policy;
            let mut context = Context::with_env(policy.env.clone());
            context.set_variable_resolver(self.inventory);
            // Bind only what the policy reads: each binding converts a value.
            for ((root, value), bound) in ROOTS
                .iter()
                .zip(&self.attributes.roots)
                .zip(policy.bound_roots)
            {
                if bound {
                    context.add_variable_from_value(*root, value.clone());
                }
            }
            if let Some(budget) = &self.attributes.budget {
                context.add_variable_from_value("budget", budget.clone());
            }
            context
        })
    }

    fn decide(&mut self) -> Decision {
        let mut alive: Vec<usize> = (0..self.policy.clusters.len()).collect();
        if let Some(denied) = self.constrain(&mut alive) {
            return denied;
        }
        let mut decision = self.select(&alive);
        if self.policy.fallback_header.is_some() {
            decision.fallback = self.runner_up(&decision, &alive);
        }
        decision
    }

    /// What the selection picks when the chosen cluster is out too: where a
    /// retry may go. Only candidates the constraints left qualify.
    fn runner_up(&mut self, decision: &Decision, alive: &[usize]) -> Option<String> {
        let Outcome::Route { cluster } = &decision.outcome else {
            return None;
        };
        let rest: Vec<usize> = (alive.iter().copied())
            .filter(|&c| self.policy.clusters[c].name != *cluster)
            .collect();
        if rest.is_empty() {
            return None;
        }
        // The first selection took the trace and errors; this one keeps none.
        match self.select(&rest).outcome {
            Outcome::Route { cluster } => Some(cluster),
            Outcome::Deny { .. } => None,
        }
    }

    /// Steps 1 and 2: denials and constraints, in document order. Returns
    /// the denial, if the request is denied.
    fn constrain(&mut self, alive: &mut Vec<usize>) -> Option<Decision> {
        let policy = self.policy;
        let mut emptied_by: Option<&str> = None;
        for rule in &policy.rules {
            let fail_closed = match &rule.action {
                Action::Deny { .. } | Action::Require(_) => true,
                Action::Prefer(_) | Action::OrderBy { .. } | Action::Split { .. } => continue,
            };
            let mut step_errors = Vec::new();
            if !self.when(
                rule.when.as_ref(),
                &rule.name,
                fail_closed,
                &mut step_errors,
            ) {
                self.step(&rule.name, StepResult::NotMatched, Vec::new(), step_errors);
                continue;
            }
            match &rule.action {
                Action::Deny { status, message } => {
                    self.step(&rule.name, StepResult::Denied, Vec::new(), step_errors);
                    let outcome = Outcome::Deny {
                        status: *status,
                        message: message.clone(),
                    };
                    return Some(self.finish(outcome, &rule.name, alive));
                }
                Action::Require(require) => {
                    let excluded = self.require(&rule.name, require, alive, &mut step_errors);
                    if alive.is_empty() && emptied_by.is_none() {
                        emptied_by = Some(&rule.name);
                    }
                    self.step(&rule.name, StepResult::Constrained, excluded, step_errors);
                }
                Action::Prefer(_) | Action::OrderBy { .. } | Action::Split { .. } => {}
            }
        }
        if !alive.is_empty() {
            return None;
        }
        let rule = emptied_by.unwrap_or("no-candidate");
        let outcome = Outcome::Deny {
            status: policy.no_candidate_status,
            message: format!(
                "no cluster satisfies the policy's constraints: rule '{rule}' excluded the last candidates"
            ),
        };
        Some(self.finish(outcome, rule, alive))
    }

    /// Keeps the candidates for which `require` is true; returns the names
    /// of those it excluded. An error excludes the cluster.
    fn require(
        &mut self,
        rule: &str,
        require: &Expression,
        alive: &mut Vec<usize>,
        step_errors: &mut Vec<String>,
    ) -> Vec<String> {
        let policy = self.policy;
        let mut excluded = Vec::new();
        let mut cluster_errors = Vec::new();
        alive.retain(|&c| {
            let cluster = &policy.clusters[c];
            let keep = match self.per_cluster(require, c) {
                Ok(Value::Bool(b)) => b,
                Ok(other) => {
                    cluster_errors.push(format!(
                        "rule '{rule}': require on '{}': returned {} where a bool is needed",
                        cluster.name,
                        other.type_of()
                    ));
                    false
                }
                Err(e) => {
                    cluster_errors
                        .push(format!("rule '{rule}': require on '{}': {e}", cluster.name));
                    false
                }
            };
            if !keep {
                excluded.push(cluster.name.clone());
            }
            keep
        });
        self.errors.extend(cluster_errors.iter().cloned());
        step_errors.extend(cluster_errors);
        excluded
    }

    /// Steps 3 and 4: the first selection rule that picks a surviving
    /// candidate, else the default, else the first survivor.
    fn select(&mut self, alive: &[usize]) -> Decision {
        let policy = self.policy;
        for rule in &policy.rules {
            let mut step_errors = Vec::new();
            let chosen = match &rule.action {
                Action::Deny { .. } | Action::Require(_) => continue,
                _ if !self.when(rule.when.as_ref(), &rule.name, false, &mut step_errors) => {
                    self.step(&rule.name, StepResult::NotMatched, Vec::new(), step_errors);
                    continue;
                }
                Action::Prefer(preferred) => preferred.iter().copied().find(|c| alive.contains(c)),
                Action::OrderBy { key, descending } => {
                    self.order_by(&rule.name, key, *descending, alive, &mut step_errors)
                }
                Action::Split { weight, sticky_by } => {
                    self.split(&rule.name, weight, sticky_by, alive, &mut step_errors)
                }
            };
            match chosen {
                Some(c) => {
                    let cluster = policy.clusters[c].name.clone();
                    let result = StepResult::Selected {
                        cluster: cluster.clone(),
                    };
                    self.step(&rule.name, result, Vec::new(), step_errors);
                    return self.finish(Outcome::Route { cluster }, &rule.name, alive);
                }
                None => self.step(&rule.name, StepResult::FellThrough, Vec::new(), step_errors),
            }
        }
        let (chosen, rule) = match policy.default.filter(|d| alive.contains(d)) {
            Some(d) => (d, "default"),
            None => (alive[0], "first-candidate"),
        };
        let cluster = policy.clusters[chosen].name.clone();
        self.finish(Outcome::Route { cluster }, rule, alive)
    }

    /// Evaluates a rule's `when`. On error, `fail_closed` decides whether the rule applies.
    fn when(
        &mut self,
        when: Option<&Expression>,
        rule: &str,
        fail_closed: bool,
        step_errors: &mut Vec<String>,
    ) -> bool {
        let Some(when) = when else { return true };
        if let Some(value) = when.fast.as_ref().and_then(|f| f.eval(self.attributes)) {
            return value;
        }
        let problem = match when.evaluate(self.context()) {
            Ok(Value::Bool(b)) => return b,
            Ok(other) => format!("returned {} where a bool is needed", other.type_of()),
            Err(e) => e.to_string(),
        };
        let consequence = if fail_closed {
            "the rule applies (fail closed)"
        } else {
            "the rule is skipped"
        };
        let e = format!("rule '{rule}': when: {problem}; {consequence}");
        self.errors.push(e.clone());
        step_errors.push(e);
        fail_closed
    }

    fn per_cluster(
        &self,
        expression: &Expression,
        cluster: usize,
    ) -> Result<Value, cel::ExecutionError> {
        if let Some(result) = expression.per_cluster.as_ref().and_then(|r| r.get(cluster)) {
            return result.clone();
        }
        self.inventory
            .current
            .store(cluster, AtomicOrdering::Relaxed);
        expression.evaluate(self.context())
    }

    fn order_by(
        &mut self,
        rule: &str,
        key: &Expression,
        descending: bool,
        alive: &[usize],
        step_errors: &mut Vec<String>,
    ) -> Option<usize> {
        let mut best: Option<(usize, Value)> = None;
        for &c in alive {
            let cluster = &self.policy.clusters[c];
            let value = match self.per_cluster(key, c) {
                Ok(v @ (Value::Int(_) | Value::UInt(_) | Value::Float(_) | Value::String(_))) => v,
                Ok(other) => {
                    step_errors.push(format!(
                        "rule '{rule}': order_by on '{}': returned {}, not a number or string; cluster not ranked",
                        cluster.name,
                        other.type_of()
                    ));
                    continue;
                }
                Err(e) => {
                    step_errors.push(format!(
                        "rule '{rule}': order_by on '{}': {e}; cluster not ranked",
                        cluster.name
                    ));
                    continue;
                }
            };
            let better = match &best {
                None => true,
                Some((_, current)) => match compare(&value, current) {
                    Some(Ordering::Less) => !descending,
                    Some(Ordering::Greater) => descending,
                    Some(Ordering::Equal) => false,
                    None => {
                        step_errors.push(format!(
                            "rule '{rule}': order_by on '{}': {} cannot be compared with {}; cluster not ranked",
                            cluster.name,
                            value.type_of(),
                            current.type_of()
                        ));
                        false
                    }
                },
            };
            if better {
                best = Some((c, value));
            }
        }
        self.errors.extend(step_errors.iter().cloned());
        best.map(|(c, _)| c)
    }

    /// A weighted split by rendezvous hashing: each candidate with a
    /// positive weight scores `weight / -ln(u)`, `u` a uniform value hashed
    /// from the stickiness key and the cluster's name; the highest wins. A
    /// key keeps its cluster while that cluster stays a candidate, and only
    /// the keys of a cluster that leaves move. An error in the key skips the
    /// rule; an error in a weight leaves that cluster out.
    fn split(
        &mut self,
        rule: &str,
        weight: &Expression,
        sticky_by: &Expression,
        alive: &[usize],
        step_errors: &mut Vec<String>,
    ) -> Option<usize> {
        let key = match sticky_by.evaluate(self.context()) {
            Ok(Value::String(key)) => key,
            Ok(other) => {
                step_errors.push(format!(
                    "rule '{rule}': sticky_by returned {}, not a string; rule skipped",
                    other.type_of()
                ));
                self.errors.extend(step_errors.iter().cloned());
                return None;
            }
            Err(e) => {
                step_errors.push(format!("rule '{rule}': sticky_by: {e}; rule skipped"));
                self.errors.extend(step_errors.iter().cloned());
                return None;
            }
        };
        let mut best: Option<(usize, f64)> = None;
        for &c in alive {
            let cluster = &self.policy.clusters[c];
            let w = match self.per_cluster(weight, c) {
                Ok(Value::Int(i)) => i as f64,
                Ok(Value::UInt(u)) => u as f64,
                Ok(Value::Float(f)) => f,
                Ok(other) => {
                    step_errors.push(format!(
                        "rule '{rule}': split weight of '{}': returned {}, not a number; cluster left out",
                        cluster.name,
                        other.type_of()
                    ));
                    continue;
                }
                Err(e) => {
                    step_errors.push(format!(
                        "rule '{rule}': split weight of '{}': {e}; cluster left out",
                        cluster.name
                    ));
                    continue;
                }
            };
            if !(w.is_finite() && w > 0.0) {
                continue;
            }
            let score = w / -unit_hash(&key, &cluster.name).ln();
            if best.is_none_or(|(_, b)| score > b) {
                best = Some((c, score));
            }
        }
        self.errors.extend(step_errors.iter().cloned());
        best.map(|(c, _)| c)
    }

    fn step(&mut self, rule: &str, result: StepResult, excluded: Vec<String>, errors: Vec<String>) {
        if let Some(steps) = &mut self.steps {
            steps.push(TraceStep {
                rule: rule.to_string(),
                result,
                excluded,
                errors,
            });
        }
    }

    fn finish(&mut self, outcome: Outcome, rule: &str, alive: &[usize]) -> Decision {
        let trace = self.steps.take().map(|steps| Trace {
            steps,
            candidates: alive
                .iter()
                .map(|&c| self.policy.clusters[c].name.clone())
                .collect(),
        });
        Decision {
            outcome,
            rule: rule.to_string(),
            fallback: None,
            errors: std::mem::take(&mut self.errors),
            trace,
        }
    }
}

/// A value in (0, 1) hashed from a key and a cluster name (FNV-1a, then a
/// 64-bit finalizer so that close inputs spread).
fn unit_hash(key: &str, cluster: &str) -> f64 {
    let mut h = super::fnv1a64(key.as_bytes()) ^ super::fnv1a64(cluster.as_bytes()).rotate_left(32);
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^= h >> 33;
    ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64
}

/// Orders two sort keys: numbers with numbers (int, uint and double mixed), strings with strings.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    use super::inventory::number;
    match (a, b) {
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => number(a)?.partial_cmp(&number(b)?),
    }
}
