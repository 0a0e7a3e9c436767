package bastion_test

import data.bastion

# grant_input(groups) is a version 1 sign-in of alice with those groups.
grant_input(groups) := {
	"version": 1,
	"identity": {"iss": "https://idp.example", "sub": "alice", "email": "alice@example.com", "groups": groups, "claims": {}},
	"client": {"id": "https://client.example/cimd.json", "registration": "metadata_document"},
	"scopes": [],
	"grant_type": "authorization_code",
	"context": {"time": "2026-01-01T00:00:00Z"},
}

test_group_maps_to_its_capabilities if {
	g := bastion.grants with input as grant_input(["engineering"])
	g == {
		"allow": true,
		"cap": [{"tool": "demo__read_file", "args": {"path": {"path_prefix": "/srv/"}}}],
		"ttl_s": 900,
		"approval": {"required": false, "reason": ""},
		"reasons": ["group engineering grants demo__read_file"],
	}
}

test_groups_add_up_without_duplicates if {
	g := bastion.grants with input as grant_input(["engineering", "sre", "engineering"])
	g.cap == [{"tool": "demo__read_file", "args": {"path": {"path_prefix": "/srv/"}}}, {"tool": "demo__*"}]
}

test_unknown_group_gets_nothing if {
	g := bastion.grants with input as grant_input(["marketing"])
	not g.allow
	g.cap == []
	g.reasons == ["no group of this identity is granted any tool"]
}

test_no_groups_gets_nothing if {
	g := bastion.grants with input as grant_input([])
	not g.allow
}

test_requested_scopes_add_nothing if {
	i := json.patch(grant_input(["engineering"]), [{"op": "replace", "path": "/scopes", "value": ["*", "demo__*", "admin"]}])
	g := bastion.grants with input as i
	g.cap == [{"tool": "demo__read_file", "args": {"path": {"path_prefix": "/srv/"}}}]
}

test_refresh_is_decided_the_same_way if {
	i := json.patch(grant_input(["sre"]), [{"op": "replace", "path": "/grant_type", "value": "refresh_token"}])
	g := bastion.grants with input as i
	g.cap == [{"tool": "demo__*"}]
}

test_unsupported_input_grants_nothing if {
	i := json.patch(grant_input(["sre"]), [{"op": "replace", "path": "/version", "value": 2}])
	g := bastion.grants with input as i
	not g.allow
	g.cap == []
	g.reasons == ["grants policy input is not a version 1 request of a known grant type"]
}

test_data_replaces_the_table_and_lifetime if {
	table := {"payments": [{"tool": "payments__refund", "args": {"amount": {"max": 100}}}]}
	g := bastion.grants with input as grant_input(["payments", "sre"])
		with data.bastion.grants_by_group as table
		with data.bastion.grants_ttl_s as 120
	g.cap == [{"tool": "payments__refund", "args": {"amount": {"max": 100}}}]
	g.ttl_s == 120
}

test_approval_groups_need_a_human if {
	g := bastion.grants with input as grant_input(["sre", "contractors"])
		with data.bastion.grants_approval_groups as ["contractors"]
	g.approval == {"required": true, "reason": "group(s) contractors need an approver to confirm each grant"}
}

test_demo_user_gets_the_demo_token_capabilities if {
	g := bastion.grants with input as grant_input(["bastion-demo"])
	g.cap == [
		{"tool": "demo__read_file", "args": {"path": {"path_prefix": "/srv/"}}},
		{"tool": "demo__delete_file", "args": {"path": {"path_prefix": "/srv/tmp/"}}},
		{"tool": "text-utils__*"},
	]
}

# workload_input(issuer, sub, claims) is a version 1 token exchange of a workload token.
workload_input(issuer, sub, claims) := {
	"version": 1,
	"identity": {"iss": "https://issuer.example", "sub": sub, "groups": [], "claims": claims, "source": "workload", "issuer_name": issuer},
	"client": {"id": "bastion-cli", "registration": "builtin"},
	"scopes": [],
	"grant_type": "token_exchange",
	"context": {"time": "2026-01-01T00:00:00Z"},
}

workload_rules := [
	{"issuer": "github", "match": {"repository": "acme/app", "workflow": "deploy"}, "cap": [{"tool": "demo__read_file"}]},
	{"issuer": "kubernetes", "match": {"kubernetes.io/namespace": "agents", "kubernetes.io/serviceaccount/name": "ci-bot"}, "cap": [{"tool": "demo__*"}]},
	{"issuer": "github", "match": {"sub": "repo:acme/ops:environment:prod"}, "cap": [{"tool": "ops__*"}]},
]

github_claims := {"repository": "acme/app", "workflow": "deploy", "ref": "refs/heads/main"}

k8s_claims := {"kubernetes.io": {"namespace": "agents", "serviceaccount": {"name": "ci-bot", "uid": "u-1"}}}

test_workload_rule_matches_every_claim if {
	g := bastion.grants with input as workload_input("github", "repo:acme/app:ref:refs/heads/main", github_claims)
		with data.bastion.grants_by_workload as workload_rules
	g.allow
	g.cap == [{"tool": "demo__read_file"}]
	g.reasons == ["workload rule 0 (github) grants demo__read_file"]
}

test_workload_rule_needs_every_claim if {
	claims := json.patch(github_claims, [{"op": "replace", "path": "/workflow", "value": "test"}])
	g := bastion.grants with input as workload_input("github", "repo:acme/app:ref:refs/heads/main", claims)
		with data.bastion.grants_by_workload as workload_rules
	not g.allow
	g.reasons == ["no workload rule of issuer github matches this identity"]
}

test_workload_rule_matches_nested_kubernetes_claims if {
	g := bastion.grants with input as workload_input("kubernetes", "system:serviceaccount:agents:ci-bot", k8s_claims)
		with data.bastion.grants_by_workload as workload_rules
	g.cap == [{"tool": "demo__*"}]
}

test_workload_rule_of_another_issuer_does_not_apply if {
	# The same claims from the Kubernetes issuer match no GitHub rule.
	g := bastion.grants with input as workload_input("kubernetes", "repo:acme/app:ref:refs/heads/main", github_claims)
		with data.bastion.grants_by_workload as workload_rules
	not g.allow
}

test_workload_rule_matches_the_subject if {
	g := bastion.grants with input as workload_input("github", "repo:acme/ops:environment:prod", {})
		with data.bastion.grants_by_workload as workload_rules
	g.cap == [{"tool": "ops__*"}]
}

test_workload_claims_cannot_override_the_subject if {
	g := bastion.grants with input as workload_input("github", "repo:evil/x", {"sub": "repo:acme/ops:environment:prod"})
		with data.bastion.grants_by_workload as workload_rules
	not g.allow
}

test_workload_rule_with_empty_match_grants_nothing if {
	g := bastion.grants with input as workload_input("github", "anyone", {})
		with data.bastion.grants_by_workload as [{"issuer": "github", "match": {}, "cap": [{"tool": "*"}]}]
	not g.allow
}

test_workload_gets_no_group_grants_by_default if {
	g := bastion.grants with input as workload_input("github", "x", github_claims)
	not g.allow
}

test_actor_is_seen_and_does_not_widen if {
	i := json.patch(workload_input("github", "repo:acme/app:ref:refs/heads/main", github_claims), [{"op": "add", "path": "/actor", "value": {"iss": "https://k8s.example", "sub": "system:serviceaccount:agents:x", "claims": {}, "issuer_name": "kubernetes"}}])
	g := bastion.grants with input as i
		with data.bastion.grants_by_workload as workload_rules
	g.cap == [{"tool": "demo__read_file"}]
}

client_input(client_id) := {
	"version": 1,
	"identity": {"iss": "https://bastion.example", "sub": client_id, "groups": [], "claims": {}, "source": "client"},
	"client": {"id": client_id, "registration": "static"},
	"scopes": [],
	"grant_type": "client_credentials",
	"context": {"time": "2026-01-01T00:00:00Z"},
}

test_client_credentials_from_the_client_table if {
	g := bastion.grants with input as client_input("nightly-report")
		with data.bastion.grants_by_client as {"nightly-report": [{"tool": "demo__read_file"}]}
	g.cap == [{"tool": "demo__read_file"}]
	g.reasons == ["client nightly-report grants demo__read_file"]
}

test_unknown_client_gets_nothing if {
	g := bastion.grants with input as client_input("other")
		with data.bastion.grants_by_client as {"nightly-report": [{"tool": "demo__read_file"}]}
	not g.allow
	g.reasons == ["client other is granted no tool (grants_by_client)"]
}

test_client_table_needs_the_client_source if {
	i := json.patch(client_input("nightly-report"), [{"op": "replace", "path": "/identity/source", "value": "workload"}])
	g := bastion.grants with input as i
		with data.bastion.grants_by_client as {"nightly-report": [{"tool": "demo__read_file"}]}
	not g.allow
}

test_id_jag_is_decided_by_groups if {
	i := json.patch(grant_input(["sre"]), [{"op": "replace", "path": "/grant_type", "value": "jwt_bearer"}])
	g := bastion.grants with input as i
	g.cap == [{"tool": "demo__*"}]
}
