"""The FlowMaestro HTTP API (workflows, versions, executions, approvals): see issue #4."""
