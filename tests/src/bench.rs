//! The benchmark workload: realistic policies of any size (residency
//! constraints, tenant denials, model preferences, task rules with cost
//! ordering), the same decision written as an Envoy Lua filter, and the
//! request mix that drives them.
//!
//! One model renders both the CEL policy and the Lua script, so the two
//! implement exactly the same decision; `bench-envoy` checks that they agree
//! on every request of the mix before measuring anything.

/// Clusters of the benchmark inventory.
pub const CLUSTERS: usize = 8;

/// One cluster: `(name, jurisdiction, region, price per 1k tokens, gpu)`.
pub fn cluster(i: usize) -> (String, &'static str, &'static str, f64, &'static str) {
    let regions = [
        ("us", "us-east-1"),
        ("eu", "europe-west4"),
        ("eu", "westeurope"),
        ("eu", "fra"),
    ];
    let (jurisdiction, region) = regions[i % regions.len()];
    // Distinct prices, so cost ordering never ties.
    let price = 0.1 + (((i * 5) % CLUSTERS) as f64) * 0.07;
    let gpu = if i % 2 == 0 { "h100" } else { "a100" };
    (format!("cluster-{i}"), jurisdiction, region, price, gpu)
}

/// A rule of the benchmark policy.
#[derive(Debug, Clone, PartialEq)]
pub enum Rule {
    /// EU users (`x-user-region: eu`) only on EU clusters.
    Residency,
    /// No `x-tenant` header: 403.
    TenantRequired,
    /// `x-tenant: blocked-N`: 403.
    BlockedTenant(usize),
    /// `x-model` starting with `model-N`: prefer two clusters.
    Model(usize, [usize; 2]),
    /// `x-task: task-N` on a `/v1/` path: cheapest cluster.
    Task(usize),
    /// Everything else: cheapest cluster.
    Cheapest,
}

/// The rules of an `n`-rule policy (at least 3).
pub fn rules(n: usize) -> Vec<Rule> {
    let mut rules = vec![Rule::Residency, Rule::TenantRequired];
    for i in 2..n.max(3) - 1 {
        rules.push(match i % 3 {
            0 => Rule::BlockedTenant(i),
            1 => Rule::Model(i, [i % CLUSTERS, (i + 3) % CLUSTERS]),
            _ => Rule::Task(i),
        });
    }
    rules.push(Rule::Cheapest);
    rules
}

/// The `n`-rule policy as a celroute policy document.
pub fn policy_yaml(n: usize, decision_cache_size: Option<usize>) -> String {
    let mut text = format!("name: bench-{n}-rules\nclusters:\n");
    for i in 0..CLUSTERS {
        let (name, jurisdiction, region, price, gpu) = cluster(i);
        text.push_str(&format!(
            "  {name}: {{jurisdiction: {jurisdiction}, region: {region}, price_per_1k_tokens: {price:.2}, gpu: {gpu}}}\n"
        ));
    }
    text.push_str("rules:\n");
    for rule in rules(n) {
        text.push_str(&match rule {
            Rule::Residency => "  - name: eu-residency\n    when: request.headers[?'x-user-region'].orValue('') == 'eu'\n    require: cluster.jurisdiction == 'eu'\n".to_string(),
            Rule::TenantRequired => "  - name: tenant-required\n    when: \"!('x-tenant' in request.headers)\"\n    deny: {status: 403, message: tenant required}\n".to_string(),
            Rule::BlockedTenant(i) => format!("  - name: blocked-tenant-{i}\n    when: request.headers[?'x-tenant'].orValue('') == 'blocked-{i}'\n    deny: {{status: 403, message: tenant {i} is blocked}}\n"),
            Rule::Model(i, [a, b]) => format!("  - name: model-{i}\n    when: request.headers[?'x-model'].orValue('').startsWith('model-{i}')\n    prefer: [cluster-{a}, cluster-{b}]\n"),
            Rule::Task(i) => format!("  - name: task-{i}\n    when: request.headers[?'x-task'].orValue('') == 'task-{i}' && request.url_path.startsWith('/v1/')\n    order_by: cluster.price_per_1k_tokens\n"),
            Rule::Cheapest => "  - name: cheapest\n    order_by: cluster.price_per_1k_tokens\n".to_string(),
        });
    }
    text.push_str("default: cluster-0\n");
    if let Some(size) = decision_cache_size {
        text.push_str(&format!("options: {{decision_cache_size: {size}}}\n"));
    }
    text
}

/// `policy` with a constraint on live state after its residency rule: every
/// cluster must be healthy (all are, in a benchmark, so the decisions stay
/// the same), and the filter observes every response.
/// The policy with a selection by the model in the request body first.
pub fn with_body_model(policy: &str) -> String {
    policy.replacen(
        "  - name: tenant-required\n",
        "  - name: reasoning-model\n    when: request.body.?model.orValue('').startsWith('o')\n    prefer: [cluster-1]\n  - name: tenant-required\n",
        1,
    )
}

/// The policy counting usage per cluster and tenant.
pub fn with_usage(policy: &str) -> String {
    format!("{policy}usage:\n  key_header: x-tenant\n")
}

/// `policy` keeping a decision log of everything it reads.
pub fn with_decision_log(policy: &str) -> String {
    match policy.find("options: {") {
        Some(at) => {
            let mut text = policy.to_string();
            text.insert_str(at + "options: {".len(), "decision_log: {}, ");
            text
        }
        None => format!("{policy}options: {{decision_log: {{}}}}\n"),
    }
}

/// The JSON body of the benchmark's body route.
pub const CHAT_BODY: &str = r#"{"model":"o3-mini","max_tokens":16,"messages":[{"role":"user","content":"why is the sky blue"}]}"#;

/// A streamed chat completion with usage in its last event, as the
/// benchmark's upstream sends it.
pub const SSE_COMPLETION: &str = concat!(
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"}}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" there\"}}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
    "data: {\"id\":\"c\",\"object\":\"chat.completion.chunk\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
    "data: [DONE]\n\n",
);

pub fn with_live_health(policy: &str) -> String {
    policy.replacen(
        "  - name: tenant-required\n",
        "  - name: healthy\n    require: cluster.live.healthy\n  - name: tenant-required\n",
        1,
    )
}

/// The `n`-rule policy as an Envoy Lua filter, rule for rule: constraints
/// and denials first in document order, then the first selection rule that
/// picks a surviving cluster, then the default. Denials answer with the same
/// JSON body as celroute.
pub fn lua(n: usize, routing_header: &str) -> String {
    let mut text = String::from(
        "-- Generated from the same model as the celroute benchmark policy.\nlocal clusters = {\n",
    );
    for i in 0..CLUSTERS {
        let (name, jurisdiction, _, price, _) = cluster(i);
        text.push_str(&format!(
            "  {{name = \"{name}\", jurisdiction = \"{jurisdiction}\", price = {price:.2}}},\n"
        ));
    }
    text.push_str(
        r#"}

local function starts(s, prefix)
  return s:sub(1, #prefix) == prefix
end

local function deny(handle, rule, message)
  handle:respond({[":status"] = "403", ["content-type"] = "application/json"},
    string.format('{"error":{"message":"%s","type":"permission_error","code":"policy_denied","param":null,"status":403,"rule":"%s"}}', message, rule))
end

local function cheapest(alive)
  local best = nil
  for _, i in ipairs(alive) do
    if best == nil or clusters[i].price < clusters[best].price then best = i end
  end
  return best
end

local function preferred(alive, choices)
  for _, want in ipairs(choices) do
    for _, i in ipairs(alive) do
      if i == want then return i end
    end
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local region = headers:get("x-user-region") or ""
  local tenant = headers:get("x-tenant")
  local model = headers:get("x-model") or ""
  local task = headers:get("x-task") or ""
  local path = headers:get(":path") or ""
  local query = path:find("?", 1, true)
  if query then path = path:sub(1, query - 1) end
  local alive = {}
  for i = 1, #clusters do alive[i] = i end
"#,
    );
    let rules = rules(n);
    for rule in &rules {
        match rule {
            Rule::Residency => text.push_str(
                "  if region == \"eu\" then\n    local kept = {}\n    for _, i in ipairs(alive) do\n      if clusters[i].jurisdiction == \"eu\" then kept[#kept + 1] = i end\n    end\n    alive = kept\n  end\n",
            ),
            Rule::TenantRequired => text.push_str(
                "  if tenant == nil then return deny(handle, \"tenant-required\", \"tenant required\") end\n",
            ),
            Rule::BlockedTenant(i) => text.push_str(&format!(
                "  if tenant == \"blocked-{i}\" then return deny(handle, \"blocked-tenant-{i}\", \"tenant {i} is blocked\") end\n"
            )),
            Rule::Model(..) | Rule::Task(_) | Rule::Cheapest => {}
        }
    }
    text.push_str("  if #alive == 0 then\n    handle:respond({[\":status\"] = \"451\"}, \"no candidate\")\n    return\n  end\n  local chosen = nil\n");
    for rule in &rules {
        let pick = match rule {
            Rule::Model(i, [a, b]) => format!(
                "starts(model, \"model-{i}\") then chosen = preferred(alive, {{{}, {}}})",
                a + 1,
                b + 1
            ),
            Rule::Task(i) => format!(
                "task == \"task-{i}\" and starts(path, \"/v1/\") then chosen = cheapest(alive)"
            ),
            Rule::Cheapest => "true then chosen = cheapest(alive)".to_string(),
            Rule::Residency | Rule::TenantRequired | Rule::BlockedTenant(_) => continue,
        };
        text.push_str(&format!("  if chosen == nil and {pick} end\n"));
    }
    text.push_str(&format!(
        r#"  if chosen == nil then
    chosen = preferred(alive, {{1}}) or alive[1]
  end
  headers:replace("{routing_header}", clusters[chosen].name)
  handle:clearRouteCache()
end
"#
    ));
    text
}

/// The request mix: `count` distinct header sets, every one routed (no
/// denial), spread over regions, tenants, models and tasks so that every
/// kind of rule matches some of them.
pub fn routed_requests(count: usize) -> Vec<Vec<(String, String)>> {
    (0..count)
        .map(|i| {
            let mut headers = vec![("x-tenant".to_string(), format!("tenant-{}", i % 7))];
            if i % 2 == 0 {
                headers.push(("x-user-region".into(), "eu".into()));
            }
            headers.push(("x-model".into(), format!("model-{}", (i * 7) % 23)));
            headers.push(("x-task".into(), format!("task-{}", (i * 5) % 31)));
            headers
        })
        .collect()
}

/// Requests that some policies deny: no tenant, blocked tenants.
pub fn denied_requests() -> Vec<Vec<(String, String)>> {
    let mut out = vec![vec![("x-model".to_string(), "model-4".to_string())]];
    for i in [3, 6, 9, 33, 96] {
        out.push(vec![
            ("x-tenant".to_string(), format!("blocked-{i}")),
            ("x-user-region".to_string(), "eu".to_string()),
        ]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_have_the_asked_number_of_rules_and_every_kind() {
        for n in [5, 20, 100] {
            let rules = rules(n);
            assert_eq!(rules.len(), n);
            assert_eq!(rules[0], Rule::Residency);
            assert_eq!(rules[n - 1], Rule::Cheapest);
            let yaml = policy_yaml(n, None);
            assert_eq!(yaml.matches("  - name: ").count(), n);
        }
        let kinds = rules(20);
        assert!(kinds.iter().any(|r| matches!(r, Rule::BlockedTenant(_))));
        assert!(kinds.iter().any(|r| matches!(r, Rule::Model(..))));
        assert!(kinds.iter().any(|r| matches!(r, Rule::Task(_))));
    }

    #[test]
    fn the_request_mix_is_distinct() {
        let requests = routed_requests(64);
        let distinct: std::collections::BTreeSet<_> = requests.iter().collect();
        assert_eq!(distinct.len(), 64);
    }
}
