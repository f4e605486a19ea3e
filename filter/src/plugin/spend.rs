//! Spend budgets as the workers share them: what each key has spent in the
//! current window, in shared data under
//! `celroute.budget.v1/<name>/<fingerprint>/<window start>/<key>`, read when
//! a request is decided and charged when its response ends.
//!
//! A window's start is part of the key, so a new window starts from zero
//! without anything being reset; the fingerprint changes when what a budget
//! counts changes, so a reload that keeps the budget keeps its spend.

use proxy_wasm::hostcalls;

use super::metrics::stat_name;
use crate::engine::SpendBudget;

const PREFIX: &str = "celroute.budget.v1/";

/// The key a request spends under: its `key_header` value (`none` when the
/// header is absent), or `all` for a budget without one.
pub(super) fn key_of(budget: &SpendBudget, header: impl FnOnce(&str) -> Option<Vec<u8>>) -> String {
    match &budget.key_header {
        None => "all".to_string(),
        Some(name) => header(name).map_or_else(|| "none".to_string(), |v| stat_name(&v)),
    }
}

fn shared_key(budget: &SpendBudget, key: &str, now_secs: u64) -> String {
    format!(
        "{PREFIX}{}/{}/{}/{key}",
        budget.name,
        budget.fingerprint,
        budget.window.start(now_secs)
    )
}

fn decode(bytes: Option<&[u8]>) -> f64 {
    bytes
        .and_then(|b| b.get(..8))
        .and_then(|b| b.try_into().ok())
        .map(f64::from_le_bytes)
        .filter(|v| v.is_finite() && *v >= 0.0)
        .unwrap_or(0.0)
}

/// What `key` has spent of `budget` in the window holding `now_secs`.
pub(super) fn spent(budget: &SpendBudget, key: &str, now_secs: u64) -> f64 {
    let bytes = hostcalls::get_shared_data(&shared_key(budget, key, now_secs))
        .ok()
        .and_then(|(bytes, _)| bytes);
    decode(bytes.as_deref())
}

/// Adds `amount` to what `key` has spent in the window holding `now_secs`.
pub(super) fn charge(budget: &SpendBudget, key: &str, amount: f64, now_secs: u64) -> bool {
    super::shared::update(&shared_key(budget, key, now_secs), |bytes| {
        (decode(bytes) + amount).to_le_bytes().to_vec()
    })
}
