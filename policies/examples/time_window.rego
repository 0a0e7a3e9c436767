# METADATA
# title: Time windows
# description: |
#   Calls to anything but low-risk tools only on weekdays, 08:00 to 18:00 in
#   the office's time zone, judged on the broker's clock (input.context.time).
#   Listings are not restricted, so agents still see what they could call.
package bastion.site.time_window

import data.bastion

zone := "Europe/Paris"

opening_hour := 8

closing_hour := 18

# Written as "deny unless inside the window": a timestamp that cannot be
# parsed leaves `in_window` undefined, so the call is vetoed.
deny contains concat("", [input.tool.name, " may only be called Monday to Friday, 08:00-18:00 ", zone]) if {
	input.context.method == "tools/call"
	bastion.risk != "low"
	not in_window
}

in_window if {
	ns := time.parse_rfc3339_ns(input.context.time)
	not time.weekday([ns, zone]) in {"Saturday", "Sunday"}
	[hour, _, _] := time.clock([ns, zone])
	hour >= opening_hour
	hour < closing_hour
}
