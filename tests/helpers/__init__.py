"""What the test tiers share: processors for tests, a served API, local HTTP peers, the CLI."""
