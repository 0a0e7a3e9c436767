# METADATA
# title: Per-argument limits
# description: |
#   Limits that hold whatever a token grants: a transfer moves at most
#   max_transfer (data.bastion.limits.max_transfer overrides it), and file
#   tools stay under the allowed path prefixes, with the default policy's
#   segment-aware prefix check and its refusal of "..", "//" and friends.
package bastion.site.argument_limits

import data.bastion

default_max_transfer := 1000

# A limit in data that is not a number leaves no transfer within the limit.
max_transfer := limit if {
	limit := data.bastion.limits.max_transfer
} else := default_max_transfer

allowed_prefixes := ["/srv/", "/tmp/agents/"]

# The reason renders any value (display), so a bad limit cannot leave the veto undefined.
deny contains concat("", ["amount must be a number above 0 and at most ", bastion.display(max_transfer)]) if {
	input.tool.name == "payments__transfer"
	input.context.method == "tools/call"
	not amount_within_limit
}

amount_within_limit if {
	is_number(max_transfer)
	is_number(input.arguments.amount)
	input.arguments.amount > 0
	input.arguments.amount <= max_transfer
}

deny contains concat("", ["path must stay under one of ", concat(", ", allowed_prefixes)]) if {
	startswith(input.tool.name, "fs__")
	input.context.method == "tools/call"
	"path" in object.keys(input.arguments)
	not path_allowed
}

path_allowed if {
	is_string(input.arguments.path)
	bastion.clean_path(input.arguments.path)
	some prefix in allowed_prefixes
	bastion.path_under(prefix, input.arguments.path)
}
