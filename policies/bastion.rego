# METADATA
# title: Bastion default policy
# description: |
#   Deny unless one of the token's capabilities names the tool and the call's
#   arguments satisfy that capability's constraints. High-risk tools need a
#   human approval. The broker enforces `decision` and nothing else.
#
#   Authorization is computed only from positive rules (`granting`); the
#   `reasons` explain the outcome but can never widen it, so a reason that
#   fails to render cannot turn a denial into an allow.
#
#   Site rules (packages under bastion.site, see policies/examples/) can only
#   narrow this: veto a call (`deny`) or ask for a human approval
#   (`require_approval`). Data (data.bastion.tool_risk) can re-rate a tool.
#
#   The flow rules (flows.rego, same package) look at what earlier results
#   brought into the agent's context; they veto or ask for approval the
#   same way, and add `flow` to the decision when the input has one.
package bastion

# Obligations attached to every decision. A site policy may tighten them.
default_obligations := {"redact": [], "max_result_bytes": 1048576}

# METADATA
# title: decision
# description: The document the broker enforces (entrypoint bastion/decision).
decision := object.union(
	{
		"allow": allow,
		"approval": approval,
		"reasons": reasons,
		"obligations": default_obligations,
	},
	flow_decision,
)

default allow := false

allow if {
	supported_input
	count(granting) > 0
	count(vetoes) == 0
}

# Vetoes from site rules and from the flow rules (flows.rego).
vetoes := site_denials | flow_denials

supported_input if {
	input.version == 1
	input.context.method in {"tools/call", "tools/list"}
}

# --- Which capabilities grant the call --------------------------------------

# Indices of the capabilities whose tool glob names the tool.
naming contains i if {
	is_array(input.principal.cap)
	some i, cap in input.principal.cap
	tool_glob_matches(cap.tool, input.tool.name)
}

# Listing a tool only needs a capability that names it: argument constraints
# can only be judged on a concrete call.
granting contains i if {
	input.context.method == "tools/list"
	some i in naming
}

granting contains i if {
	input.context.method == "tools/call"
	some i in naming
	arguments_satisfy(input.principal.cap[i])
}

# "*" is the only wildcard and matches any run of characters (including none).
# Each literal piece is quoted with \Q...\E so that regex syntax in a tool name
# or glob stays literal; a backslash could close the quote early, so a glob
# containing one names nothing.
#
# The two commonest globs, "*" and a plain name, are decided without building
# a regex: same answer, a fraction of the work on every call. (OPA evaluates
# every body of a function, so each body must exclude the others' globs.)
tool_glob_matches("*", name) if is_string(name)

tool_glob_matches(glob, name) if {
	is_string(glob)
	not contains(glob, "*")
	not contains(glob, `\`)
	glob == name
}

tool_glob_matches(glob, name) if {
	is_string(glob)
	is_string(name)
	glob != "*"
	contains(glob, "*")
	not contains(glob, `\`)
	quoted := [concat("", [`\Q`, piece, `\E`]) | some piece in split(glob, "*")]
	regex.match(concat("", [`^(?s)`, concat(".*", quoted), "$"]), name)
}

cap_args(cap) := object.get(cap, "args", {})

arguments_satisfy(cap) if {
	args := cap_args(cap)
	is_object(args)
	every name, constraint in args {
		constraint_holds(name, constraint)
	}
}

# A constraint on an argument the call does not carry fails: absence must not
# be a way around a constraint. Every field present must hold; an unknown
# field has no `holds` rule and so fails closed.
constraint_holds(name, constraint) if {
	well_formed_constraint(constraint)
	arg := input.arguments[name]
	every kind, want in constraint {
		holds(kind, want, arg)
	}
}

well_formed_constraint(constraint) if {
	is_object(constraint)
	count(constraint) > 0
}

holds("eq", want, arg) if arg == want

holds("enum", allowed, arg) if {
	is_array(allowed)
	arg in allowed
}

holds("prefix", prefix, arg) if {
	is_string(prefix)
	is_string(arg)
	startswith(arg, prefix)
}

holds("path_prefix", prefix, arg) if {
	is_string(prefix)
	is_string(arg)
	path_under(prefix, arg)
	clean_path(arg)
}

# The pattern must be a valid regex on its own before it is anchored: that
# keeps an unbalanced pattern such as `a)|(.*` from escaping the anchors.
holds("pattern", pattern, arg) if {
	is_string(pattern)
	is_string(arg)
	regex.is_valid(pattern)
	regex.match(concat("", ["^(?:", pattern, ")$"]), arg)
}

holds("min", bound, arg) if {
	is_number(bound)
	is_number(arg)
	arg >= bound
}

holds("max", bound, arg) if {
	is_number(bound)
	is_number(arg)
	arg <= bound
}

# Length in Unicode code points.
holds("max_length", limit, arg) if {
	is_number(limit)
	is_string(arg)
	count(arg) <= limit
}

# Prefixes compare by path segment: "/srv" covers "/srv" and "/srv/x" but not
# "/srv-secrets"; "/srv/" covers everything below /srv/.
path_under(prefix, path) if {
	endswith(prefix, "/")
	startswith(path, prefix)
}

path_under(prefix, path) if {
	not endswith(prefix, "/")
	path == prefix
}

path_under(prefix, path) if {
	not endswith(prefix, "/")
	startswith(path, concat("", [prefix, "/"]))
}

# A string prefix says nothing about where a path resolves to; reject every
# spelling that can climb out of, or alias within, the prefix.
clean_path(path) if {
	not contains(path, "\u0000")
	not contains(path, `\`)
	not contains(path, "//")
	not dot_segment(path)
}

dot_segment(path) if {
	some segment in split(path, "/")
	segment in {".", ".."}
}

# --- Risk ----------------------------------------------------------------------

# data.bastion.tool_risk (a bundle's data.json, or the configured data file)
# maps exposed tool names to a risk level that replaces the one the broker
# derived from the tool's annotations, in either direction.
risk := override if {
	override := data.bastion.tool_risk[input.tool.name]
}

else := input.tool.risk

# --- Approval ----------------------------------------------------------------

default approval := {"required": false, "quorum": 1, "reason": ""}

approval := object.union_n([{"required": true, "quorum": approval_quorum, "reason": concat("; ", approval_reasons)}, approval_role_demand, approval_freshness]) if {
	input.context.method == "tools/call"
	count(approval_reasons) > 0
}

# data.bastion.approval_roles (role names): only approvers holding one of them
# may decide (with approvals.sso, roles come from the approver's IdP groups).
approval_role_demand := {"roles": data.bastion.approval_roles} if {
	well_formed_roles(data.bastion.approval_roles)
} else := {}

well_formed_roles(roles) if {
	is_array(roles)
	count(roles) > 0
	every role in roles {
		is_string(role)
		role != ""
	}
}

site_denials contains concat("", ["data.bastion.approval_roles is malformed (", display(data.bastion.approval_roles), "): a non-empty list of role names"]) if {
	data.bastion.approval_roles
	not well_formed_roles(data.bastion.approval_roles)
}

# data.bastion.approval_max_auth_age_s (a whole number of seconds): approvers
# must have signed in at most that long ago for their vote to count; an older
# session is sent to sign in again (the identity provider's max_age).
approval_freshness := {"max_auth_age_s": data.bastion.approval_max_auth_age_s} if {
	well_formed_auth_age(data.bastion.approval_max_auth_age_s)
} else := {}

well_formed_auth_age(age) if {
	is_number(age)
	age >= 1
	age == floor(age)
}

# A malformed value must not silently drop the demand for a recent sign-in: it vetoes every call.
site_denials contains concat("", ["data.bastion.approval_max_auth_age_s is malformed (", display(data.bastion.approval_max_auth_age_s), "): a whole number of seconds, at least 1"]) if {
	data.bastion.approval_max_auth_age_s
	not well_formed_auth_age(data.bastion.approval_max_auth_age_s)
}

# An unrecognised risk level is treated as high: fail closed.
approval_reasons contains concat("", [display(input.tool.name), risk_phrase]) if {
	not risk in {"low", "medium"}
}

approval_reasons contains concat("", ["site ", name, ": ", entry.reason]) if {
	some [name, entry] in site_approvals
}

approval_reasons contains concat("", ["flow rule ", f.rule, ": ", f.reason]) if {
	some f in flow_approvals
}

approval_quorum := max((({entry.quorum | some [_, entry] in site_approvals} | {f.quorum | some f in flow_approvals}) | {1}))

risk_phrase := " is a high-risk tool" if risk == "high"

else := " has an unrecognised risk level and is treated as high-risk"

# --- Site rules ----------------------------------------------------------------

# Every package bastion.site.<name> may define two sets:
#   deny              strings; any member vetoes the call, with that reason;
#   require_approval  {"reason": string, "quorum": integer >= 1} objects.
# Neither can grant anything. A site rule whose body errors (e.g. a builtin
# given a bad value) is undefined, not false, so write vetoes as "deny unless
# proven safe" (see policies/examples/time_window.rego).
site_denials contains concat("", ["site ", name, ": ", display(reason)]) if {
	some name
	some reason in data.bastion.site[name].deny
}

# A malformed approval entry must not silently lower the bar: it vetoes.
site_denials contains concat("", ["site ", name, ": malformed require_approval entry ", display(entry)]) if {
	some name
	some entry in data.bastion.site[name].require_approval
	not well_formed_approval(entry)
}

site_approvals contains [name, entry] if {
	some name
	some entry in data.bastion.site[name].require_approval
	well_formed_approval(entry)
}

well_formed_approval(entry) if {
	is_string(entry.reason)
	is_number(entry.quorum)
	entry.quorum >= 1
	entry.quorum == floor(entry.quorum)
}

# --- Reasons -----------------------------------------------------------------

reasons := sort(grant_reasons) if allow

# Capabilities grant the call, but a site or flow rule vetoes it: only the veto is news.
else := sort(vetoes) if {
	count(granting) > 0
	count(vetoes) > 0
}

else := sort(deny_reasons | vetoes) if count(deny_reasons | vetoes) > 0

else := ["no capability allows this call"]

grant_reasons contains concat("", [cap_label(i), verb, display(input.tool.name)]) if {
	some i in granting
	verb := {"tools/call": " allows ", "tools/list": " lists "}[input.context.method]
}

deny_reasons contains "policy input is not a version 1 tools/call or tools/list request" if {
	not supported_input
}

deny_reasons contains concat("", ["no capability names tool ", display(input.tool.name)]) if {
	supported_input
	count(naming) == 0
}

deny_reasons contains concat("", ["capability ", format_int(i, 10), ": ", problem]) if {
	supported_input
	input.context.method == "tools/call"
	some i in naming
	some problem in cap_problems(input.principal.cap[i])
}

cap_label(i) := concat("", ["capability ", format_int(i, 10), " (", display(input.principal.cap[i].tool), ")"])

cap_problems(cap) := {"args must be an object"} if not is_object(cap_args(cap))

else := {concat("", ["argument ", name, ": ", problem]) |
	some name, constraint in cap_args(cap)
	some problem in constraint_problems(name, constraint)
}

constraint_problems(name, constraint) := {"malformed constraint (must be a non-empty object)"} if {
	not well_formed_constraint(constraint)
}

else := {"missing (this capability constrains it, so it is required)"} if {
	not name_in_arguments(name)
}

else := {explain(kind, want) |
	some kind, want in constraint
	not holds(kind, want, input.arguments[name])
}

name_in_arguments(name) if {
	some key, _ in input.arguments
	key == name
}

explain("eq", want) := concat("", ["must equal ", json.marshal(want)])

explain("enum", allowed) := concat("", ["must be one of ", json.marshal(allowed)])

explain("prefix", prefix) := concat("", ["must be a string starting with ", json.marshal(prefix)])

explain("path_prefix", prefix) := concat("", [
	"must stay under ", display(prefix),
	" without '..' or '.' segments, '//', backslashes or NUL bytes",
])

explain("pattern", pattern) := concat("", ["must be a string fully matching the pattern ", json.marshal(pattern)]) if {
	regex.is_valid(pattern)
}

explain("pattern", pattern) := concat("", ["has a pattern that is not a valid RE2 expression: ", json.marshal(pattern)]) if {
	not regex.is_valid(pattern)
}

explain("min", bound) := concat("", ["must be a number >= ", json.marshal(bound)])

explain("max", bound) := concat("", ["must be a number <= ", json.marshal(bound)])

explain("max_length", limit) := concat("", ["must be a string of at most ", json.marshal(limit), " characters"])

explain(kind, _) := concat("", ["unsupported constraint ", json.marshal(kind)]) if {
	not kind in {"eq", "enum", "prefix", "path_prefix", "pattern", "min", "max", "max_length"}
}

# Strings as themselves, anything else as JSON, so a malformed value still
# renders instead of leaving the reason undefined.
display(value) := value if is_string(value)

else := json.marshal(value)
