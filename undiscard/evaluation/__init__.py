"""undiscard.evaluation."""
