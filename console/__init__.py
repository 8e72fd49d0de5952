"""smtpplus operator console (Textual) and the ``smtpplus`` CLI."""
