"""commit_verifier"""
