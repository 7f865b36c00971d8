"""Package data: the embedded Tiny Shakespeare and the live view's page."""
