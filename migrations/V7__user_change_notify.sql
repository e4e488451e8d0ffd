-- Announce every change to a user's profile (or its deletion) on LISTEN/NOTIFY, so each
-- instance can drop the row from its user cache (GET /auth/me). A trigger catches changes made
-- by any path, including an operator's SQL (e.g. `UPDATE auth.users SET disabled = true`).
CREATE FUNCTION auth.notify_user_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gathering_users_changed', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_changed
    AFTER UPDATE OF email, name, role, disabled OR DELETE ON auth.users
    FOR EACH ROW EXECUTE FUNCTION auth.notify_user_changed();
