//! Spend budgets (`budgets:`): how much a key (a tenant) may use per window,
//! in tokens, currency or egress bytes, and what a policy reads of them
//! (`budget.<name>.spent`, `.limit`, `.remaining`, `.exceeded`).
//!
//! The engine defines a budget and its window; the adapter keeps the
//! amounts spent (shared across the proxy's workers) and charges each
//! response once its usage is known.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use cel::objects::{Key, Map};
use cel::Value;

/// The fields of `budget.<name>`.
pub(crate) const BUDGET_FIELDS: &[&str] = &["spent", "limit", "remaining", "exceeded"];

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendUnit {
    /// Prompt plus completion tokens.
    Tokens,
    /// Tokens times the cluster's `price_per_1k_tokens` / 1000, in currency.
    Cost,
    /// Response bytes received from the cluster.
    EgressBytes,
}

impl SpendUnit {
    pub(crate) fn parse(text: &str) -> Option<SpendUnit> {
        match text {
            "tokens" => Some(SpendUnit::Tokens),
            "cost" => Some(SpendUnit::Cost),
            "egress_bytes" => Some(SpendUnit::EgressBytes),
            _ => None,
        }
    }

    /// What one response spends: its tokens, their cost at `price_per_1k`,
    /// or the bytes it brought back.
    pub fn amount(self, tokens: u64, price_per_1k: f64, bytes_out: u64) -> f64 {
        match self {
            SpendUnit::Tokens => tokens as f64,
            SpendUnit::Cost => tokens as f64 * price_per_1k / 1000.0,
            SpendUnit::EgressBytes => bytes_out as f64,
        }
    }
}

/// The period after which a budget starts again from zero (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
    Day,
    /// A calendar month.
    Month,
}

impl Window {
    pub(crate) fn parse(text: &str) -> Option<Window> {
        match text {
            "minute" => Some(Window::Minute),
            "hour" => Some(Window::Hour),
            "day" => Some(Window::Day),
            "month" => Some(Window::Month),
            _ => None,
        }
    }

    /// When the window holding `unix_seconds` began, in seconds since the epoch.
    pub fn start(self, unix_seconds: u64) -> u64 {
        match self {
            Window::Minute => unix_seconds - unix_seconds % 60,
            Window::Hour => unix_seconds - unix_seconds % 3600,
            Window::Day => unix_seconds - unix_seconds % 86_400,
            Window::Month => {
                let days = unix_seconds / 86_400;
                let (year, month) = civil_month(days as i64);
                days_from_civil(year, month, 1).max(0) as u64 * 86_400
            }
        }
    }
}

/// Year and month of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_month(days: i64) -> (i64, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month as u32)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// One budget, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct SpendBudget {
    pub name: String,
    /// Request header whose value is the key: each key has its own budget
    /// (`none` when the header is absent). Without it, one budget for all.
    pub key_header: Option<String>,
    pub unit: SpendUnit,
    pub limit: f64,
    pub window: Window,
    /// The clusters whose usage counts; `None` for all.
    pub clusters: Option<BTreeSet<String>>,
    /// Changes when what is counted changes (unit, window, key, clusters),
    /// not with the limit: spend survives a reload that only moves the limit.
    pub fingerprint: String,
}

impl SpendBudget {
    /// Whether usage on `cluster` counts towards this budget.
    pub fn charges(&self, cluster: &str) -> bool {
        self.clusters.as_ref().is_none_or(|c| c.contains(cluster))
    }
}

/// `budget` as CEL sees it: each budget the policy reads, by name.
pub(crate) fn budget_value(read: &[(String, f64)], spent: &[f64]) -> Value {
    let key = |k: &str| Key::String(Arc::new(k.to_string()));
    let map: HashMap<Key, Value> = read
        .iter()
        .zip(spent)
        .map(|((name, limit), &spent)| {
            let fields = HashMap::from([
                (key("spent"), Value::Float(spent)),
                (key("limit"), Value::Float(*limit)),
                (key("remaining"), Value::Float((limit - spent).max(0.0))),
                (key("exceeded"), Value::Bool(spent >= *limit)),
            ]);
            (
                key(name),
                Value::Map(Map {
                    map: Arc::new(fields),
                }),
            )
        })
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_start_on_utc_boundaries() {
        // 2026-11-23T14:35:07Z
        let t = 1_795_444_507;
        assert_eq!(Window::Minute.start(t), 1_795_444_500);
        assert_eq!(Window::Hour.start(t), 1_795_442_400);
        assert_eq!(Window::Day.start(t), 1_795_392_000);
        // 2026-11-01T00:00:00Z
        assert_eq!(Window::Month.start(t), 1_793_491_200);
        // A leap year's February: 2024-02-29T12:00:00Z -> 2024-02-01.
        assert_eq!(Window::Month.start(1_709_208_000), 1_706_745_600);
        assert_eq!(Window::Month.start(0), 0);
    }

    #[test]
    fn amounts_by_unit() {
        assert_eq!(SpendUnit::Tokens.amount(120, 0.5, 9), 120.0);
        assert!((SpendUnit::Cost.amount(2000, 0.45, 9) - 0.9).abs() < 1e-12);
        assert_eq!(SpendUnit::EgressBytes.amount(120, 0.5, 9), 9.0);
    }
}
