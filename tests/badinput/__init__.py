"""Bad input and security: one test per case of docs/bad-input.md."""
