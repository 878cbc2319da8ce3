"""Modal screens of the console: help, the quit question, a one-line prompt."""
