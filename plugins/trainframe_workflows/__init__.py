"""Workflow plugin: schema-aware tokenizer, the tct_github_workflow adapter and their commands."""
