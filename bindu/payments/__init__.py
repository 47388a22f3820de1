"""x402 payments: the paywall, settle-first, and the durable payment records."""
