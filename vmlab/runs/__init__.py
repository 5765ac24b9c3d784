"""A suite run in the guest and what it gives: its output read as tests, the terminal's view,
junit.xml and report.json."""
