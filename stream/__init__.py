"""Everything about subtitle lines and events moving through the tagger."""
