//! Bundle compilation and evaluation on `regorus` (management-api.md §9, §11; sts.md §6).
//!
//! A bundle is the platform decision contract plus a policy-set version's data documents.
//! The documents are data, not decisions, so they are evaluated **once** here, at
//! compilation, and mounted (with empty defaults for absent rules) where the contract reads
//! them; every request then evaluates only the contract's `result` against its input. A
//! compiled bundle is immutable and shared across threads.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::program::Program;
use regorus::rvm::vm::RegoVM;

use serde_json::{json, Value};

use super::document::{self, first_line, DocumentError};

/// Version of the decision contract compiled into every bundle.
pub const CONTRACT_VERSION: &str = "2026-07-12";
/// The input schema the contract understands (and the schema of every policy version).
pub const INPUT_SCHEMA_VERSION: &str = "2026-05-20";
/// The contract's entrypoint.
pub const ENTRYPOINT: &str = "data.caracal.authz.result";
/// The contract's Rego source.
pub const CONTRACT_SOURCE: &str = include_str!("contract.rego");
/// The contract's bundle-time part: facts derived from the documents alone.
pub const DERIVE_SOURCE: &str = include_str!("derive.rego");

/// One data document of a bundle.
#[derive(Debug, Clone, Copy)]
pub struct BundleDocument<'a> {
    /// The policy version it comes from (named in errors).
    pub policy_version_id: &'a str,
    pub content: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BundleError {
    /// A document fails data-document validation (`422 invalid_policy_contract`).
    #[error("{policy_version_id}: {reason}")]
    Contract {
        policy_version_id: String,
        reason: DocumentError,
    },
    /// The documents do not compile together (`422 invalid_policy_bundle`).
    #[error("{0}")]
    Bundle(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy evaluation failed: {0}")]
pub struct EvalError(pub String);

/// The empty value of each data rule a bundle's documents may leave out.
fn default_documents() -> BTreeMap<&'static str, Value> {
    BTreeMap::from([
        ("app_ids", json!({})),
        ("grants", json!({})),
        ("confinement", json!([])),
        ("restrict", json!([])),
        ("risk", json!([])),
        ("approval_tiers", json!([])),
    ])
}

/// Idle virtual machines kept per bundle (more are created under load and dropped).
const VM_POOL_MAX: usize = 16;

/// A compiled zone bundle: evaluate it with [`Bundle::evaluate`]. Shared across threads:
/// each evaluation borrows a virtual machine (program and documents already loaded) from
/// a small pool.
pub struct Bundle {
    policy: regorus::CompiledPolicy,
    program: Arc<Program>,
    data: regorus::Value,
    documents: Value,
    vms: Mutex<Vec<RegoVM>>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("documents", &self.documents)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Validates, merges and compiles a policy-set version's documents with the contract.
    /// The result does not depend on the order of `docs`.
    pub fn compile(docs: &[BundleDocument<'_>]) -> Result<Bundle, BundleError> {
        Self::compile_with_contract(docs, CONTRACT_SOURCE)
    }

    /// [`Bundle::compile`] against another decision contract's source: for tests that check
    /// a rewritten contract decides exactly as an earlier one did.
    #[doc(hidden)]
    pub fn compile_with_contract(
        docs: &[BundleDocument<'_>],
        contract: &str,
    ) -> Result<Bundle, BundleError> {
        let mut owner: BTreeMap<String, &str> = BTreeMap::new();
        let mut engine = document::engine();
        for (i, d) in docs.iter().enumerate() {
            let summary =
                document::validate(d.content).map_err(|reason| BundleError::Contract {
                    policy_version_id: d.policy_version_id.to_owned(),
                    reason,
                })?;
            if !summary.inputs_referenced.is_empty() {
                return Err(BundleError::Bundle(format!(
                    "{}: data documents must not read input ({})",
                    d.policy_version_id,
                    summary.inputs_referenced.join(", ")
                )));
            }
            for rule in summary.rules {
                if let Some(first) = owner.insert(rule.clone(), d.policy_version_id) {
                    return Err(BundleError::Bundle(format!(
                        "duplicate_rule:{rule} (defined by {first} and {})",
                        d.policy_version_id
                    )));
                }
            }
            engine
                .add_policy(format!("document-{i}.rego"), d.content.to_owned())
                .map_err(|e| {
                    BundleError::Bundle(format!(
                        "{}: {}",
                        d.policy_version_id,
                        first_line(&e.to_string())
                    ))
                })?;
        }
        let mut documents = default_documents()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect::<serde_json::Map<_, _>>();
        for (rule, version) in &owner {
            // A query rather than `eval_rule`: partial rules (`grants[k] := …`) have no
            // single rule path.
            let results = engine
                .eval_query(format!("data.caracal.authz.{rule}"), false)
                .map_err(|e| {
                    BundleError::Bundle(format!(
                        "{version}: {rule}: {}",
                        first_line(&e.to_string())
                    ))
                })?;
            let Some(value) = results
                .result
                .into_iter()
                .next()
                .and_then(|r| r.expressions.into_iter().next())
                .map(|e| e.value)
                .filter(|v| *v != regorus::Value::Undefined)
            else {
                continue;
            };
            let value = serde_json::to_value(&value)
                .map_err(|e| BundleError::Bundle(format!("{version}: {rule}: {e}")))?;
            documents.insert(rule.clone(), value);
        }
        let documents = Value::Object(documents);
        let derived = derive(&documents)?;
        let data = regorus::Value::from(
            json!({ "serval_bundle": { "documents": documents, "derived": derived } }),
        );
        let policy = compile_contract(&data, contract)?;
        let program = Compiler::compile_from_policy(&policy, &[ENTRYPOINT]).map_err(|e| {
            BundleError::Bundle(format!("contract: {}", first_line(&e.to_string())))
        })?;
        let bundle = Bundle {
            policy,
            program,
            data,
            documents,
            vms: Mutex::new(Vec::new()),
        };
        // Fail at compilation, not at the first request, if the documents cannot be mounted.
        let vm = bundle.new_vm()?;
        bundle.release(vm);
        Ok(bundle)
    }

    fn new_vm(&self) -> Result<RegoVM, BundleError> {
        let mut vm = RegoVM::new();
        vm.load_program(self.program.clone());
        vm.set_data(self.data.clone())
            .map_err(|e| BundleError::Bundle(format!("data: {}", first_line(&e.to_string()))))?;
        Ok(vm)
    }

    fn release(&self, vm: RegoVM) {
        let mut pool = self.vms.lock().unwrap_or_else(|p| p.into_inner());
        if pool.len() < VM_POOL_MAX {
            pool.push(vm);
        }
    }

    /// The merged data documents the contract sees (defaults filled in).
    pub fn documents(&self) -> &Value {
        &self.documents
    }

    /// Evaluates the decision contract for one input; the value is the contract's `result`.
    pub fn evaluate(&self, input: &Value) -> Result<Value, EvalError> {
        let input = to_input(input)?;
        let pooled = self.vms.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut vm = match pooled {
            Some(vm) => vm,
            None => self.new_vm().map_err(|e| EvalError(e.to_string()))?,
        };
        vm.set_input(input);
        let out = vm.execute();
        // A VM that failed mid-run is dropped rather than reused.
        let out = match out {
            Ok(v) => {
                self.release(vm);
                v
            }
            Err(e) => return Err(EvalError(first_line(&e.to_string()))),
        };
        to_result(out)
    }

    /// The same evaluation on the tree-walking interpreter (slower): a second, independent
    /// execution path the tests compare the virtual machine against.
    pub fn evaluate_interpreted(&self, input: &Value) -> Result<Value, EvalError> {
        let out = self
            .policy
            .eval_with_input(to_input(input)?)
            .map_err(|e| EvalError(first_line(&e.to_string())))?;
        to_result(out)
    }
}

/// Evaluates the contract's bundle-time part over the merged documents.
fn derive(documents: &Value) -> Result<Value, BundleError> {
    let mut engine = document::engine();
    engine
        .add_policy("derive.rego".to_owned(), DERIVE_SOURCE.to_owned())
        .map_err(|e| BundleError::Bundle(format!("contract: {}", first_line(&e.to_string()))))?;
    engine
        .add_data(regorus::Value::from(
            json!({ "serval_bundle": { "documents": documents } }),
        ))
        .map_err(|e| BundleError::Bundle(format!("data: {}", first_line(&e.to_string()))))?;
    let derived = engine
        .eval_rule("data.serval.derive.derived".to_owned())
        .map_err(|e| BundleError::Bundle(format!("contract: {}", first_line(&e.to_string()))))?;
    serde_json::to_value(&derived).map_err(|e| BundleError::Bundle(format!("contract: {e}")))
}

/// The request as an engine value, read straight from the borrowed JSON (no copy first).
fn to_input(input: &Value) -> Result<regorus::Value, EvalError> {
    use serde::Deserialize;
    regorus::Value::deserialize(input).map_err(|e| EvalError(format!("input: {e}")))
}

fn to_result(out: regorus::Value) -> Result<Value, EvalError> {
    if out == regorus::Value::Undefined {
        return Err(EvalError("result is undefined".to_owned()));
    }
    serde_json::to_value(&out).map_err(|e| EvalError(e.to_string()))
}

fn compile_contract(
    data: &regorus::Value,
    contract: &str,
) -> Result<regorus::CompiledPolicy, BundleError> {
    let mut engine = document::engine();
    engine
        .add_policy("contract.rego".to_owned(), contract.to_owned())
        .map_err(|e| BundleError::Bundle(format!("contract: {}", first_line(&e.to_string()))))?;
    engine
        .add_data(data.clone())
        .map_err(|e| BundleError::Bundle(format!("data: {}", first_line(&e.to_string()))))?;
    engine
        .compile_with_entrypoint(&ENTRYPOINT.into())
        .map_err(|e| BundleError::Bundle(format!("contract: {}", first_line(&e.to_string()))))
}

/// The decision of a contract result (`allow` only when complete and allowing).
pub fn is_allow(result: &Value) -> bool {
    result.get("decision").and_then(Value::as_str) == Some("allow")
        && result.get("evaluation_status").and_then(Value::as_str) == Some("complete")
}

/// The first deny reason of a result, if any.
pub fn deny_reason(result: &Value) -> Option<&str> {
    result
        .get("diagnostics")?
        .as_array()?
        .iter()
        .find_map(|d| d.get("reason").and_then(Value::as_str))
}
