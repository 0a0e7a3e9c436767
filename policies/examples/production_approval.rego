# METADATA
# title: Approval for anything touching production
# description: |
#   A call needs one human approval when it touches production: its
#   connector is listed in data.bastion.production_connectors, or an
#   argument names a production environment ("env": "prod"), or any string
#   in its arguments mentions prod or production as a word (a host, a path,
#   a cluster name).
package bastion.site.production_approval

require_approval contains {"reason": "touches production", "quorum": 1} if touches_production

touches_production if input.tool.connector in data.bastion.production_connectors

touches_production if {
	some key in ["env", "environment", "stage", "cluster"]
	lower(input.arguments[key]) in {"prod", "production"}
}

touches_production if {
	walk(input.arguments, [_, value])
	is_string(value)
	regex.match(`(^|[^a-z0-9])prod(uction)?([^a-z0-9]|$)`, lower(value))
}
