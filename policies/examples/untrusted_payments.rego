# METADATA
# title: No payment after untrusted content
# description: |
#   A stricter site rule on top of the flow rules: once untrusted content
#   (an email, a web page, a transaction reference) has entered the agent's
#   context, any payments__* call is refused outright, not sent to approvers.
#   Payees the organisation trusts can be exempted by IBAN in
#   data.bastion.trusted_ibans.
package bastion.site.untrusted_payments

deny contains "payments are refused after untrusted content entered the agent's context" if {
	startswith(input.tool.name, "payments__")
	count(object.get(input, ["flow", "labels", "untrusted"], [])) > 0
	not trusted_payee
}

trusted_payee if {
	iban := upper(replace(input.arguments.iban, " ", ""))
	iban in {upper(replace(t, " ", "")) | some t in data.bastion.trusted_ibans}
}
