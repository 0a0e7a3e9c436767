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
	g.reasons == ["grants policy input is not a version 1 authorization_code or refresh_token request"]
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
