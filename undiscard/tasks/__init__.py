"""undiscard.tasks."""
