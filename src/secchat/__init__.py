"""SecChat: secure multicast for private virtual conferences among majorities."""

__version__ = "0.1.0"
