"""HTTP blueprints: one per resource, each only parses, calls the core and returns a dict."""
