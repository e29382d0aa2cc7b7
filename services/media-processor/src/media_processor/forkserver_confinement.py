"""Imported first by the decoders' forkserver, and only there: confines it (and so every
decoder it forks) before anything else loads. See media_processor.sandbox."""

from media_processor.sandbox import confine_forkserver

confine_forkserver()
