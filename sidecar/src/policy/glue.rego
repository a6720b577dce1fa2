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

decision := {"allow": allow, "deny": reasons, "redact": redact}

default visible := false

visible if data.mcp.authz.visible == true
