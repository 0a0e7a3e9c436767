# METADATA
# title: Two approvers for destructive tools
# description: |
#   Tools that destroy data need a quorum of two approvers: any tool named
#   <connector>__delete_*, __drop_*, __destroy_*, __purge_* or __truncate_*,
#   and any tool listed in data.bastion.destructive_tools.
package bastion.site.destructive_quorum

destructive_verbs := ["delete", "drop", "destroy", "purge", "truncate"]

require_approval contains {"reason": "destroys data; two approvers required", "quorum": 2} if destructive

destructive if {
	some verb in destructive_verbs
	glob.match(concat("", ["*__", verb, "_*"]), null, input.tool.name)
}

destructive if input.tool.name in data.bastion.destructive_tools
