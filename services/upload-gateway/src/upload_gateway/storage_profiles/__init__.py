"""Each workspace's storage profile (bring your own bucket): check, publish, activate, show, remove."""
