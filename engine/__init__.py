"""Everything about the model: export, runtimes, decoding and the tagger backends."""
