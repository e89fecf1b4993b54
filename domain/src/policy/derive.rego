# Bundle-time facts of the decision contract (contract version 2026-07-12).
#
# Evaluated once when a bundle is compiled, over the merged data documents, and mounted
# at data.serval_bundle.derived: everything here depends on the documents only, never on
# a request, so no request pays for it again.
package serval.derive

import rego.v1

docs := data.serval_bundle.documents

_nonempty_str(s) if {
	is_string(s)
	s != ""
}

_has(o, k) if {
	some key, _ in o
	key == k
}

restricted if {
	r := docs.restrict
	r != null
	not _empty_collection(r)
}

_empty_collection(r) if {
	is_array(r)
	count(r) == 0
}

_empty_collection(r) if {
	is_object(r)
	count(r) == 0
}

_empty_collection(r) if {
	is_set(r)
	count(r) == 0
}

risk_ok if {
	is_array(docs.risk)
	every r in docs.risk {
		is_object(r)
		_nonempty_str(r.scope)
		_nonempty_str(r.tier)
	}
}

_approver_ok(t) if not _has(t, "approver")

_approver_ok(t) if t.approver in {"operator", "subject", "any"}

_ttl_ok(t) if not _has(t, "ttl_seconds")

_ttl_ok(t) if {
	is_number(t.ttl_seconds)
	t.ttl_seconds > 0
	t.ttl_seconds == round(t.ttl_seconds)
}

_privacy_ok(t) if not _has(t, "privacy")

_privacy_ok(t) if t.privacy in {"identified", "pseudonymous", "anonymous"}

tiers_ok if {
	is_array(docs.approval_tiers)
	every t in docs.approval_tiers {
		is_object(t)
		_nonempty_str(t.tier)
		_approver_ok(t)
		_ttl_ok(t)
		_privacy_ok(t)
	}
}

# A confinement that is not a list of {label_prefix: string, scopes: array} confines
# everything (fail closed).
confinement_ok if {
	is_array(docs.confinement)
	every c in docs.confinement {
		is_object(c)
		is_string(c.label_prefix)
		is_array(c.scopes)
	}
}

# scope -> its risk entries, in document order.
risk_by_scope := {s: [{"scope": s, "tier": r.tier} | some r in docs.risk; r.scope == s] |
	some x in docs.risk
	s := x.scope
} if risk_ok else := {}

# tier -> its approval entries, in document order.
tiers_by_name := {t: [e | some e in docs.approval_tiers; e.tier == t] |
	some x in docs.approval_tiers
	t := x.tier
} if tiers_ok else := {}

derived := {
	"restricted": restricted_bool,
	"risk_ok": risk_ok_bool,
	"tiers_ok": tiers_ok_bool,
	"confinement_ok": confinement_ok_bool,
	"confinement": confinement_list,
	"risk_by_scope": risk_by_scope,
	"tiers_by_name": tiers_by_name,
}

restricted_bool := true if restricted
else := false

risk_ok_bool := true if risk_ok
else := false

tiers_ok_bool := true if tiers_ok
else := false

confinement_ok_bool := true if confinement_ok
else := false

confinement_list := docs.confinement if confinement_ok
else := []
