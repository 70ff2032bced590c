"""Helpers of the HDAP Studio app, by job: `state` (session keys), `cached` (engine calls
behind caches), `auth` (sign-in), `fleet` (the fleet and clustering on screen), `options`
(the study chosen on the widgets), `jobs` (starting and following jobs), `results` (a
finished study on screen)."""
