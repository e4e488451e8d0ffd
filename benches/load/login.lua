-- wrk script: POST /api/v1/auth/login for one existing user, over and over.
-- Usage: wrk -t2 -c8 -d10s -s benches/load/login.lua http://127.0.0.1:18080/api/v1/auth/login
-- Set LOAD_EMAIL / LOAD_PASSWORD to override the account run.sh registers.
local email = os.getenv("LOAD_EMAIL") or "load@example.com"
local password = os.getenv("LOAD_PASSWORD") or "load-test-password"

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = string.format('{"email":"%s","password":"%s"}', email, password)

-- wrk itself prints "Non-2xx or 3xx responses: N" when any login fails (e.g. a 429 from the
-- per-address auth limit: run.sh raises GATHERING__RATE_LIMIT__AUTH_PER_MINUTE for that reason).
