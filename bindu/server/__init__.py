"""HTTP surface: the Starlette app, JSON-RPC dispatch, TaskManager and workers."""
