"""The built-in heads, one module each (each registers its head and its methods on import)."""
