"""Credential agent for IAM Roles Anywhere."""

__version__ = "0.1.0"
