"""worldlab package."""
