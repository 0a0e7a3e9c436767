package bastion_test

import data.bastion

# --- Fixtures ----------------------------------------------------------------

# call(caps, tool, risk, arguments) is a version 1 tools/call input.
call(caps, tool, risk, arguments) := {
	"version": 1,
	"principal": {"sub": "agent:ci-bot", "iss": "https://issuer.example", "act": [], "cap": caps, "anonymous": false},
	"tool": {"name": tool, "connector": "demo", "risk": risk, "descriptor_hash": "sha256:00"},
	"arguments": arguments,
	"context": {"time": "2026-01-01T00:00:00Z", "transport": "http", "session": "s-1", "method": "tools/call"},
}

listing(caps, tool) := json.patch(call(caps, tool, "low", {}), [{"op": "replace", "path": "/context/method", "value": "tools/list"}])

read_file(caps, arguments) := call(caps, "demo__read_file", "low", arguments)

# decide_one(constraint, value) evaluates a call whose only capability puts
# `constraint` on the argument `x`, which the call sets to `value`.
decide_one(constraint, value) := d if {
	caps := [{"tool": "demo__read_file", "args": {"x": constraint}}]
	d := bastion.decision with input as read_file(caps, {"x": value})
}

allowed(constraint, value) if decide_one(constraint, value).allow

denied_because(constraint, value, reason) if {
	d := decide_one(constraint, value)
	not d.allow
	d.reasons == [reason]
}

# --- Whole decisions -----------------------------------------------------------

test_allowed_call_has_full_decision if {
	d := bastion.decision with input as read_file([{"tool": "demo__read_*"}], {"path": "/srv/a"})
	d == {
		"allow": true,
		"approval": {"required": false, "quorum": 1, "reason": ""},
		"reasons": ["capability 0 (demo__read_*) allows demo__read_file"],
		"obligations": {"redact": [], "max_result_bytes": 1048576},
	}
}

test_tool_glob_mismatch_denies if {
	d := bastion.decision with input as call([{"tool": "demo__read_*"}], "demo__delete_file", "low", {})
	not d.allow
	d.reasons == ["no capability names tool demo__delete_file"]
}

test_empty_cap_list_denies if {
	d := bastion.decision with input as read_file([], {})
	not d.allow
	d.reasons == ["no capability names tool demo__read_file"]
}

test_second_capability_matches if {
	caps := [
		{"tool": "fs__*"},
		{"tool": "demo__*", "args": {"path": {"prefix": "/srv/"}}},
	]
	d := bastion.decision with input as read_file(caps, {"path": "/srv/a"})
	d.allow
	d.reasons == ["capability 1 (demo__*) allows demo__read_file"]
}

test_every_granting_capability_is_reported if {
	caps := [{"tool": "*"}, {"tool": "demo__read_file"}]
	d := bastion.decision with input as read_file(caps, {})
	d.reasons == ["capability 0 (*) allows demo__read_file", "capability 1 (demo__read_file) allows demo__read_file"]
}

test_one_failing_capability_does_not_block_another if {
	caps := [
		{"tool": "demo__*", "args": {"path": {"prefix": "/tmp/"}}},
		{"tool": "demo__read_file", "args": {"path": {"prefix": "/srv/"}}},
	]
	d := bastion.decision with input as read_file(caps, {"path": "/srv/a"})
	d.allow
	d.reasons == ["capability 1 (demo__read_file) allows demo__read_file"]
}

test_denial_lists_every_failing_capability if {
	caps := [
		{"tool": "demo__*", "args": {"path": {"prefix": "/tmp/"}}},
		{"tool": "demo__read_file", "args": {"path": {"prefix": "/srv/"}, "n": {"max": 3}}},
	]
	d := bastion.decision with input as read_file(caps, {"path": "/etc/passwd", "n": 4})
	not d.allow
	d.reasons == [
		"capability 0: argument path: must be a string starting with \"/tmp/\"",
		"capability 1: argument n: must be a number <= 3",
		"capability 1: argument path: must be a string starting with \"/srv/\"",
	]
}

test_unconstrained_arguments_are_free if {
	caps := [{"tool": "demo__read_file", "args": {"path": {"eq": "/srv/a"}}}]
	bastion.allow with input as read_file(caps, {"path": "/srv/a", "anything": {"nested": [1, 2]}})
}

test_missing_argument_fails_its_constraint if {
	caps := [{"tool": "demo__read_file", "args": {"path": {"prefix": "/srv/"}}}]
	d := bastion.decision with input as read_file(caps, {"other": "/srv/a"})
	not d.allow
	d.reasons == ["capability 0: argument path: missing (this capability constrains it, so it is required)"]
}

# --- Tool globs ----------------------------------------------------------------

test_glob_star_matches_any_run if {
	bastion.allow with input as read_file([{"tool": "*"}], {})
	bastion.allow with input as read_file([{"tool": "demo__*_file"}], {})
	bastion.allow with input as read_file([{"tool": "*__read_file"}], {})
	bastion.allow with input as read_file([{"tool": "demo__read_file*"}], {})
	bastion.allow with input as read_file([{"tool": "d*o__r*d_f*e"}], {})
}

test_glob_without_star_is_exact if {
	not bastion.allow with input as read_file([{"tool": "demo__read"}], {})
	not bastion.allow with input as read_file([{"tool": "emo__read_file"}], {})
	not bastion.allow with input as read_file([{"tool": "DEMO__READ_FILE"}], {})
}

test_glob_pieces_match_in_order if {
	not bastion.allow with input as read_file([{"tool": "read*demo"}], {})
}

test_glob_regex_syntax_is_literal if {
	not bastion.allow with input as read_file([{"tool": "demo__read.file"}], {})
	not bastion.allow with input as read_file([{"tool": "demo__(read|write)_file"}], {})
	not bastion.allow with input as read_file([{"tool": "demo__read_fil."}], {})
	bastion.allow with input as call([{"tool": "x.(y)+*"}], "x.(y)+z", "low", {})
}

test_glob_with_backslash_names_nothing if {
	not bastion.allow with input as read_file([{"tool": `demo__read_file\E.*`}], {})
	not bastion.allow with input as call([{"tool": `a\b`}], `a\b`, "low", {})
}

test_glob_must_be_a_string if {
	not bastion.allow with input as read_file([{"tool": ["*"]}], {})
	not bastion.allow with input as read_file([{"args": {}}], {})
}

test_caps_must_be_an_array if {
	not bastion.allow with input as read_file({"a": {"tool": "*"}}, {})
}

# --- Constraints: eq / enum ----------------------------------------------------

test_eq if {
	allowed({"eq": "main"}, "main")
	allowed({"eq": {"a": [1, true, null]}}, {"a": [1, true, null]})
	allowed({"eq": 2}, 2.0)
	denied_because({"eq": "main"}, "dev", `capability 0: argument x: must equal "main"`)
	denied_because({"eq": 1}, "1", "capability 0: argument x: must equal 1")
}

test_enum if {
	allowed({"enum": ["a", "b", 3]}, "b")
	allowed({"enum": ["a", "b", 3]}, 3)
	denied_because({"enum": ["a", "b"]}, "c", `capability 0: argument x: must be one of ["a","b"]`)
	denied_because({"enum": "ab"}, "a", `capability 0: argument x: must be one of "ab"`)
}

# --- Constraints: prefix -------------------------------------------------------

test_prefix if {
	allowed({"prefix": "https://api.example/"}, "https://api.example/v1")
	denied_because(
		{"prefix": "https://api.example/"}, "https://evil.example/",
		`capability 0: argument x: must be a string starting with "https://api.example/"`,
	)
	not allowed({"prefix": "1"}, 12)
}

# --- Constraints: path_prefix --------------------------------------------------

path_reason := "capability 0: argument x: must stay under /srv/ without '..' or '.' segments, '//', backslashes or NUL bytes"

test_path_prefix_allows_paths_below if {
	allowed({"path_prefix": "/srv/"}, "/srv/app/config.yaml")
	allowed({"path_prefix": "/srv/"}, "/srv/app/")
	allowed({"path_prefix": "/srv/"}, "/srv/a..b/.hidden")
}

test_path_prefix_refuses_traversal if {
	denied_because({"path_prefix": "/srv/"}, "/srv/../etc/passwd", path_reason)
	denied_because({"path_prefix": "/srv/"}, "/srv/app/..", path_reason)
	denied_because({"path_prefix": "/srv/"}, "/srv/./app", path_reason)
	denied_because({"path_prefix": "/srv/"}, "/srv/.", path_reason)
}

test_path_prefix_refuses_aliases if {
	denied_because({"path_prefix": "/srv/"}, "/srv//x", path_reason)
	denied_because({"path_prefix": "/srv/"}, `/srv/a\..\..\etc`, path_reason)
	denied_because({"path_prefix": "/srv/"}, "/srv/a\u0000.txt", path_reason)
}

test_path_prefix_refuses_outside if {
	denied_because({"path_prefix": "/srv/"}, "/etc/passwd", path_reason)
	denied_because({"path_prefix": "/srv/"}, "srv/a", path_reason)
	denied_because({"path_prefix": "/srv/"}, "/srv", path_reason)
	denied_because({"path_prefix": "/srv/"}, ["/srv/a"], path_reason)
}

test_path_prefix_compares_whole_segments if {
	allowed({"path_prefix": "/srv"}, "/srv")
	allowed({"path_prefix": "/srv"}, "/srv/a")
	not allowed({"path_prefix": "/srv"}, "/srv-secrets/a")
	not allowed({"path_prefix": "/srv"}, "/srvx")
}

test_path_prefix_must_be_a_string if {
	denied_because(
		{"path_prefix": 7}, "/srv/a",
		"capability 0: argument x: must stay under 7 without '..' or '.' segments, '//', backslashes or NUL bytes",
	)
}

# --- Constraints: pattern ------------------------------------------------------

test_pattern_must_match_whole_string if {
	allowed({"pattern": "[a-z]+"}, "abc")
	allowed({"pattern": "a|b"}, "b")
	denied_because({"pattern": "[a-z]+"}, "abc1", `capability 0: argument x: must be a string fully matching the pattern "[a-z]+"`)
	not allowed({"pattern": "[a-z]+"}, "1abc")
	not allowed({"pattern": "a|b"}, "ab")
}

test_pattern_refuses_newline_injection if {
	denied_because({"pattern": "[a-z]+"}, "abc\nrm", `capability 0: argument x: must be a string fully matching the pattern "[a-z]+"`)
	not allowed({"pattern": "abc.*"}, "abc\nrm -rf /")
}

test_pattern_cannot_escape_its_anchors if {
	# Valid once wrapped as ^(?:a)|(.*)$, which would match anything.
	denied_because({"pattern": "a)|(.*"}, "anything", `capability 0: argument x: has a pattern that is not a valid RE2 expression: "a)|(.*"`)
	not allowed({"pattern": "("}, "(")
}

test_pattern_needs_a_string_argument if {
	not allowed({"pattern": "[0-9]+"}, 123)
}

# --- Constraints: min / max / max_length ---------------------------------------

test_min_max if {
	allowed({"min": 1, "max": 100}, 1)
	allowed({"min": 1, "max": 100}, 100)
	allowed({"min": 0.5}, 0.75)
	denied_because({"min": 1, "max": 100}, 101, "capability 0: argument x: must be a number <= 100")
	denied_because({"min": 1, "max": 100}, 0, "capability 0: argument x: must be a number >= 1")
	denied_because({"min": 1}, -1.5, "capability 0: argument x: must be a number >= 1")
}

test_min_max_need_a_number if {
	d := decide_one({"min": 1, "max": 100}, "50")
	not d.allow
	d.reasons == ["capability 0: argument x: must be a number <= 100", "capability 0: argument x: must be a number >= 1"]
	not allowed({"max": 1}, true)
}

test_max_length_counts_characters if {
	allowed({"max_length": 3}, "abc")
	allowed({"max_length": 3}, "äöü")
	allowed({"max_length": 0}, "")
	denied_because({"max_length": 3}, "abcd", "capability 0: argument x: must be a string of at most 3 characters")
	not allowed({"max_length": 3}, ["a"])
}

test_all_fields_of_a_constraint_must_hold if {
	c := {"prefix": "/srv/", "max_length": 8, "pattern": "[a-z/]+"}
	allowed(c, "/srv/ab")
	denied_because(c, "/srv/abcdef", "capability 0: argument x: must be a string of at most 8 characters")
	denied_because(c, "/srv/A", `capability 0: argument x: must be a string fully matching the pattern "[a-z/]+"`)
}

# --- Malformed capabilities fail closed ----------------------------------------

test_unknown_constraint_kind_denies if {
	denied_because({"regex": ".*"}, "a", `capability 0: argument x: unsupported constraint "regex"`)
	denied_because({"eq": "a", "glob": "*"}, "a", `capability 0: argument x: unsupported constraint "glob"`)
}

test_empty_constraint_denies if {
	denied_because({}, "a", "capability 0: argument x: malformed constraint (must be a non-empty object)")
	denied_because("a", "a", "capability 0: argument x: malformed constraint (must be a non-empty object)")
}

test_args_must_be_an_object if {
	d := bastion.decision with input as read_file([{"tool": "*", "args": ["x"]}], {"x": 1})
	not d.allow
	d.reasons == ["capability 0: args must be an object"]
}

# --- Approval ------------------------------------------------------------------

test_high_risk_call_is_allowed_with_approval if {
	d := bastion.decision with input as call([{"tool": "demo__delete_file"}], "demo__delete_file", "high", {})
	d.allow
	d.approval == {"required": true, "quorum": 1, "reason": "demo__delete_file is a high-risk tool"}
}

test_low_and_medium_risk_need_no_approval if {
	not bastion.approval.required with input as call([{"tool": "*"}], "demo__t", "low", {})
	not bastion.approval.required with input as call([{"tool": "*"}], "demo__t", "medium", {})
}

test_unknown_risk_is_treated_as_high if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__t", "critical", {})
	d.approval == {"required": true, "quorum": 1, "reason": "demo__t has an unrecognised risk level and is treated as high-risk"}
}

test_listing_a_high_risk_tool_needs_no_approval if {
	d := bastion.decision with input as json.patch(listing([{"tool": "*"}], "demo__delete_file"), [{"op": "replace", "path": "/tool/risk", "value": "high"}])
	d.allow
	not d.approval.required
}

# --- tools/list ----------------------------------------------------------------

test_list_shows_named_tools_without_judging_arguments if {
	caps := [{"tool": "demo__read_file", "args": {"path": {"path_prefix": "/srv/"}}}]
	d := bastion.decision with input as listing(caps, "demo__read_file")
	d.allow
	d.reasons == ["capability 0 (demo__read_file) lists demo__read_file"]
}

test_list_hides_unnamed_tools if {
	d := bastion.decision with input as listing([{"tool": "demo__read_*"}], "demo__delete_file")
	not d.allow
	d.reasons == ["no capability names tool demo__delete_file"]
}

# --- Unsupported input ---------------------------------------------------------

test_unsupported_version_denies if {
	d := bastion.decision with input as json.patch(read_file([{"tool": "*"}], {}), [{"op": "replace", "path": "/version", "value": 2}])
	not d.allow
	d.reasons == ["policy input is not a version 1 tools/call or tools/list request"]
}

test_unsupported_method_denies if {
	d := bastion.decision with input as json.patch(read_file([{"tool": "*"}], {}), [{"op": "replace", "path": "/context/method", "value": "resources/read"}])
	not d.allow
	not d.approval.required
	d.reasons == ["policy input is not a version 1 tools/call or tools/list request"]
}

test_input_without_tool_still_decides if {
	d := bastion.decision with input as json.patch(read_file([{"tool": "*"}], {}), [{"op": "remove", "path": "/tool"}])
	not d.allow
	d.reasons == ["no capability allows this call"]
}

# --- Risk from data ------------------------------------------------------------

test_tool_risk_from_data_raises_the_risk if {
	d := bastion.decision with input as read_file([{"tool": "*"}], {})
		with data.bastion.tool_risk as {"demo__read_file": "high"}
	d.allow
	d.approval == {"required": true, "quorum": 1, "reason": "demo__read_file is a high-risk tool"}
}

test_tool_risk_from_data_lowers_the_risk if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__delete_file", "high", {})
		with data.bastion.tool_risk as {"demo__delete_file": "low"}
	d.allow
	not d.approval.required
}

test_tool_risk_for_other_tools_is_ignored if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__delete_file", "high", {})
		with data.bastion.tool_risk as {"demo__read_file": "low"}
	d.approval.required
}

test_unrecognised_tool_risk_from_data_is_high if {
	d := bastion.decision with input as read_file([{"tool": "*"}], {})
		with data.bastion.tool_risk as {"demo__read_file": "none"}
	d.approval == {"required": true, "quorum": 1, "reason": "demo__read_file has an unrecognised risk level and is treated as high-risk"}
}

# --- Site rules ----------------------------------------------------------------

test_site_deny_vetoes_a_granted_call if {
	d := bastion.decision with input as read_file([{"tool": "*"}], {})
		with data.bastion.site.acme.deny as {"no calls on Fridays"}
	not d.allow
	d.reasons == ["site acme: no calls on Fridays"]
}

test_site_deny_joins_capability_reasons if {
	d := bastion.decision with input as read_file([{"tool": "fs__*"}], {})
		with data.bastion.site.acme.deny as {"no calls on Fridays"}
	not d.allow
	d.reasons == ["no capability names tool demo__read_file", "site acme: no calls on Fridays"]
}

test_site_deny_hides_a_tool_from_listings if {
	not bastion.allow with input as listing([{"tool": "*"}], "demo__read_file")
		with data.bastion.site.acme.deny as {"hidden"}
}

test_site_deny_cannot_grant if {
	d := bastion.decision with input as read_file([], {})
		with data.bastion.site.acme.deny as set()
	not d.allow
}

test_site_approval_adds_a_reason_and_raises_the_quorum if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__delete_file", "high", {})
		with data.bastion.site.acme.require_approval as {{"reason": "two people must agree", "quorum": 2}}
		with data.bastion.site.prod.require_approval as {{"reason": "touches production", "quorum": 1}}
	d.allow
	d.approval == {
		"required": true,
		"quorum": 2,
		"reason": "demo__delete_file is a high-risk tool; site acme: two people must agree; site prod: touches production",
	}
}

test_site_approval_applies_to_low_risk_tools if {
	d := bastion.decision with input as read_file([{"tool": "*"}], {})
		with data.bastion.site.prod.require_approval as {{"reason": "touches production", "quorum": 1}}
	d.approval == {"required": true, "quorum": 1, "reason": "site prod: touches production"}
}

test_site_approval_is_not_needed_to_list if {
	d := bastion.decision with input as listing([{"tool": "*"}], "demo__read_file")
		with data.bastion.site.prod.require_approval as {{"reason": "touches production", "quorum": 1}}
	d.allow
	not d.approval.required
}

test_malformed_site_approval_vetoes if {
	every bad in [
		{"reason": "x", "quorum": "2"},
		{"reason": "x", "quorum": 0},
		{"reason": "x", "quorum": 1.5},
		{"quorum": 2},
		"two people",
	] {
		d := bastion.decision with input as read_file([{"tool": "*"}], {})
			with data.bastion.site.acme.require_approval as {bad}
		not d.allow
		d.reasons == [concat("", ["site acme: malformed require_approval entry ", bastion.display(bad)])]
	}
}

test_approval_can_demand_a_recent_sign_in if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__delete_file", "high", {})
		with data.bastion.approval_max_auth_age_s as 300
	d.approval == {"required": true, "quorum": 1, "reason": "demo__delete_file is a high-risk tool", "max_auth_age_s": 300}
}

test_malformed_sign_in_age_vetoes if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__delete_file", "high", {})
		with data.bastion.approval_max_auth_age_s as 2.5
	not d.allow
	d.reasons == ["data.bastion.approval_max_auth_age_s is malformed (2.5): a whole number of seconds, at least 1"]
}

test_a_call_needing_no_approval_has_no_sign_in_age if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__t", "low", {})
		with data.bastion.approval_max_auth_age_s as 300
	d.approval == {"required": false, "quorum": 1, "reason": ""}
}

test_approval_can_demand_a_role if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__delete_file", "high", {})
		with data.bastion.approval_roles as ["payments", "sre"]
	d.approval == {"required": true, "quorum": 1, "reason": "demo__delete_file is a high-risk tool", "roles": ["payments", "sre"]}
}

test_malformed_roles_veto if {
	d := bastion.decision with input as call([{"tool": "*"}], "demo__delete_file", "high", {})
		with data.bastion.approval_roles as "payments"
	not d.allow
	d.reasons == ["data.bastion.approval_roles is malformed (payments): a non-empty list of role names"]
}
