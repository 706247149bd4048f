"""One module per provider behind the small protocols in ``base``."""
