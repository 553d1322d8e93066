"""undiscard.models."""
