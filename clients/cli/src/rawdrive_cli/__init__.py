"""The `rawdrive` command line tool."""
