"""Methods: each file composes masking, an encoder, a head and a target/loss, and registers recipes.
Every module in this package is imported by the registry, so a new method is a new file."""
