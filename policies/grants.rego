# Bastion grants policy (same package as bastion.rego, own entrypoint).
#
# Who gets which capabilities when an agent signs in through Bastion's
# authorization server (entrypoint bastion/grants). The organisation's
# identity provider says who the user is; this says what their agent may do.
#
# Input (version 1, validated by the broker before evaluation):
#   identity   {iss, sub, email?, name?, groups: [...], claims: {...},
#              source?, issuer_name?}: who the token is for, as verified:
#              source "idp" (or absent): the organisation's IdP (its ID token
#              at sign-in and refresh, or its ID-JAG); groups as they are now;
#              source "workload": a JWT from a trusted workload issuer
#              (token exchange), issuer_name its configured name, claims the
#              ones its config passes on (e.g. repository and workflow for
#              GitHub Actions, kubernetes.io for Kubernetes), groups empty;
#              source "client": a configured client authenticating with its
#              own key (client credentials), sub its client id;
#   actor      {iss, sub, issuer_name?, claims}: token exchange only, the
#              verified actor_token (who acts for the identity);
#   client     {id, name?, redirect_uri?, registration}: the OAuth client;
#   scopes     the scopes the client asked for;
#   grant_type authorization_code (sign-in), refresh_token, token_exchange,
#              client_credentials or jwt_bearer (ID-JAG);
#   context    {time}.
#
# The capability list is the union of what the identity's groups, its
# workload rules and its client entry grant; nothing the client asks for can
# add to it. Data replaces the tables:
#   data.bastion.grants_by_group     group -> capability list;
#   data.bastion.grants_by_workload  [{"issuer": name, "match": {claim path:
#                                    value}, "cap": [...]}]: a workload whose
#                                    claims equal every match value (paths are
#                                    "/"-separated, e.g. "kubernetes.io/namespace";
#                                    "sub" is the subject) gets the cap;
#   data.bastion.grants_by_client    client id -> capability list
#                                    (client credentials);
#   data.bastion.grants_ttl_s        token lifetime in seconds;
#   data.bastion.grants_approval_groups  groups whose grants need a human.
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
	input.grant_type in {"authorization_code", "refresh_token", "token_exchange", "client_credentials", "jwt_bearer"}
	is_string(input.identity.sub)
	is_array(input.identity.groups)
}

grants_source := object.get(input.identity, "source", "idp")

# [why, capability] for every capability a group of this identity brings.
grants_entries contains [concat("", ["group ", group]), cap] if {
	grants_supported_input
	some group in input.identity.groups
	is_string(group)
	some cap in grants_table[group]
}

# A workload rule whose every match value equals the identity's claim at that path.
grants_entries contains [concat("", ["workload rule ", format_int(i, 10), " (", rule.issuer, ")"]), cap] if {
	grants_supported_input
	grants_source == "workload"
	some i, rule in grants_workload_rules
	rule.issuer == input.identity.issuer_name
	is_object(rule.match)
	count(rule.match) > 0
	every path, want in rule.match {
		object.get(grants_workload_claims, split(path, "/"), null) == want
	}
	some cap in rule.cap
}

grants_entries contains [concat("", ["client ", input.identity.sub]), cap] if {
	grants_supported_input
	grants_source == "client"
	input.grant_type == "client_credentials"
	some cap in grants_client_table[input.identity.sub]
}

default_grants_workload_rules := []

grants_workload_rules := data.bastion.grants_by_workload if is_array(data.bastion.grants_by_workload)

else := default_grants_workload_rules

default_grants_client_table := {}

grants_client_table := data.bastion.grants_by_client if is_object(data.bastion.grants_by_client)

else := default_grants_client_table

# The claims a workload rule matches on: the passed claims and the subject.
grants_workload_claims := object.union(input.identity.claims, {"sub": input.identity.sub})

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

grants_reasons := sort({concat("", [why, " grants ", cap.tool]) | some [why, cap] in grants_entries}) if grants_allow

else := ["grants policy input is not a version 1 request of a known grant type"] if not grants_supported_input

else := ["no group of this identity is granted any tool"] if grants_source == "idp"

else := [concat("", ["no workload rule of issuer ", object.get(input.identity, "issuer_name", "?"), " matches this identity"])] if grants_source == "workload"

else := [concat("", ["client ", input.identity.sub, " is granted no tool (grants_by_client)"])]
