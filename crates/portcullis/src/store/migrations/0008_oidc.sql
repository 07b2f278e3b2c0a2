-- Single sign-on: the identity at the OpenID Connect provider a person is linked to
-- ("{issuer} {subject}"), set at their first sign-in through it. One identity, one person.
ALTER TABLE users ADD COLUMN oidc_identity TEXT;
CREATE UNIQUE INDEX users_oidc_identity ON users (oidc_identity);
