# Flow rules (the lethal trifecta).
#
# Every check in bastion.rego looks at one call. These rules look at the
# agent's flow: the labels that earlier results brought into its context
# (`untrusted` content from outside, `private` data), which the broker
# keeps per agent identity and passes as `input.flow`, together with this
# call's own labels (`external`: sends data or acts outside the
# organisation; `destructive`) and the arguments whose values came from
# untrusted content (argument provenance).
#
# Rules, each switched and tuned in data.bastion.flows.rules.<name>:
#   untrusted_sink    untrusted content in the flow: external and
#                     destructive calls need an approval (quorum 1).
#   trifecta          untrusted and private both in the flow: external
#                     calls are refused (action "deny") or need a quorum
#                     of approvers (action "approve", the default, 2).
#   tainted_argument  an external or destructive call carries an argument
#                     value that came from untrusted content and from
#                     nothing trusted: approval (default) or "deny".
#
# Refinements in data.bastion.flows: internal_domains (egress to these
# domains and their subdomains is not external), expire_after_s (labels
# older than this stop counting; 0, the default, means never), tools
# (<exposed tool name> → {"labels": [...]}, replacing the labels the broker
# derived from config and annotations). Site rules (bastion.site.*) can
# read input.flow and add vetoes or approvals; they cannot lift these.
#
# A decision for an input with `flow` carries `flow`: the tool's effective
# labels (the broker records the result labels from it) and the findings,
# which the broker turns into the explanation approvers and the audit see.
package bastion

flow_input := object.get(input, "flow", {})

# --- Settings ----------------------------------------------------------------

flow_defaults := {
	"internal_domains": [],
	"expire_after_s": 0,
	"tools": {},
	"rules": {
		"untrusted_sink": {"enabled": true, "action": "approve", "quorum": 1},
		"trifecta": {"enabled": true, "action": "approve", "quorum": 2},
		"tainted_argument": {"enabled": true, "action": "approve", "quorum": 1},
	},
}

flow_data := data.bastion.flows if is_object(data.bastion.flows)

else := {}

# object.union merges recursively: data overrides each default it names.
flow_settings := object.union(flow_defaults, flow_data)

flow_rule(name) := flow_settings.rules[name]

flow_rule_on(name) if flow_rule(name).enabled == true

# A rule whose settings make no sense fails closed: it refuses, and says why.
flow_rule_effect(name) := "deny" if not well_formed_flow_rule(flow_rule(name))

else := flow_rule(name).action

flow_rule_quorum(name) := flow_rule(name).quorum if well_formed_flow_rule(flow_rule(name))

else := 1

well_formed_flow_rule(rule) if {
	is_boolean(rule.enabled)
	rule.action in {"approve", "deny"}
	is_number(rule.quorum)
	rule.quorum >= 1
	rule.quorum == floor(rule.quorum)
}

flow_malformed_note(name) := "" if well_formed_flow_rule(flow_rule(name))

else := " (its settings in data.bastion.flows.rules are malformed, so it refuses)"

# --- Labels -------------------------------------------------------------------

# The tool's labels: from data when it names the tool, else what the broker
# derived (connector or plugin config, then MCP annotations).
flow_tool_labels := {label | some label in override} if {
	override := flow_settings.tools[input.tool.name].labels
	is_array(override)
}

else := {label | some label in object.get(flow_input, ["tool", "labels"], [])}

flow_egress := object.get(flow_input, ["tool", "egress"], [])

# A destination inside the organisation: its host is one of the internal
# domains or below one. A destination the broker could not read has host ""
# and is external.
internal_target(target) if {
	host := lower(target.host)
	host != ""
	some domain in flow_settings.internal_domains
	host_in_domain(host, lower(domain))
}

host_in_domain(host, domain) if host == domain

host_in_domain(host, domain) if endswith(host, concat("", [".", domain]))

# What this call does: static labels, and egress chosen by its arguments.
flow_call_labels contains "external" if "external" in flow_tool_labels

flow_call_labels contains "external" if {
	some target in flow_egress
	not internal_target(target)
}

flow_call_labels contains "destructive" if "destructive" in flow_tool_labels

flow_effective_labels := flow_call_labels | (flow_tool_labels & {"untrusted", "private"})

flow_sink := flow_call_labels & {"external", "destructive"}

# --- What the flow holds ------------------------------------------------------

flow_sources := object.get(flow_input, "sources", [])

# Sources of `label` that still count (data.bastion.flows.expire_after_s).
flow_live(label) := {id |
	some id in object.get(flow_input, ["labels", label], [])
	source_live(id)
}

source_live(_) if flow_settings.expire_after_s == 0

# A source the broker no longer details, or did not date, counts (fail closed).
source_live(id) if {
	flow_settings.expire_after_s != 0
	not source_dated(id)
}

source_live(id) if {
	some source in flow_sources
	source.id == id
	source.age_s <= flow_settings.expire_after_s
}

source_dated(id) if {
	some source in flow_sources
	source.id == id
	is_number(source.age_s)
}

flow_untrusted := flow_live("untrusted")

flow_private := flow_live("private")

# Tainted arguments whose sources still count.
flow_tainted := [a |
	some a in object.get(flow_input, "arguments", [])
	some id in a.sources
	source_live(id)
]

flow_tainted_sources := {id |
	some a in flow_tainted
	some id in a.sources
}

# "mail__read_inbox, web__fetch": the tools that brought these sources.
flow_source_tools(ids) := concat(", ", sort({source.tool |
	some source in flow_sources
	source.id in ids
}))

flow_source_phrase(ids) := concat("", [" (from ", flow_source_tools(ids), ")"]) if flow_source_tools(ids) != ""

else := ""

flow_sink_phrase := concat(" and ", sort(flow_sink))

# --- Findings -----------------------------------------------------------------

flow_applies if {
	input.context.method == "tools/call"
	is_object(flow_input)
	count(flow_input) > 0
}

flow_findings contains {
	"rule": "untrusted_sink",
	"effect": flow_rule_effect("untrusted_sink"),
	"quorum": flow_rule_quorum("untrusted_sink"),
	"sources": sort(flow_untrusted),
	"arguments": [],
	"reason": concat("", [
		"untrusted content entered this agent's context", flow_source_phrase(flow_untrusted),
		", and this call is ", flow_sink_phrase, flow_malformed_note("untrusted_sink"),
	]),
} if {
	flow_applies
	flow_rule_on("untrusted_sink")
	count(flow_untrusted) > 0
	count(flow_sink) > 0
}

flow_findings contains {
	"rule": "trifecta",
	"effect": flow_rule_effect("trifecta"),
	"quorum": flow_rule_quorum("trifecta"),
	"sources": sort(flow_untrusted | flow_private),
	"arguments": [],
	"reason": concat("", [
		"untrusted content", flow_source_phrase(flow_untrusted),
		" and private data", flow_source_phrase(flow_private),
		" are both in this agent's context, and this call sends data outside the organisation",
		flow_malformed_note("trifecta"),
	]),
} if {
	flow_applies
	flow_rule_on("trifecta")
	count(flow_untrusted) > 0
	count(flow_private) > 0
	"external" in flow_call_labels
}

flow_findings contains {
	"rule": "tainted_argument",
	"effect": flow_rule_effect("tainted_argument"),
	"quorum": flow_rule_quorum("tainted_argument"),
	"sources": sort(flow_tainted_sources),
	"arguments": sort({a.argument | some a in flow_tainted}),
	"reason": concat("", [
		"argument ", concat(", ", sort({a.argument | some a in flow_tainted})),
		" came from untrusted content", flow_source_phrase(flow_tainted_sources),
		" and from nothing trusted, and this call is ", flow_sink_phrase,
		flow_malformed_note("tainted_argument"),
	]),
} if {
	flow_applies
	flow_rule_on("tainted_argument")
	count(flow_tainted) > 0
	count(flow_sink) > 0
}

flow_denials contains concat("", ["flow rule ", f.rule, ": ", f.reason]) if {
	some f in flow_findings
	f.effect == "deny"
}

flow_approvals contains f if {
	some f in flow_findings
	f.effect == "approve"
}

# What the decision says about the flow, when the broker sent one.
flow_decision := {} if not flow_applies_to_decision

else := {"flow": {
	"labels": sort(flow_effective_labels),
	"findings": sort(flow_findings),
}}

flow_applies_to_decision if {
	is_object(flow_input)
	count(flow_input) > 0
}
