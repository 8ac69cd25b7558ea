"""Several services on one task API, coordinated through Redis (README "Scaling out")."""
