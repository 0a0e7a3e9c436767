package bastion_flows_test

import data.bastion

# --- Fixtures ----------------------------------------------------------------

mail_source := {"id": "s1", "tool": "mail__read_inbox", "at": "2026-01-01T00:00:00Z", "age_s": 3600, "labels": ["untrusted", "private"], "reason": "tool labels"}

web_source := {"id": "s2", "tool": "web__fetch", "at": "2026-01-01T00:00:00Z", "age_s": 3600, "labels": ["untrusted"], "reason": "tool labels"}

files_source := {"id": "s3", "tool": "files__read_file", "at": "2026-01-01T00:00:00Z", "age_s": 3600, "labels": ["private"], "reason": "tool labels"}

# flow_call(tool, tool_labels, egress, labels, sources, tainted) is a tools/call
# input with a flow: `labels` maps flow labels to source ids.
flow_call(tool, tool_labels, egress, labels, sources, tainted) := {
	"version": 1,
	"principal": {"sub": "agent:ci-bot", "iss": "https://issuer.example", "act": [], "cap": [{"tool": "*"}], "anonymous": false},
	"tool": {"name": tool, "connector": "x", "risk": "low", "descriptor_hash": "sha256:00"},
	"arguments": {},
	"context": {"time": "2026-01-01T01:00:00Z", "transport": "http", "session": "s-1", "method": "tools/call"},
	"flow": {
		"labels": labels,
		"sources": sources,
		"tool": {"labels": tool_labels, "egress": egress},
		"arguments": tainted,
	},
}

clean := {}

after_web := {"untrusted": ["s2"]}

after_mail := {"untrusted": ["s1"], "private": ["s1"]}

after_web_and_files := {"untrusted": ["s2"], "private": ["s3"]}

pay(labels, sources) := flow_call("payments__send_money", ["external"], [], labels, sources, [])

send_mail(to_host, labels, sources) := flow_call(
	"mail__send_email", [], [{"argument": "/to", "kind": "email", "value": "x", "host": to_host}],
	labels, sources, [],
)

delete(labels, sources) := flow_call("files__delete_file", ["destructive"], [], labels, sources, [])

rules_of(d) := {f.rule | some f in d.flow.findings}

# --- Without untrusted content nothing changes ----------------------------------

test_clean_flow_allows_external_call if {
	d := bastion.decision with input as pay(clean, [])
	d.allow
	not d.approval.required
	d.flow == {"labels": ["external"], "findings": []}
}

test_private_data_alone_allows_external_call if {
	d := bastion.decision with input as pay({"private": ["s3"]}, [files_source])
	d.allow
	not d.approval.required
}

test_untrusted_content_allows_plain_reads if {
	d := bastion.decision with input as flow_call("files__read_file", ["private"], [], after_web, [web_source], [])
	d.allow
	not d.approval.required
	d.flow.labels == ["private"]
}

test_no_flow_input_keeps_the_decision_shape if {
	d := bastion.decision with input as json.remove(pay(after_web, [web_source]), ["flow"])
	object.keys(d) == {"allow", "approval", "reasons", "obligations"}
	not d.approval.required
}

test_listing_ignores_the_flow if {
	listing := json.patch(pay(after_web, [web_source]), [{"op": "replace", "path": "/context/method", "value": "tools/list"}])
	d := bastion.decision with input as listing
	d.allow
	not d.approval.required
	d.flow.findings == []
}

# --- untrusted_sink -------------------------------------------------------------

test_untrusted_sink_external_needs_approval if {
	d := bastion.decision with input as pay(after_web, [web_source])
	d.allow
	d.approval == {
		"required": true, "quorum": 1,
		"reason": "flow rule untrusted_sink: untrusted content entered this agent's context (from web__fetch), and this call is external",
	}
	d.flow.findings == [{
		"rule": "untrusted_sink", "effect": "approve", "quorum": 1, "sources": ["s2"], "arguments": [],
		"reason": "untrusted content entered this agent's context (from web__fetch), and this call is external",
	}]
}

test_untrusted_sink_destructive_needs_approval if {
	d := bastion.decision with input as delete(after_web, [web_source])
	d.allow
	d.approval.required
	rules_of(d) == {"untrusted_sink"}
	contains(d.approval.reason, "this call is destructive")
}

test_untrusted_sink_off_by_data if {
	d := bastion.decision with input as delete(after_web, [web_source])
		with data.bastion.flows as {"rules": {"untrusted_sink": {"enabled": false}}}
	d.allow
	not d.approval.required
}

test_untrusted_sink_can_deny if {
	d := bastion.decision with input as delete(after_web, [web_source])
		with data.bastion.flows as {"rules": {"untrusted_sink": {"action": "deny"}}}
	not d.allow
	d.reasons == ["flow rule untrusted_sink: untrusted content entered this agent's context (from web__fetch), and this call is destructive"]
}

# --- trifecta ---------------------------------------------------------------------

test_trifecta_needs_a_quorum_of_two_by_default if {
	d := bastion.decision with input as pay(after_web_and_files, [web_source, files_source])
	d.allow
	d.approval.required
	d.approval.quorum == 2
	rules_of(d) == {"untrusted_sink", "trifecta"}
	some f in d.flow.findings
	f.rule == "trifecta"
	f.sources == ["s2", "s3"]
	f.reason == "untrusted content (from web__fetch) and private data (from files__read_file) are both in this agent's context, and this call sends data outside the organisation"
}

test_trifecta_one_source_with_both_labels if {
	d := bastion.decision with input as pay(after_mail, [mail_source])
	d.approval.quorum == 2
	rules_of(d) == {"untrusted_sink", "trifecta"}
}

test_trifecta_deny_when_configured if {
	d := bastion.decision with input as pay(after_mail, [mail_source])
		with data.bastion.flows as {"rules": {"trifecta": {"action": "deny"}}}
	not d.allow
	count(d.reasons) == 1
	startswith(d.reasons[0], "flow rule trifecta: ")
}

test_trifecta_does_not_apply_to_destructive_calls if {
	d := bastion.decision with input as delete(after_mail, [mail_source])
	rules_of(d) == {"untrusted_sink"}
	d.approval.quorum == 1
}

test_trifecta_off_leaves_untrusted_sink if {
	d := bastion.decision with input as pay(after_mail, [mail_source])
		with data.bastion.flows as {"rules": {"trifecta": {"enabled": false}}}
	rules_of(d) == {"untrusted_sink"}
	d.approval.quorum == 1
}

# --- Egress chosen by arguments and the organisation's own domains ----------------

test_mail_to_outside_is_external if {
	d := bastion.decision with input as send_mail("evil.example", after_mail, [mail_source])
	d.flow.labels == ["external"]
	rules_of(d) == {"untrusted_sink", "trifecta"}
}

test_mail_inside_the_organisation_is_not_external if {
	d := bastion.decision with input as send_mail("Corp.Example", after_mail, [mail_source])
		with data.bastion.flows as {"internal_domains": ["corp.example"]}
	d.allow
	not d.approval.required
	d.flow.labels == []
}

test_subdomain_is_inside if {
	d := bastion.decision with input as send_mail("eu.mail.corp.example", after_mail, [mail_source])
		with data.bastion.flows as {"internal_domains": ["corp.example"]}
	not d.approval.required
}

test_lookalike_domain_is_outside if {
	d := bastion.decision with input as send_mail("evilcorp.example", after_mail, [mail_source])
		with data.bastion.flows as {"internal_domains": ["corp.example"]}
	d.approval.required
}

test_unreadable_destination_is_outside if {
	d := bastion.decision with input as send_mail("", after_mail, [mail_source])
		with data.bastion.flows as {"internal_domains": ["corp.example"]}
	d.flow.labels == ["external"]
}

test_one_outside_recipient_makes_it_external if {
	two := json.patch(send_mail("corp.example", after_mail, [mail_source]), [{
		"op": "add", "path": "/flow/tool/egress/-",
		"value": {"argument": "/cc/0", "kind": "email", "value": "y", "host": "evil.example"},
	}])
	d := bastion.decision with input as two with data.bastion.flows as {"internal_domains": ["corp.example"]}
	d.flow.labels == ["external"]
	d.approval.required
}

# --- tainted_argument -----------------------------------------------------------------

tainted_iban := [{"argument": "/iban", "kind": "iban", "value": "DE89370400440532013000", "sources": ["s1"]}]

test_tainted_argument_needs_approval if {
	d := bastion.decision with input as flow_call("payments__send_money", ["external"], [], after_mail, [mail_source], tainted_iban)
		with data.bastion.flows as {"rules": {"untrusted_sink": {"enabled": false}, "trifecta": {"enabled": false}}}
	d.allow
	d.approval.required
	d.flow.findings == [{
		"rule": "tainted_argument", "effect": "approve", "quorum": 1, "sources": ["s1"], "arguments": ["/iban"],
		"reason": "argument /iban came from untrusted content (from mail__read_inbox) and from nothing trusted, and this call is external",
	}]
}

test_tainted_argument_can_deny if {
	d := bastion.decision with input as flow_call("payments__send_money", ["external"], [], after_mail, [mail_source], tainted_iban)
		with data.bastion.flows as {"rules": {"tainted_argument": {"action": "deny"}}}
	not d.allow
	some reason in d.reasons
	startswith(reason, "flow rule tainted_argument: argument /iban")
}

test_tainted_argument_of_a_read_is_not_a_finding if {
	d := bastion.decision with input as flow_call("files__read_file", [], [], after_mail, [mail_source], tainted_iban)
	d.flow.findings == []
}

# --- Settings: data labels, expiry, malformed settings ---------------------------------

test_data_relabels_a_tool if {
	d := bastion.decision with input as flow_call("chat__post", [], [], after_web, [web_source], [])
		with data.bastion.flows as {"tools": {"chat__post": {"labels": ["external"]}}}
	d.approval.required
	d.flow.labels == ["external"]
}

test_data_can_clear_a_tools_labels if {
	d := bastion.decision with input as pay(after_web, [web_source])
		with data.bastion.flows as {"tools": {"payments__send_money": {"labels": []}}}
	not d.approval.required
}

test_labels_expire_when_policy_says_so if {
	d := bastion.decision with input as pay(after_web, [web_source])
		with data.bastion.flows as {"expire_after_s": 1800}
	not d.approval.required
}

test_labels_within_expiry_count if {
	d := bastion.decision with input as pay(after_web, [web_source])
		with data.bastion.flows as {"expire_after_s": 7200}
	d.approval.required
}

test_undated_source_counts_with_expiry if {
	d := bastion.decision with input as pay(after_web, [])
		with data.bastion.flows as {"expire_after_s": 60}
	d.approval.required
}

test_malformed_rule_settings_refuse if {
	d := bastion.decision with input as pay(after_web, [web_source])
		with data.bastion.flows as {"rules": {"untrusted_sink": {"quorum": 0}}}
	not d.allow
	contains(d.reasons[0], "settings in data.bastion.flows.rules are malformed")
}

test_unknown_action_refuses if {
	d := bastion.decision with input as pay(after_web, [web_source])
		with data.bastion.flows as {"rules": {"untrusted_sink": {"action": "log"}}}
	not d.allow
}

test_flow_veto_wins_over_site_approval_and_grants if {
	d := bastion.decision with input as pay(after_mail, [mail_source])
		with data.bastion.flows as {"rules": {"trifecta": {"action": "deny"}}}
	not d.allow
	d.reasons == [concat("", [
		"flow rule trifecta: untrusted content (from mail__read_inbox) and private data (from mail__read_inbox) are both in this agent's context, ",
		"and this call sends data outside the organisation",
	])]
}

test_source_without_age_counts_with_expiry if {
	d := bastion.decision with input as pay(after_web, [json.remove(web_source, ["age_s"])])
		with data.bastion.flows as {"expire_after_s": 60}
	d.approval.required
}
