"""What several test files share: paths, small data, quick study options, the app and browser drivers, fake agents.

Test modules import from here, never from each other; fixtures live in `tests/conftest.py`.
"""
