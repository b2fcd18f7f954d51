"""The hub: receives results from many devices, serves specialists' reviews and model releases.

Only this package imports the web framework and SQLAlchemy (an import-linter contract). State
lives in SQLite for one machine or PostgreSQL by URL; files on disk.

Modules, from the top down (a module imports only from its own line or below; none imports back):
- `app`: assembles the FastAPI app; `review_app`: the review pages' sub-application (/review)
  and `routes_fhir`: the read-only FHIR R4 sub-application (/fhir), over `fhir_server` and
  `fhir` (resources), `fhir_search` (queries), `fhir_tokens` (scope, tokens), `fhir_codes`
- `routes_device` (the devices' API, /v1), `routes_account`, `routes_review`, `routes_admin`
- `review_http` (sessions, CSRF, headers, templates), `presenters` (what a page shows)
- the logic, without HTTP: `devices` (enrolment, authentication), `intake` (batches, uploads),
  `reviews`, `releases`, `accounts` (readers' passwords and sessions), `worklist` (what a reader
  may see), `render` (pictures; it decodes uploads through `render_process`, a bounded child)
- `worklist_index` (the worklist projection, written with each record)
- `audit`, `db` (tables; `quota_triggers`: each device's upload totals, kept by triggers), `limits`,
  `errors` (`HubError`), `identities` (`Device`, `User`),
  `disconnects` (a client gone mid-request: one log line)
"""
