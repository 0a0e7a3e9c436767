# Bastion grants policy (same package as bastion.rego, own entrypoint).
#
# Who gets which capabilities when an agent signs in through Bastion's
# authorization server (entrypoint bastion/grants). The organisation's
# identity provider says who the user is; this says what their agent may do.
#
# Input (version 1, validated by the broker before evaluation):
#   identity   {iss, sub, email?, name?, groups: [...], claims: {...}}: the
#              verified ID token of the upstream IdP (groups as they are now:
#              refresh asks again);
#   client     {id, name?, redirect_uri?, registration}: the MCP client;
#   scopes     the scopes the client asked for;
#   grant_type authorization_code (sign-in) or refresh_token;
#   context    {time}.
#
# The capability list is the union of the grants of the user's groups;
# nothing the client asks for can add to it. Data can replace the table:
# data.bastion.grants_by_group (group -> capability list),
# data.bastion.grants_ttl_s (token lifetime in seconds) and
# data.bastion.grants_approval_groups (groups whose grants need a human).
package bastion

# METADATA
# title: grants
# description: The document the authorization server enforces.
grants := {
	"allow": grants_allow,
	"cap": grants_caps,
	"ttl_s": grants_lifetime,
	"approval": grants_approval,
	"reasons": grants_reasons,
}

# Example table for the embedded default and the README: the development
# IdP's demo user is in bastion-demo, and gets what the printed demo token has.
default_grants_by_group := {
	"bastion-demo": [
		{"tool": "demo__read_file", "args": {"path": {"path_prefix": "/srv/"}}},
		{"tool": "demo__delete_file", "args": {"path": {"path_prefix": "/srv/tmp/"}}},
		{"tool": "text-utils__*"},
	],
	"engineering": [{"tool": "demo__read_file", "args": {"path": {"path_prefix": "/srv/"}}}],
	"sre": [{"tool": "demo__*"}],
}

grants_table := data.bastion.grants_by_group if is_object(data.bastion.grants_by_group)

else := default_grants_by_group

default grants_lifetime := 900

grants_lifetime := data.bastion.grants_ttl_s if {
	is_number(data.bastion.grants_ttl_s)
	data.bastion.grants_ttl_s >= 1
}

grants_supported_input if {
	input.version == 1
	input.grant_type in {"authorization_code", "refresh_token"}
	is_string(input.identity.sub)
	is_array(input.identity.groups)
}

# [group, capability] for every capability a group of this identity brings.
grants_entries contains [group, cap] if {
	grants_supported_input
	some group in input.identity.groups
	is_string(group)
	some cap in grants_table[group]
}

# Sorted and without duplicates, so the same identity gets the same token.
grants_caps := sort({cap | some [_, cap] in grants_entries})

grants_allow if count(grants_caps) > 0

default grants_allow := false

default_grants_approver_groups := set()

grants_approver_groups := {g | some g in data.bastion.grants_approval_groups} if is_array(data.bastion.grants_approval_groups)

else := default_grants_approver_groups

grants_approval_held := {group | some group in input.identity.groups; group in grants_approver_groups}

grants_approval := {"required": true, "reason": concat("", ["group(s) ", concat(", ", sort(grants_approval_held)), " need an approver to confirm each grant"])} if {
	count(grants_approval_held) > 0
} else := {"required": false, "reason": ""}

grants_reasons := sort({concat("", ["group ", group, " grants ", cap.tool]) | some [group, cap] in grants_entries}) if grants_allow

else := ["grants policy input is not a version 1 authorization_code or refresh_token request"] if not grants_supported_input

else := ["no group of this identity is granted any tool"]
