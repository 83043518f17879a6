"""The mcpx sandbox runtime: stdlib only, runs inside the sandbox image."""
