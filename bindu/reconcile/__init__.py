"""Reconciliation: prove the fate of every payment whose outcome the server does not know."""
