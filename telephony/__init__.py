"""handoff: a SIP back-to-back user agent that hands 911 callers to 988 crisis lines."""

__version__ = "0.1.0"
