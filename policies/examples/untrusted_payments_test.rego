package bastion.site.untrusted_payments_test

import data.bastion

pay(iban, untrusted) := {
	"version": 1,
	"principal": {"sub": "agent:finance", "iss": "https://issuer.example", "act": [], "cap": [{"tool": "*"}], "anonymous": false},
	"tool": {"name": "payments__send_money", "connector": "payments", "risk": "medium", "descriptor_hash": "sha256:00"},
	"arguments": {"iban": iban, "amount": 100},
	"context": {"time": "2026-01-05T10:00:00Z", "transport": "http", "session": "s-1", "method": "tools/call"},
	"flow": {
		"labels": {"untrusted": untrusted},
		"sources": [{"id": "s1", "tool": "mail__read_email", "at": "2026-01-05T09:59:00Z", "age_s": 60, "labels": ["untrusted"], "reason": "tool labels (config): untrusted", "call": "c1"}],
		"tool": {"labels": ["external"], "egress": []},
		"arguments": [],
	},
}

test_payment_after_untrusted_content_is_refused if {
	d := bastion.decision with input as pay("GB82 WEST 1234 5698 7654 32", ["s1"])
	not d.allow
	"site untrusted_payments: payments are refused after untrusted content entered the agent's context" in d.reasons
}

test_payment_in_a_clean_flow_runs if {
	d := bastion.decision with input as pay("GB82WEST12345698765432", [])
	d.allow
	not d.approval.required
}

test_trusted_payee_goes_to_approvers_instead if {
	d := bastion.decision with input as pay("de89 3704 0044 0532 0130 00", ["s1"])
		with data.bastion.trusted_ibans as ["DE89370400440532013000"]
	d.allow
	d.approval.required
}
