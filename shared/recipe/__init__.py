"""The small-folder personalization recipe: a numpy-only core that drives any runtime through a
`RecipeBackend` (PyTorch today, onnxruntime on a device). See docs/recipe.md."""
