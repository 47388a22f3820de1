"""Who a caller is (authentication) and what the JSON-RPC methods let them touch."""
