"""Training recipes: one flat module each (config → build → loop → save)."""
