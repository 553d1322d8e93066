"""undiscard.fitting."""
