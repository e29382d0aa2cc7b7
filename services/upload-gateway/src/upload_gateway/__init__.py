"""upload_gateway"""
