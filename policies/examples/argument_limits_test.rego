package bastion.site.argument_limits_test

import data.bastion

call(tool, arguments) := {
	"version": 1,
	"principal": {"sub": "agent:finance", "iss": "https://issuer.example", "act": [], "cap": [{"tool": "*"}], "anonymous": false},
	"tool": {"name": tool, "connector": "payments", "risk": "low", "descriptor_hash": "sha256:00"},
	"arguments": arguments,
	"context": {"time": "2026-01-05T10:00:00Z", "transport": "http", "session": "s-1", "method": "tools/call"},
}

transfer(amount) := call("payments__transfer", {"amount": amount, "to": "DE00"})

test_transfers_up_to_the_limit if {
	bastion.allow with input as transfer(1)
	bastion.allow with input as transfer(999.99)
	bastion.allow with input as transfer(1000)
}

test_transfers_over_the_limit_or_malformed if {
	d := bastion.decision with input as transfer(1000.01)
	not d.allow
	d.reasons == ["site argument_limits: amount must be a number above 0 and at most 1000"]
	not bastion.allow with input as transfer(0)
	not bastion.allow with input as transfer(-5)
	not bastion.allow with input as transfer("1")
	not bastion.allow with input as call("payments__transfer", {"to": "DE00"})
}

test_limit_from_data if {
	bastion.allow with input as transfer(5000) with data.bastion.limits.max_transfer as 10000
	not bastion.allow with input as transfer(50) with data.bastion.limits.max_transfer as 10
	not bastion.allow with input as transfer(500) with data.bastion.limits.max_transfer as "lots"
}

test_paths_under_allowed_prefixes if {
	bastion.allow with input as call("fs__read_file", {"path": "/srv/app/config.yaml"})
	bastion.allow with input as call("fs__write_file", {"path": "/tmp/agents/out.txt", "content": "x"})
	bastion.allow with input as call("fs__list_roots", {})
}

test_paths_elsewhere_or_escaping if {
	d := bastion.decision with input as call("fs__read_file", {"path": "/etc/shadow"})
	d.reasons == ["site argument_limits: path must stay under one of /srv/, /tmp/agents/"]
	not bastion.allow with input as call("fs__read_file", {"path": "/srv/../etc/shadow"})
	not bastion.allow with input as call("fs__read_file", {"path": "/tmp/agents-evil/x"})
	not bastion.allow with input as call("fs__read_file", {"path": ["/srv/a"]})
}

test_other_tools_are_unaffected if {
	bastion.allow with input as call("web__fetch", {"path": "/etc/shadow", "amount": 1000000000})
}
