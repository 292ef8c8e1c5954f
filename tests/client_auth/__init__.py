"""Client authentication and authorisation: htpasswd users with Basic credentials or the
mirror's own tokens (Docker's token flow), rules on who may pull what, open health
endpoints, back-off for failing logins, and no secret in any log line."""
