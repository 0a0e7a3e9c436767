# METADATA
# title: Read-only agents
# description: |
#   Agents listed in data.bastion.teams.read_only may only see and call tools
#   that read: low risk (after data.bastion.tool_risk) and named like
#   <connector>__read_*, __list_*, __get_* or __search_*. Their tokens may
#   name more; this site rule vetoes the rest.
package bastion.site.read_only

import data.bastion

reading_verbs := ["read", "list", "get", "search"]

read_only_agent if input.principal.sub in data.bastion.teams.read_only

# Deny unless proven read-only: if a check below cannot be evaluated, the
# call is vetoed rather than let through.
deny contains concat("", [input.principal.sub, " is a read-only agent and ", input.tool.name, " is not a read-only tool"]) if {
	read_only_agent
	not reading_tool
}

reading_tool if {
	bastion.risk == "low"
	some verb in reading_verbs
	glob.match(concat("", ["*__", verb, "_*"]), null, input.tool.name)
}
