//! Random routing scenarios (a valid policy and a request) and an oracle
//! written from the documented decision semantics (`docs/policy-reference.md`),
//! independent of the engine: it never calls celroute's code, it evaluates
//! the few condition shapes the generator writes by itself.
//!
//! The oracle's semantics, as documented:
//! 1. `deny` and `require` rules in order; an error in their `when` applies
//!    the rule (fail closed); a `require` keeps the clusters for which it is
//!    true, and an error excludes the cluster; a matching `deny` ends it.
//! 2. No candidate left: the no-candidate status (451), naming the rule
//!    that excluded the last candidates.
//! 3. `prefer` and `order_by` in order; an error in their `when` skips the
//!    rule; `prefer` picks its first surviving cluster, else falls through;
//!    `order_by` picks the lowest (or highest) key, the earliest in
//!    inventory order on ties.
//! 4. The default if it survived, else the first surviving cluster.
//! 5. The fallback (where Envoy retries) is what 3 and 4 give with the
//!    chosen cluster out too; none when it was the only candidate.
//!
//! Clusters have a live `healthy` state; `require: cluster.live.healthy`
//! constrains on it like any attribute.

use std::fmt::Write as _;

/// A small, seedable generator (SplitMix64): the same seed, the same scenarios.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next_u64() % 100 < percent
    }
}

const REGIONS: [&str; 3] = ["eu", "us", "ap"];
const VALUES: [&str; 2] = ["v0", "v1"];

#[derive(Debug, Clone)]
pub struct Cluster {
    pub name: String,
    pub region: &'static str,
    pub price: i64,
    /// Its live state: the circuit breaker closed.
    pub healthy: bool,
}

/// A rule's condition on the request.
#[derive(Debug, Clone)]
pub enum When {
    /// `request.headers[?'x-hK'].orValue('') == 'V'`: never an error.
    Equals { header: usize, value: &'static str },
    /// `request.headers['x-hK'] == 'V'`: an error when the header is absent.
    Strict { header: usize, value: &'static str },
}

/// A constraint on the candidate cluster.
#[derive(Debug, Clone)]
pub enum Require {
    Region(&'static str),
    RegionIn(Vec<&'static str>),
    PriceBelow(i64),
    /// `int(request.headers['x-n']) > cluster.price`: an error when `x-n`
    /// is absent or not an integer.
    BudgetAbovePrice,
    /// `cluster.live.healthy`.
    Healthy,
}

#[derive(Debug, Clone)]
pub enum Action {
    Require(Require),
    Deny(u16),
    Prefer(Vec<usize>),
    OrderBy { descending: bool },
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    pub when: Option<When>,
    pub action: Action,
}

#[derive(Debug, Clone)]
pub struct Scenario {
    pub clusters: Vec<Cluster>,
    pub rules: Vec<Rule>,
    pub default: Option<usize>,
    /// `x-h0`..`x-h2` (absent or a value) and `x-n`.
    pub headers: Vec<(String, String)>,
}

/// What a request must get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expected {
    Route {
        cluster: String,
        rule: String,
        fallback: Option<String>,
    },
    Deny {
        status: u16,
        rule: String,
    },
}

impl Scenario {
    pub fn generate(rng: &mut Rng) -> Scenario {
        let clusters: Vec<Cluster> = (0..2 + rng.below(5))
            .map(|i| Cluster {
                name: format!("c{i}"),
                region: REGIONS[rng.below(3)],
                price: 1 + rng.below(100) as i64,
                healthy: rng.chance(80),
            })
            .collect();
        let rules = (0..rng.below(8))
            .map(|i| Rule {
                name: format!("r{i}"),
                when: rng.chance(60).then(|| {
                    let (header, value) = (rng.below(3), VALUES[rng.below(2)]);
                    if rng.chance(50) {
                        When::Equals { header, value }
                    } else {
                        When::Strict { header, value }
                    }
                }),
                action: match rng.below(10) {
                    0..=4 => Action::Require(match rng.below(5) {
                        0 => Require::Region(REGIONS[rng.below(3)]),
                        1 => Require::RegionIn(vec![REGIONS[rng.below(3)], REGIONS[rng.below(3)]]),
                        2 => Require::PriceBelow(1 + rng.below(100) as i64),
                        3 => Require::Healthy,
                        _ => Require::BudgetAbovePrice,
                    }),
                    5 => Action::Deny(if rng.chance(50) { 403 } else { 429 }),
                    6..=7 => Action::Prefer(
                        (0..1 + rng.below(3))
                            .map(|_| rng.below(clusters.len()))
                            .collect(),
                    ),
                    _ => Action::OrderBy {
                        descending: rng.chance(30),
                    },
                },
            })
            .collect();
        let default = rng.chance(50).then(|| rng.below(clusters.len()));
        let headers = Scenario::request(rng);
        Scenario {
            clusters,
            rules,
            default,
            headers,
        }
    }

    /// Request headers: `x-h0`..`x-h2` each absent or a value, and `x-n`
    /// absent, not a number, or a number.
    pub fn request(rng: &mut Rng) -> Vec<(String, String)> {
        let mut headers = Vec::new();
        for h in 0..3 {
            if rng.chance(60) {
                headers.push((format!("x-h{h}"), VALUES[rng.below(2)].to_string()));
            }
        }
        match rng.below(4) {
            0 => {}
            1 => headers.push(("x-n".into(), "abc".into())),
            _ => headers.push(("x-n".into(), (rng.below(120) as i64).to_string())),
        }
        headers
    }

    /// The policy as YAML.
    pub fn policy(&self) -> String {
        let mut out = String::from("clusters:\n");
        for c in &self.clusters {
            let _ = writeln!(
                out,
                "  {}: {{region: {}, price: {}}}",
                c.name, c.region, c.price
            );
        }
        if !self.rules.is_empty() {
            out.push_str("rules:\n");
        }
        for rule in &self.rules {
            let _ = writeln!(out, "  - name: {}", rule.name);
            match &rule.when {
                Some(When::Equals { header, value }) => {
                    let _ = writeln!(
                        out,
                        "    when: \"request.headers[?'x-h{header}'].orValue('') == '{value}'\""
                    );
                }
                Some(When::Strict { header, value }) => {
                    let _ = writeln!(
                        out,
                        "    when: \"request.headers['x-h{header}'] == '{value}'\""
                    );
                }
                None => {}
            }
            let _ = match &rule.action {
                Action::Require(r) => writeln!(out, "    require: \"{}\"", require_cel(r)),
                Action::Deny(status) => writeln!(out, "    deny: {{status: {status}}}"),
                Action::Prefer(list) => {
                    let names: Vec<_> = list
                        .iter()
                        .map(|&c| self.clusters[c].name.as_str())
                        .collect();
                    writeln!(out, "    prefer: [{}]", names.join(", "))
                }
                Action::OrderBy { descending } => {
                    writeln!(
                        out,
                        "    order_by: cluster.price\n    descending: {descending}"
                    )
                }
            };
        }
        if let Some(d) = self.default {
            let _ = writeln!(out, "default: {}", self.clusters[d].name);
        }
        out.push_str("options: {fallback_header: x-fallback}\n");
        out
    }

    /// Each cluster's live `healthy` value.
    pub fn health(&self) -> Vec<(String, bool)> {
        self.clusters
            .iter()
            .map(|c| (c.name.clone(), c.healthy))
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// `Ok(matched)`, or `Err(())` for an evaluation error.
    fn when(&self, when: &When) -> Result<bool, ()> {
        match when {
            When::Equals { header, value } => {
                Ok(self.header(&format!("x-h{header}")).unwrap_or("") == *value)
            }
            When::Strict { header, value } => match self.header(&format!("x-h{header}")) {
                Some(v) => Ok(v == *value),
                None => Err(()),
            },
        }
    }

    fn require(&self, require: &Require, cluster: &Cluster) -> Result<bool, ()> {
        match require {
            Require::Region(r) => Ok(cluster.region == *r),
            Require::RegionIn(list) => Ok(list.contains(&cluster.region)),
            Require::PriceBelow(p) => Ok(cluster.price < *p),
            Require::BudgetAbovePrice => {
                let budget: i64 = self.header("x-n").ok_or(())?.parse().map_err(|_| ())?;
                Ok(budget > cluster.price)
            }
            Require::Healthy => Ok(cluster.healthy),
        }
    }

    /// Whether a rule's constraint applies to this request (errors apply it).
    fn applies(&self, rule: &Rule) -> bool {
        rule.when
            .as_ref()
            .is_none_or(|w| self.when(w).unwrap_or(true))
    }

    /// The clusters every applicable constraint allows: where a routed
    /// request may go, whatever the selection rules say.
    pub fn allowed(&self) -> Vec<usize> {
        let mut alive: Vec<usize> = (0..self.clusters.len()).collect();
        for rule in &self.rules {
            if let Action::Require(r) = &rule.action {
                if self.applies(rule) {
                    alive.retain(|&c| self.require(r, &self.clusters[c]).unwrap_or(false));
                }
            }
        }
        alive
    }

    /// The decision the documented semantics give.
    pub fn expected(&self) -> Expected {
        let mut alive: Vec<usize> = (0..self.clusters.len()).collect();
        let mut emptied_by = None;
        for rule in &self.rules {
            match &rule.action {
                Action::Deny(status) if self.applies(rule) => {
                    return Expected::Deny {
                        status: *status,
                        rule: rule.name.clone(),
                    }
                }
                Action::Require(r) if self.applies(rule) => {
                    alive.retain(|&c| self.require(r, &self.clusters[c]).unwrap_or(false));
                    if alive.is_empty() && emptied_by.is_none() {
                        emptied_by = Some(rule.name.clone());
                    }
                }
                _ => {}
            }
        }
        if alive.is_empty() {
            return Expected::Deny {
                status: 451,
                rule: emptied_by.unwrap_or_else(|| "no-candidate".into()),
            };
        }
        let (chosen, rule) = self.select(&alive);
        let rest: Vec<usize> = alive.iter().copied().filter(|&c| c != chosen).collect();
        Expected::Route {
            cluster: self.clusters[chosen].name.clone(),
            rule,
            fallback: (!rest.is_empty()).then(|| self.clusters[self.select(&rest).0].name.clone()),
        }
    }

    /// Steps 3 and 4 among `alive` (not empty): the cluster and the rule.
    fn select(&self, alive: &[usize]) -> (usize, String) {
        for rule in &self.rules {
            let selects = matches!(rule.action, Action::Prefer(_) | Action::OrderBy { .. });
            // An error in a selection rule's `when` skips the rule.
            if !selects
                || !rule
                    .when
                    .as_ref()
                    .is_none_or(|w| self.when(w).unwrap_or(false))
            {
                continue;
            }
            let chosen = match &rule.action {
                Action::Prefer(list) => list.iter().copied().find(|c| alive.contains(c)),
                Action::OrderBy { descending } => {
                    let mut best: Option<usize> = None;
                    for &c in alive {
                        let better = best.is_none_or(|b| {
                            let (x, y) = (self.clusters[c].price, self.clusters[b].price);
                            if *descending {
                                x > y
                            } else {
                                x < y
                            }
                        });
                        if better {
                            best = Some(c);
                        }
                    }
                    best
                }
                _ => None,
            };
            if let Some(c) = chosen {
                return (c, rule.name.clone());
            }
        }
        match self.default.filter(|d| alive.contains(d)) {
            Some(d) => (d, "default".into()),
            None => (alive[0], "first-candidate".into()),
        }
    }

    /// The same scenario without rule `i`: for shrinking a failure.
    pub fn without_rule(&self, i: usize) -> Scenario {
        let mut smaller = self.clone();
        smaller.rules.remove(i);
        smaller
    }

    /// The same scenario without header `i`.
    pub fn without_header(&self, i: usize) -> Scenario {
        let mut smaller = self.clone();
        smaller.headers.remove(i);
        smaller
    }

    /// The smallest scenario (fewest rules, then headers) for which `fails` holds.
    pub fn shrink(&self, fails: impl Fn(&Scenario) -> bool) -> Scenario {
        let mut current = self.clone();
        loop {
            let smaller = (0..current.rules.len())
                .map(|i| current.without_rule(i))
                .chain((0..current.headers.len()).map(|i| current.without_header(i)))
                .find(|s| fails(s));
            match smaller {
                Some(s) => current = s,
                None => return current,
            }
        }
    }
}

fn require_cel(require: &Require) -> String {
    match require {
        Require::Region(r) => format!("cluster.region == '{r}'"),
        Require::RegionIn(list) => {
            let quoted: Vec<_> = list.iter().map(|r| format!("'{r}'")).collect();
            format!("cluster.region in [{}]", quoted.join(", "))
        }
        Require::PriceBelow(p) => format!("cluster.price < {p}"),
        Require::BudgetAbovePrice => "int(request.headers['x-n']) > cluster.price".to_string(),
        Require::Healthy => "cluster.live.healthy".to_string(),
    }
}
