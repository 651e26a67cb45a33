"""As portal.formats.en, in Indonesian month names ("1 Des 2026, 20:00:05 WIB")."""

DATETIME_FORMAT = "j M Y, H:i:s T"
SHORT_DATETIME_FORMAT = "j M Y, H:i:s T"
TIME_FORMAT = "H:i:s"
DATE_FORMAT = "j M Y"
SHORT_DATE_FORMAT = "j M Y"
