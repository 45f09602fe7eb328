"""mailmag: a self-hosted mail magazine (メールマガジン) for a council secretariat."""

__version__ = "0.1.0"
