package bastion.site.read_only_test

import data.bastion

call(sub, tool, risk) := {
	"version": 1,
	"principal": {"sub": sub, "iss": "https://issuer.example", "act": [], "cap": [{"tool": "*"}], "anonymous": false},
	"tool": {"name": tool, "connector": "fs", "risk": risk, "descriptor_hash": "sha256:00"},
	"arguments": {},
	"context": {"time": "2026-01-05T10:00:00Z", "transport": "http", "session": "s-1", "method": "tools/call"},
}

teams := {"read_only": ["agent:auditor"]}

test_read_only_agent_may_read if {
	bastion.allow with input as call("agent:auditor", "fs__read_file", "low") with data.bastion.teams as teams
	bastion.allow with input as call("agent:auditor", "fs__list_directory", "low") with data.bastion.teams as teams
	bastion.allow with input as call("agent:auditor", "crm__search_contacts", "low") with data.bastion.teams as teams
}

test_read_only_agent_may_not_write if {
	d := bastion.decision with input as call("agent:auditor", "fs__write_file", "low") with data.bastion.teams as teams
	not d.allow
	d.reasons == ["site read_only: agent:auditor is a read-only agent and fs__write_file is not a read-only tool"]
}

test_read_only_agent_may_not_call_risky_readers if {
	not bastion.allow with input as call("agent:auditor", "fs__read_file", "medium") with data.bastion.teams as teams
	not bastion.allow with input as call("agent:auditor", "fs__read_file", "low")
		with data.bastion.teams as teams
		with data.bastion.tool_risk as {"fs__read_file": "high"}
}

test_verb_must_follow_the_namespace if {
	not bastion.allow with input as call("agent:auditor", "fs__delete_read_file", "low") with data.bastion.teams as teams
	not bastion.allow with input as call("agent:auditor", "read_file", "low") with data.bastion.teams as teams
}

test_read_only_agents_do_not_see_writers if {
	listing := json.patch(call("agent:auditor", "fs__write_file", "low"), [{"op": "replace", "path": "/context/method", "value": "tools/list"}])
	not bastion.allow with input as listing with data.bastion.teams as teams
}

test_other_agents_are_unaffected if {
	bastion.allow with input as call("agent:deployer", "fs__write_file", "low") with data.bastion.teams as teams
	bastion.allow with input as call("agent:auditor", "fs__write_file", "low")
}
