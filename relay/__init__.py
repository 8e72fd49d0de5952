"""smtpplus relay: SMTP server, policy, store, queue and delivery.

This package never imports Textual or anything from ``console``.
"""

__version__ = "0.1.0"
