"""The ingest benchmark's baseline: a bare Django view that inserts one row into PostgreSQL.

Same DATABASE_URL, same connection settings as the portal (persistent connections, health
checks), no apps, no middleware, no ORM model: what any Django endpoint that stores a request
costs at the least. Served by gunicorn with the portal's worker and thread counts.
"""
