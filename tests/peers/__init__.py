"""Real and minimal peers used by the integration and end-to-end tests."""
