"""smtpgate: an SMTP proxy that enforces encryption on both legs of a mail hop."""

__version__ = "0.1.0"
