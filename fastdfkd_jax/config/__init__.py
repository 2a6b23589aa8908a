"""Configs: every field and its default (`schema`), the embedded default run (`default`),
and validation against the registries of methods, models and data sets (`checks`)."""
