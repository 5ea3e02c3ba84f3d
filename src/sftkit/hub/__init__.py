"""Models: references (bundled alias, local folder, .gguf, run folder, hub id) to local folders, hub
sources and downloads, safety checks on untrusted files, loading."""
