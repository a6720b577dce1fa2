# mcp-guard's glue: reads the operator's rules (package mcp.authz) into one decision, so that a
# decision is one evaluation. Allowed means `allow` is true and no `deny` reason holds.
package mcp_guard.internal

import rego.v1

default allow := false

allow if data.mcp.authz.allow == true

reasons contains r if {
	some r in data.mcp.authz.deny
}

# Argument paths the audit trail must not show (`arguments.password`), as the operator names them.
redact contains p if {
	some p in data.mcp.authz.redact
}

# The rate limits the request counts against, as the operator writes them; checked by the sidecar.
default limits := set()

limits := data.mcp.authz.limits

decision := {"allow": allow, "deny": reasons, "redact": redact, "limits": limits}

# A list item, for a bundle with its own `visible` rule.
default visible := false

visible if data.mcp.authz.visible == true

# A list item, for a bundle without one: visible when a call of it would be allowed. The deny
# reasons are only looked at for an item that `allow` admits, so a hidden item costs `allow` alone.
default visible_by_call := false

visible_by_call if {
	data.mcp.authz.allow == true
	not denied
}

denied if {
	some _ in data.mcp.authz.deny
}

# The tool names a caller may see, for a bundle that decides a whole tools/list at once.
visible_tools := {n | some n in data.mcp.authz.visible_tools}
