"""The hub: receives results from many devices, serves specialists' reviews and model releases.

Only this package imports the web framework and SQLAlchemy (an import-linter contract). State
lives in SQLite for one machine or PostgreSQL by URL; files on disk.
"""
