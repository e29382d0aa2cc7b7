"""janitor"""
