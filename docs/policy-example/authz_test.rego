package mcp.authz_test

import rego.v1

import data.mcp.authz

call(tool, roles, extra) := object.union(
	{
		"subject": {"roles": roles, "groups": []},
		"server": {"name": "warehouse", "namespace": "analytics"},
		"request": {"method": "tools/call", "tool": tool, "arguments": {}},
		"tool": {"name": tool, "annotations": {}, "changed": false, "hash": "h1"},
	},
	extra,
)

test_admin_may_call_anything if {
	authz.allow with input as call("drop_table", ["mcp-admin"], {})
}

test_operator_limited_to_listed_tools if {
	authz.allow with input as call("run_query", ["mcp-operator"], {})
	not authz.allow with input as call("drop_table", ["mcp-operator"], {})
}

test_analyst_only_read_only_tools if {
	ro := {"tool": {"name": "list_tables", "annotations": {"readOnlyHint": true}, "changed": false}}
	authz.allow with input as call("list_tables", ["analyst"], ro)
	not authz.allow with input as call("run_query", ["analyst"], {})
}

test_query_limit_is_a_deny_reason if {
	big := {"request": {"method": "tools/call", "tool": "run_query", "arguments": {"limit": 5000}}}
	"run_query: limit must be at most 1000" in authz.deny with input as call("run_query", ["mcp-admin"], big)
}
