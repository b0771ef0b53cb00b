-- Corrections to comments in 0001, which cannot be edited: sqlx refuses to
-- run against a database whose applied migrations changed. The comments live
-- on in the catalogue, where `\d+` shows them.
--
-- 0001 says tokens are keyed HMAC digests; they are unkeyed SHA-256 digests.
-- A token carries 256 random bits, so an unkeyed digest is enough, and the
-- CLI can issue tokens without knowing VERIMAIL_SECRET.
COMMENT ON COLUMN tokens.digest IS
    'SHA-256 of the token; the token itself is never stored';
-- 0001 cites a specification file that is not part of this repository; the
-- rule is in README ("HTTP API"): a failed hand-off (CBC.99004003) does not
-- count toward the rate limit.
COMMENT ON COLUMN dispatches.counts_toward_limit IS
    'false once the hand-off to the broker failed (CBC.99004003): such rows never count toward the rate limit';
