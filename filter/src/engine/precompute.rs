//! Load-time results: every `require` and `order_by` that reads only the
//! inventory is evaluated once per cluster when the policy loads, within the
//! evaluation budget, so that no request evaluates it again. One that reads
//! live cluster state is not: its value changes with each snapshot.

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use cel::Context;

use super::budget;
use super::decide::Inventory;
use super::error::{PolicyError, PolicyErrors};
use super::live::Reads;
use super::policy::Policy;

impl Policy {
    /// Evaluates, for every cluster, each `require` and `order_by` that reads
    /// only the inventory: their results cannot change while the policy is loaded.
    ///
    /// All of it shares one evaluation budget; a policy whose precomputation
    /// would spend more, by estimate or in fact, is refused.
    pub(crate) fn precompute_per_cluster(&mut self) -> Result<(), PolicyErrors> {
        let budget = self.limits.evaluation_budget;
        let clusters = self.clusters.len() as u64;
        let mut estimated: u64 = 0;
        for (r, rule) in self.rules.iter().enumerate() {
            if let Some(e) = rule.action.per_cluster() {
                if e.reads == Reads::Inventory {
                    estimated = estimated.saturating_add(e.cost.saturating_mul(clusters));
                    if estimated > budget {
                        return Err(PolicyError::new(
                            format!("rule '{}' (rules[{r}])", rule.name),
                            format!(
                                "evaluating the inventory-only expressions up to this rule for {clusters} clusters at load is estimated at {estimated}, over the evaluation budget of {budget} (options.limits.evaluation_budget)"
                            ),
                        )
                        .into());
                    }
                }
            }
        }
        let mut results = Vec::new();
        {
            let inventory = Inventory {
                policy: self,
                live: None,
                current: AtomicUsize::new(0),
            };
            let mut context = Context::with_env(self.env.clone());
            context.set_variable_resolver(&inventory);
            budget::start(budget);
            for (r, rule) in self.rules.iter().enumerate() {
                let Some(expression) = rule.action.per_cluster() else {
                    continue;
                };
                if expression.reads != Reads::Inventory {
                    continue;
                }
                let per_cluster = (0..self.clusters.len())
                    .map(|c| {
                        inventory.current.store(c, AtomicOrdering::Relaxed);
                        expression.evaluate(&context)
                    })
                    .collect::<Vec<_>>();
                if budget::exhausted() {
                    return Err(PolicyError::new(
                        format!("rule '{}' (rules[{r}])", rule.name),
                        format!(
                            "evaluating the inventory-only expressions at load exceeded the evaluation budget of {budget} (options.limits.evaluation_budget)"
                        ),
                    )
                    .into());
                }
                results.push((r, per_cluster));
            }
        }
        for (r, per_cluster) in results {
            if let Some(e) = self.rules[r].action.per_cluster_mut() {
                e.per_cluster = Some(per_cluster);
            }
        }
        Ok(())
    }
}
