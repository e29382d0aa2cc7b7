"""rawdrive_devkit: the dev stack and the pytest fixtures with real servers (never in an image)."""
