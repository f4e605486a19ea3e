//! One policy loaded into the real filter: what the filter decided for a
//! request, cross-checked against what it did to the request.
//!
//! Everything reported here comes from the filter itself: its policy
//! description and decision reports (the `celroute_report` foreign
//! function), its log lines, its header changes and local replies.

use celroute::engine::decision_log::DECISION_PROPERTY;
use celroute::engine::{Decision, Outcome, PolicyDescription, PolicyError};

use crate::abi::LogLine;
use crate::environment::Environment;
use crate::request::RequestSpec;
use crate::vm::{FilterModule, GuestFault, RequestRecord, StartError, Vm};

/// Why a policy did not load.
#[derive(Debug, Clone)]
pub enum LoadFailure {
    /// The filter's `on_configure` refused it; its own errors and log lines.
    Rejected {
        errors: Vec<PolicyError>,
        logs: Vec<LogLine>,
    },
    /// The filter faulted while loading.
    Fault(GuestFault),
    /// The filter loaded it but did not describe it (not a celroute build?).
    Undescribed,
}

impl std::fmt::Display for LoadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadFailure::Rejected { errors, logs } => {
                if errors.is_empty() {
                    write!(f, "the filter rejected the policy")?;
                    for line in logs {
                        write!(f, "\n  {}", line.message)?;
                    }
                    return Ok(());
                }
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            LoadFailure::Fault(fault) => {
                fault.fmt(f)?;
                for line in &fault.logs {
                    write!(f, "\n  {}: {}", line.level_name(), line.message)?;
                }
                Ok(())
            }
            LoadFailure::Undescribed => write!(
                f,
                "the module loaded the policy but sent no celroute_report: is it celroute.wasm?"
            ),
        }
    }
}

/// What the filter did with one request.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// The filter's own account: outcome, deciding rule, errors, trace.
    pub decision: Decision,
    /// The local reply body, for denials.
    pub body: Option<String>,
    pub logs: Vec<LogLine>,
    /// The decision record the filter handed to the access log, when the
    /// policy keeps one (`options.decision_log`).
    pub record: Option<String>,
}

/// A policy loaded into a filter VM; a VM that faults is replaced before the next request.
pub struct LoadedPolicy<'m> {
    module: &'m FilterModule,
    environment: Environment,
    configuration: Vec<u8>,
    vm: Option<Vm>,
    pub description: PolicyDescription,
    /// Log lines from loading.
    pub load_logs: Vec<LogLine>,
}

impl<'m> LoadedPolicy<'m> {
    /// Loads a policy document (its bytes, as Envoy passes them) into a new VM.
    pub fn load(module: &'m FilterModule, policy: &[u8]) -> Result<LoadedPolicy<'m>, LoadFailure> {
        LoadedPolicy::load_in(module, policy, Environment::default())
    }

    /// Loads a policy into a new VM in `environment` (its clock, shared
    /// data and scripted network).
    pub fn load_in(
        module: &'m FilterModule,
        policy: &[u8],
        environment: Environment,
    ) -> Result<LoadedPolicy<'m>, LoadFailure> {
        let (vm, description, logs) = start(module, policy, &environment)?;
        Ok(LoadedPolicy {
            module,
            environment,
            configuration: policy.to_vec(),
            vm: Some(vm),
            description,
            load_logs: logs,
        })
    }

    /// The environment the filter runs in.
    pub fn environment(&self) -> &Environment {
        &self.environment
    }

    /// Fires the filter's timer once (and answers the callouts it makes).
    pub fn tick(&mut self) -> Result<(), EvaluateError> {
        match self.vm.as_mut() {
            Some(vm) => vm.tick().map_err(EvaluateError::Fault),
            None => Ok(()),
        }
    }

    /// Sends one request through the filter and reads back its decision.
    pub fn evaluate(&mut self, spec: &RequestSpec) -> Result<Evaluation, EvaluateError> {
        let mut vm = match self.vm.take() {
            Some(vm) => vm,
            None => {
                start(self.module, &self.configuration, &self.environment)
                    .map_err(EvaluateError::Restart)?
                    .0
            }
        };
        // A fault drops the VM: the next request gets a fresh one.
        let record = vm.request(spec).map_err(EvaluateError::Fault)?;
        self.vm = Some(vm);

        let decision = record
            .reports
            .iter()
            .rev()
            .find(|r| r["kind"] == "decision")
            .map(|r| serde_json::from_value::<Decision>(r["report"].clone()))
            .ok_or(EvaluateError::NoDecision)?
            .map_err(EvaluateError::MalformedReport)?;
        cross_check(&decision, &record, &self.description.routing_header)
            .map_err(EvaluateError::Mismatch)?;
        let body = record
            .local_response
            .as_ref()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned());
        let log_record = record
            .properties
            .get(&vec![DECISION_PROPERTY.to_string()])
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
        Ok(Evaluation {
            decision,
            body,
            logs: record.logs,
            record: log_record,
        })
    }
}

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum EvaluateError {
    /// The VM had faulted on an earlier request and could not be started again.
    #[error("restarting the filter: {0}")]
    Restart(LoadFailure),
    /// The filter faulted on this request.
    #[error("{}", with_logs(.0))]
    Fault(GuestFault),
    #[error("the filter reported no decision for this request")]
    NoDecision,
    #[error("the filter's decision report is malformed: {0}")]
    MalformedReport(serde_json::Error),
    /// What the filter reported differs from what it did to the request.
    #[error("{0}")]
    Mismatch(String),
}

fn with_logs(fault: &GuestFault) -> String {
    let mut message = fault.to_string();
    for line in &fault.logs {
        message.push_str(&format!("\n  {}: {}", line.level_name(), line.message));
    }
    message
}

/// Checks the filter's report against what it did: a route sets the routing
/// header to the reported cluster and clears the route cache; a denial
/// replies locally with the reported status.
fn cross_check(decision: &Decision, record: &RequestRecord, header: &str) -> Result<(), String> {
    let routed_to = record
        .upstream_headers
        .iter()
        .find(|(k, _)| k == header)
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
    match (&decision.outcome, &record.local_response) {
        (Outcome::Route { cluster }, None) => {
            if routed_to.as_deref() != Some(cluster) {
                return Err(format!(
                    "the filter reported cluster '{cluster}' but set {header} to {routed_to:?}"
                ));
            }
            if record.route_cache_clears == 0 {
                return Err("the filter routed without clearing the route cache".into());
            }
            Ok(())
        }
        (Outcome::Deny { status, .. }, Some(reply)) if u32::from(*status) != reply.status => {
            Err(format!(
                "the filter reported a {status} denial but replied {}",
                reply.status
            ))
        }
        (Outcome::Deny { .. }, Some(_)) => Ok(()),
        (outcome, reply) => Err(format!(
            "the filter reported {outcome:?} but {}",
            match reply {
                Some(r) => format!("sent a local {} reply", r.status),
                None if record.paused => "paused the request".to_string(),
                None => "sent no reply".to_string(),
            }
        )),
    }
}

fn start(
    module: &FilterModule,
    configuration: &[u8],
    environment: &Environment,
) -> Result<(Vm, PolicyDescription, Vec<LogLine>), LoadFailure> {
    match module.start_in(environment, configuration) {
        Ok(mut vm) => {
            let description = vm
                .take_reports()
                .into_iter()
                .find(|r| r["kind"] == "policy")
                .and_then(|r| serde_json::from_value(r["report"].clone()).ok())
                .ok_or(LoadFailure::Undescribed)?;
            let logs = vm.take_logs();
            Ok((vm, description, logs))
        }
        Err(StartError::Fault(fault)) => Err(LoadFailure::Fault(fault)),
        Err(StartError::Rejected { logs, reports, .. }) => {
            let errors = reports
                .iter()
                .find(|r| r["kind"] == "rejected")
                .and_then(|r| serde_json::from_value(r["report"].clone()).ok())
                .unwrap_or_default();
            Err(LoadFailure::Rejected { errors, logs })
        }
    }
}
