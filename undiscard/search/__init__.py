"""undiscard.search."""
