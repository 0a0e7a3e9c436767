package bastion.site.production_approval_test

import data.bastion

call(connector, arguments) := {
	"version": 1,
	"principal": {"sub": "agent:deployer", "iss": "https://issuer.example", "act": [], "cap": [{"tool": "*"}], "anonymous": false},
	"tool": {"name": concat("", [connector, "__run"]), "connector": connector, "risk": "low", "descriptor_hash": "sha256:00"},
	"arguments": arguments,
	"context": {"time": "2026-01-05T10:00:00Z", "transport": "http", "session": "s-1", "method": "tools/call"},
}

production := {"required": true, "quorum": 1, "reason": "site production_approval: touches production"}

test_production_connector_needs_approval if {
	d := bastion.decision with input as call("db-main", {"sql": "select 1"}) with data.bastion.production_connectors as ["db-main"]
	d.allow
	d.approval == production
}

test_production_environment_argument_needs_approval if {
	bastion.approval == production with input as call("deploy", {"env": "PROD"})
	bastion.approval == production with input as call("deploy", {"environment": "production"})
}

test_production_anywhere_in_the_arguments_needs_approval if {
	bastion.approval == production with input as call("ssh", {"host": "api.prod.example.com"})
	bastion.approval == production with input as call("fs", {"path": "/srv/production/app.yaml"})
	bastion.approval == production with input as call("k8s", {"target": {"clusters": ["staging", "eu-prod-1"]}})
}

test_similar_words_do_not if {
	not bastion.approval.required with input as call("deploy", {"env": "staging", "note": "product launch, reproducible build"})
	not bastion.approval.required with input as call("db-main", {"sql": "select 1"}) with data.bastion.production_connectors as ["db-other"]
}
