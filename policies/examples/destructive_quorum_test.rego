package bastion.site.destructive_quorum_test

import data.bastion

call(tool, risk) := {
	"version": 1,
	"principal": {"sub": "agent:janitor", "iss": "https://issuer.example", "act": [], "cap": [{"tool": "*"}], "anonymous": false},
	"tool": {"name": tool, "connector": "db", "risk": risk, "descriptor_hash": "sha256:00"},
	"arguments": {},
	"context": {"time": "2026-01-05T10:00:00Z", "transport": "http", "session": "s-1", "method": "tools/call"},
}

test_destructive_tools_need_two_approvers if {
	d := bastion.decision with input as call("db__drop_table", "high")
	d.allow
	d.approval == {
		"required": true,
		"quorum": 2,
		"reason": "db__drop_table is a high-risk tool; site destructive_quorum: destroys data; two approvers required",
	}
	bastion.approval.quorum == 2 with input as call("fs__delete_file", "low")
	bastion.approval.quorum == 2 with input as call("s3__purge_bucket", "medium")
}

test_listed_tools_need_two_approvers if {
	bastion.approval.quorum == 2 with input as call("db__vacuum", "low") with data.bastion.destructive_tools as ["db__vacuum"]
}

test_other_tools_keep_the_default if {
	not bastion.approval.required with input as call("db__select_rows", "low")
	bastion.approval == {"required": true, "quorum": 1, "reason": "db__undelete_row is a high-risk tool"} with input as call("db__undelete_row", "high")
}
