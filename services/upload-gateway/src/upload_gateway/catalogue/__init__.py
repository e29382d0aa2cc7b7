"""The asset catalogue: the read model kept from asset events, its API, soft delete and restore."""
