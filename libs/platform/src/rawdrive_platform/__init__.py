"""rawdrive_platform"""
