"""Settings: defaults, recipes, the resolver and the checks run before work starts."""
