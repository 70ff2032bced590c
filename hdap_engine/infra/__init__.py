"""Infrastructure shared by every room: the workspace folder, its SQLite file, locks, progress, strict JSON, wording.

Nothing here knows about fleets, models or the method; every other room may
import it, and it imports none of them.
"""
