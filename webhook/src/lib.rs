//! mcp-guard admission webhook: injects the sidecar into annotated pods and
//! distributes the shared policy. Not built yet; tracked by its own issues.
