# Example mcp-guard policy: who may call which tool of which MCP server.
# Input schema: docs/policy.md (mcp-guard.dev/policy-input/v2).
package mcp.authz

import rego.v1

default allow := false

roles := {r | some r in input.subject.roles} | {g | some g in input.subject.groups}

# Administrators may use every tool.
allow if "mcp-admin" in roles

# Operators may use the tools listed for their server in data.json.
allow if {
	"mcp-operator" in roles
	input.request.tool in data.operator_tools[input.server.name]
}

# Analysts may only use tools whose own definition says they do not change anything.
allow if {
	"analyst" in roles
	input.tool.annotations.readOnlyHint == true
}

# Everyone may read prompts and resources, and complete their arguments (a completion of an
# item the caller cannot see is answered as a missing item whatever this says).
allow if input.request.method in {"prompts/get", "resources/read", "completion/complete"}

# Every method is decided (policy input v2): let clients set their log level, which the MCP
# Inspector does on connect.
allow if input.request.method == "logging/setLevel"

# Argument constraint: queries are capped, whoever asks.
deny contains msg if {
	input.request.tool == "run_query"
	to_number(object.get(input.request.arguments, "limit", 0)) > 1000
	msg := "run_query: limit must be at most 1000"
}

# Per-namespace rule: nothing destructive in production namespaces, not even for admins.
deny contains "destructive tools are disabled in production namespaces" if {
	startswith(input.server.namespace, "prod")
	input.tool.annotations.destructiveHint == true
}

# Tool pinning: a tool whose definition changed since it was first listed stays refused
# (and hidden) until its new hash is approved in data.json.
deny contains sprintf("tool %s changed its definition; approve hash %s", [input.tool.name, input.tool.hash]) if {
	input.tool.changed
	not input.tool.hash in object.get(data.approved_tool_hashes, input.tool.name, [])
}
