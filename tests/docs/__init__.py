"""The documentation as a tested contract: its examples, run as written."""
