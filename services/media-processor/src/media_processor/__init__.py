"""media_processor"""
