"""Agents that ship with bindu."""
