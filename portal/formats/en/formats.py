"""Dates and times in the admin and the partner portal: seconds and the zone's name
(issue 14): "1 Dec 2026, 20:00:05 WIB". 24-hour clock in both languages."""

DATETIME_FORMAT = "j M Y, H:i:s T"
SHORT_DATETIME_FORMAT = "j M Y, H:i:s T"
TIME_FORMAT = "H:i:s"
DATE_FORMAT = "j M Y"
SHORT_DATE_FORMAT = "j M Y"
