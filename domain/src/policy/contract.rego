# Serval's platform decision contract (contract version 2026-07-12, input schema 2026-05-20).
#
# Compiled into every zone bundle; owns data.caracal.authz.result. Adopter data documents
# are evaluated once per bundle and mounted, complete with defaults, at
# data.serval_bundle.documents; the facts that depend on the documents alone (well-formed
# risk and approval data, the restriction, indexes) are derived once by derive.rego and
# mounted at data.serval_bundle.derived (see policy/bundle.rs). Default deny.
package caracal.authz

import rego.v1

# The mounted documents and derived facts are read by path (data.serval_bundle.…) rather
# than through rules: a rule reference costs a call even once its value is cached.

# Rules rather than helper functions throughout: the virtual machine caches a rule's
# value for the evaluation, while every function call is executed again (and calls are
# most of an evaluation's cost).

_context := input.context if is_object(input.context)
else := {}

_principal := input.principal if is_object(input.principal)
else := {}

_resource := input.resource if is_object(input.resource)
else := {}

_action := input.action if is_object(input.action)
else := {}

_edge := input.delegation_edge if is_object(input.delegation_edge)
else := {}

_subject := _context.subject_claims if is_object(_context.subject_claims)
else := {}

_requested := {s | some s in l} if {
	l := _context.requested_scopes
	is_array(l)
} else := set()

_labels := {l | some l in _principal.labels; is_string(l)}

_has_subject if count(_subject) > 0

_has_delegation if {
	id := _edge.id
	is_string(id)
	id != ""
}

_has_delegation if {
	id := _context.delegation_edge_id
	is_string(id)
	id != ""
}

_has_agent_session if {
	id := _principal.agent_session_id
	is_string(id)
	id != ""
}

_has_agent_session if {
	id := _context.agent_session_id
	is_string(id)
	id != ""
}

# --- ownership and roles -----------------------------------------------------------

_grant := g if {
	g := data.serval_bundle.documents.grants[_resource.identifier]
	is_object(g)
}

_owner_key := k if {
	k := _grant.application
	is_string(k)
	data.serval_bundle.documents.app_ids[k] == _principal.id
}

# Some label's role holds every requested scope (a mint) / every presented one (a use).
_role_covers_requested if {
	some l in _labels
	roles := _grant.roles[l]
	is_array(roles)
	every s in _requested {
		s in roles
	}
}

_role_covers_presented if {
	some l in _labels
	roles := _grant.roles[l]
	is_array(roles)
	every s in _presented {
		s in roles
	}
}

# --- confinement (only narrows) ------------------------------------------------------

# A rule whose label prefix one of the principal's labels has, and that does not allow
# one of the requested scopes.
_confinement_violated if {
	some c in data.serval_bundle.derived.confinement
	some l in _labels
	startswith(l, c.label_prefix)
	some s in _requested
	not s in c.scopes
}

_confinement_ok if {
	data.serval_bundle.derived.confinement_ok == true
	not _confinement_violated
}

# --- risk and approval tiers ---------------------------------------------------------

_risk_hits := [h |
	some s in _requested
	some h in data.serval_bundle.derived.risk_by_scope[s]
]

_hit_tiers := {h.tier | some h in _risk_hits}

_step_up_tiers := [e |
	some t in _hit_tiers
	some e in data.serval_bundle.derived.tiers_by_name[t]
]

_mint_diagnostics := [
	{"step_up_required": {"type": "human_approval", "tiers": _step_up_tiers}},
	{"risk": _risk_hits},
] if {
	_context.challenge_resolved != true
	count(_step_up_tiers) > 0
} else := [{"risk": _risk_hits}] if {
	count(_risk_hits) > 0
} else := []

# --- the mandate presented at the Gateway ---------------------------------------------

_presented := {s | some s in split(_subject.scope, " "); s != ""} if is_string(_subject.scope)
else := {s | some s in _subject.scope; is_string(s); s != ""} if is_array(_subject.scope)
else := set()

_targets_resource if _subject.target == _resource.identifier

_targets_resource if {
	is_string(_subject.target)
	_resource.identifier in split(_subject.target, " ")
}

_targets_resource if {
	is_array(_subject.target)
	_resource.identifier in _subject.target
}

# --- outcomes ------------------------------------------------------------------------

_deny(reason) := {
	"decision": "deny",
	"evaluation_status": "complete",
	"determining_policies": [],
	"diagnostics": [{"reason": reason}],
}

_allow(policy, diagnostics) := {
	"decision": "allow",
	"evaluation_status": "complete",
	"determining_policies": [{"policy": policy}],
	"diagnostics": diagnostics,
}

_path := "workload" if {
	_principal.type == "Workload"
	_action.id == "CredentialInjection"
} else := "use" if {
	is_string(_subject.delegation_edge_id)
	_subject.delegation_edge_id != ""
} else := "bootstrap" if {
	_requested == {"agent:lifecycle"}
} else := "mint" if {
	_has_delegation
	_has_agent_session
} else := "none"

_bootstrap := _deny("no_rule_matched") if _has_subject
else := _deny("no_rule_matched") if _has_delegation
else := _deny("no_rule_matched") if _has_agent_session
else := _deny("resource_not_granted") if not _owner_key
else := _allow("caracal-bootstrap", [])

_mint := _deny("no_rule_matched") if _has_subject
else := _deny("no_rule_matched") if count(_requested) == 0
else := _deny("no_rule_matched") if "agent:lifecycle" in _requested
else := _deny("malformed_risk_data") if not data.serval_bundle.derived.risk_ok == true
else := _deny("malformed_approval_data") if not data.serval_bundle.derived.tiers_ok == true
else := _deny("resource_not_granted") if not _owner_key
else := _deny("delegation_scope_exceeded") if not _within_delegation
else := _deny("confinement_violation") if not _confinement_ok
else := _deny("role_scope_mismatch") if not _role_covers_requested
else := _allow(concat("", ["caracal-", _owner_key, "-mint"]), _mint_diagnostics)

_within_delegation if {
	is_array(_edge.scopes)
	every s in _requested {
		s in _edge.scopes
	}
}

_workload := _deny("no_rule_matched") if _has_subject
else := _deny("no_rule_matched") if _has_delegation
else := _deny("no_rule_matched") if _has_agent_session
else := _deny("malformed_risk_data") if not data.serval_bundle.derived.risk_ok == true
else := _deny("malformed_approval_data") if not data.serval_bundle.derived.tiers_ok == true
else := _allow("caracal-workload-mint", _mint_diagnostics)

_use := _deny("no_rule_matched") if count(_requested) > 0
else := _deny("no_rule_matched") if count(_presented) == 0
else := _deny("mandate_target_mismatch") if not _targets_resource
else := _deny("resource_not_granted") if not _owner_key
else := _deny("role_scope_mismatch") if not _role_covers_presented
else := _allow(concat("", ["caracal-", _owner_key, "-use"]), [])

_outcome := _bootstrap if _path == "bootstrap"
else := _mint if _path == "mint"
else := _workload if _path == "workload"
else := _use if _path == "use"
else := _deny("no_rule_matched")

default result := {
	"decision": "deny",
	"evaluation_status": "complete",
	"determining_policies": [],
	"diagnostics": [{"reason": "no_rule_matched"}],
}

result := _deny("restriction_active") if data.serval_bundle.derived.restricted == true
else := _outcome
