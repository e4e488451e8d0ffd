-- Identity hardening: one canonical spelling per e-mail address.
--
-- The application now stores emails NFKC-normalised and lower-cased, with the domain in IDNA
-- ASCII form (crates/auth/src/email.rs). Existing rows are brought to NFKC + lower case here.
-- The IDNA step cannot be done in SQL: a legacy row with a non-ASCII domain no longer matches
-- a login (which looks up the punycode form) until an operator rewrites it to that form. A row
-- whose normalised form would collide with another row is left as it is, and the collision is
-- reported as a WARNING, so an operator can resolve it: the migration never merges accounts.

UPDATE auth.users AS u
   SET email = lower(normalize(u.email, NFKC)),
       updated_at = now()
 WHERE u.email <> lower(normalize(u.email, NFKC))
   AND NOT EXISTS (
       SELECT 1 FROM auth.users AS o
        WHERE o.id <> u.id
          AND lower(normalize(o.email, NFKC)) = lower(normalize(u.email, NFKC)));

-- The same rule as an index, when the existing rows allow it: no two accounts may share a
-- normalised address, whatever path wrote them.
DO $$
BEGIN
    IF EXISTS (
        SELECT lower(normalize(email, NFKC))
          FROM auth.users
         GROUP BY 1
        HAVING count(*) > 1
    ) THEN
        RAISE WARNING 'auth.users has accounts whose emails differ only by Unicode compatibility forms; '
            'the unique index users_email_nfkc_key was not created. Resolve them (SELECT email FROM '
            'auth.users ORDER BY lower(normalize(email, NFKC))) and create it by hand.';
    ELSE
        CREATE UNIQUE INDEX users_email_nfkc_key ON auth.users (lower(normalize(email, NFKC)));
    END IF;
END
$$;
