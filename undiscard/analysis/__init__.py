"""undiscard.analysis."""
