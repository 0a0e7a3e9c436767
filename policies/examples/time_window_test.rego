package bastion.site.time_window_test

import data.bastion

call(time, risk) := {
	"version": 1,
	"principal": {"sub": "agent:ops", "iss": "https://issuer.example", "act": [], "cap": [{"tool": "*"}], "anonymous": false},
	"tool": {"name": "deploy__restart", "connector": "deploy", "risk": risk, "descriptor_hash": "sha256:00"},
	"arguments": {},
	"context": {"time": time, "transport": "http", "session": "s-1", "method": "tools/call"},
}

# 2026-01-05 is a Monday; Paris is UTC+1 in January and UTC+2 in July.
test_inside_office_hours if {
	bastion.allow with input as call("2026-01-05T07:00:00Z", "medium")
	bastion.allow with input as call("2026-01-05T16:59:59Z", "medium")
	bastion.allow with input as call("2026-07-06T06:00:00Z", "medium")
	bastion.allow with input as call("2026-01-05T09:30:00+01:00", "medium")
}

test_outside_office_hours if {
	d := bastion.decision with input as call("2026-01-05T17:00:00Z", "medium")
	not d.allow
	d.reasons == ["site time_window: deploy__restart may only be called Monday to Friday, 08:00-18:00 Europe/Paris"]
	not bastion.allow with input as call("2026-01-05T06:59:59Z", "medium")
	not bastion.allow with input as call("2026-07-06T05:59:00Z", "medium")
}

test_weekends_are_closed if {
	not bastion.allow with input as call("2026-01-10T10:00:00Z", "medium")
	not bastion.allow with input as call("2026-01-11T10:00:00Z", "high")
}

test_low_risk_tools_are_always_open if {
	bastion.allow with input as call("2026-01-10T23:00:00Z", "low")
}

test_unparseable_time_is_outside_the_window if {
	not bastion.allow with input as call("Monday morning", "medium")
}

test_listings_are_not_restricted if {
	listing := json.patch(call("2026-01-10T23:00:00Z", "high"), [{"op": "replace", "path": "/context/method", "value": "tools/list"}])
	bastion.allow with input as listing
}
