"""Database models and helpers shared by both services."""
